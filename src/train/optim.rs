//! Optimizer updates as ONNX nodes, one per parameter, with PyTorch's semantics:
//!
//! * SGD: `g' = g + wd·p`; with momentum μ > 0: `v' = μ·v + g'` and the step direction is
//!   `d = g' + μ·v'` (Nesterov) or `d = v'`; without: `d = g'`; then `p' = p − lr·d`.
//!   State: `[v]` with momentum, none without.
//! * AdamW: `p₁ = p·(1 − lr·wd)` (decoupled decay), `m' = β₁m + (1−β₁)g`,
//!   `v' = β₂v + (1−β₂)g²`, `p' = p₁ − (lr/(1−β₁ᵗ))·m' / (√(v'/(1−β₂ᵗ)) + eps)`.
//!   State: `[m, v]`.
//!
//! `lr` and `step` (`t`, counted from 1 at the first update) are float32 scalar graph inputs,
//! so schedules live on the host. State starts at zeros. Parameters must be float32. Nothing
//! here clips gradients or skips non-finite updates.

use crate::error::{Error, Result};
use crate::ir::{DType, Graph, ValueId};

use crate::ops::build::{Build, Builder};

/// Which optimizer updates the parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// Stochastic gradient descent.
    Sgd {
        /// Momentum μ (0: plain SGD, no state).
        momentum: f32,
        /// Nesterov momentum (needs μ > 0).
        nesterov: bool,
        /// L2 weight decay added to the gradient.
        weight_decay: f32,
    },
    /// Adam with decoupled weight decay.
    AdamW {
        /// β₁.
        beta1: f32,
        /// β₂.
        beta2: f32,
        /// ε added to the denominator.
        eps: f32,
        /// Decoupled weight decay.
        weight_decay: f32,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
        }
    }
}

impl Optimizer {
    /// AdamW with the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8 and decoupled `weight_decay`.
    pub fn adamw(weight_decay: f32) -> Optimizer {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Names of the per-parameter state tensors (shaped like the parameter, zeros at first).
    pub fn state_slots(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum > 0.0 => &["momentum"],
            Optimizer::Sgd { .. } => &[],
            Optimizer::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    fn check(&self) -> Result<()> {
        match *self {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let ok = momentum >= 0.0 && weight_decay >= 0.0 && (!nesterov || momentum > 0.0);
                if !ok {
                    return Err(Error::Usage(format!(
                        "SGD needs momentum ≥ 0 (> 0 with Nesterov) and weight decay ≥ 0, got \
                         {momentum}, {weight_decay}"
                    )));
                }
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let unit = |b: f32| (0.0..1.0).contains(&b);
                let ok = unit(beta1) && unit(beta2) && eps > 0.0 && weight_decay >= 0.0;
                if !ok {
                    return Err(Error::Usage(format!(
                        "AdamW needs betas in [0, 1), eps > 0 and weight decay ≥ 0, got \
                         {beta1}, {beta2}, {eps}, {weight_decay}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Per-step scalars shared by every parameter's update (from [`prepare`]).
#[derive(Clone, Debug)]
pub struct Shared {
    opt: Optimizer,
    opset: i64,
    lr: ValueId,
    /// AdamW: `1 − lr·wd`.
    shrink: Option<ValueId>,
    /// AdamW: `lr / (1 − β₁ᵗ)`.
    lr_bc1: Option<ValueId>,
    /// AdamW: `1 / (1 − β₂ᵗ)`.
    inv_bc2: Option<ValueId>,
}

/// Emits the per-step scalars of `opt` from the `lr` and `step` scalar inputs.
pub fn prepare(
    g: &mut Graph,
    opset: i64,
    opt: &Optimizer,
    lr: ValueId,
    step: ValueId,
) -> Result<Shared> {
    opt.check()?;
    let mut sh = Shared {
        opt: opt.clone(),
        opset,
        lr,
        shrink: None,
        lr_bc1: None,
        inv_bc2: None,
    };
    if let Optimizer::AdamW {
        beta1,
        beta2,
        weight_decay,
        ..
    } = *opt
    {
        let mut e = Builder::new(g, "optim/adamw", opset);
        let f = DType::F32;
        let one = e.scalar(f, 1.0)?;
        let b1 = e.scalar(f, f64::from(beta1))?;
        let b2 = e.scalar(f, f64::from(beta2))?;
        let p1 = e.op("Pow", &[b1, step], vec![]);
        let bc1 = e.op("Sub", &[one, p1], vec![]);
        let p2 = e.op("Pow", &[b2, step], vec![]);
        let bc2 = e.op("Sub", &[one, p2], vec![]);
        sh.lr_bc1 = Some(e.op("Div", &[lr, bc1], vec![]));
        sh.inv_bc2 = Some(e.op("Div", &[one, bc2], vec![]));
        let wd = e.scalar(f, f64::from(weight_decay))?;
        let lw = e.op("Mul", &[lr, wd], vec![]);
        sh.shrink = Some(e.op("Sub", &[one, lw], vec![]));
    }
    Ok(sh)
}

/// Emits the update of one parameter: returns the new parameter and new state (one per
/// [`Optimizer::state_slots`], in that order). `decay`: whether weight decay applies to it.
pub fn update(
    g: &mut Graph,
    sh: &Shared,
    name: &str,
    param: ValueId,
    grad: ValueId,
    state: &[ValueId],
    decay: bool,
) -> Result<(ValueId, Vec<ValueId>)> {
    if state.len() != sh.opt.state_slots().len() {
        return Err(Error::Usage(format!(
            "'{name}': the optimizer needs {} state tensors, got {}",
            sh.opt.state_slots().len(),
            state.len()
        )));
    }
    let f = DType::F32;
    let mut e = Builder::new(g, format!("optim/{name}"), sh.opset);
    match sh.opt {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let gd = if decay && weight_decay > 0.0 {
                let wd = e.scalar(f, f64::from(weight_decay))?;
                let pw = e.op("Mul", &[param, wd], vec![]);
                e.op("Add", &[grad, pw], vec![])
            } else {
                grad
            };
            let (dir, new_state) = if momentum > 0.0 {
                let mu = e.scalar(f, f64::from(momentum))?;
                let mv = e.op("Mul", &[state[0], mu], vec![]);
                let v = e.op("Add", &[mv, gd], vec![]);
                let dir = if nesterov {
                    let mv2 = e.op("Mul", &[v, mu], vec![]);
                    e.op("Add", &[gd, mv2], vec![])
                } else {
                    v
                };
                (dir, vec![v])
            } else {
                (gd, vec![])
            };
            let upd = e.op("Mul", &[dir, sh.lr], vec![]);
            let p = e.op("Sub", &[param, upd], vec![]);
            Ok((p, new_state))
        }
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let (Some(shrink), Some(lr_bc1), Some(inv_bc2)) = (sh.shrink, sh.lr_bc1, sh.inv_bc2)
            else {
                return Err(Error::Usage("AdamW scalars were not prepared".into()));
            };
            let p1 = if decay && weight_decay > 0.0 {
                e.op("Mul", &[param, shrink], vec![])
            } else {
                param
            };
            let b1 = e.scalar(f, f64::from(beta1))?;
            let c1 = e.scalar(f, 1.0 - f64::from(beta1))?;
            let b2 = e.scalar(f, f64::from(beta2))?;
            let c2 = e.scalar(f, 1.0 - f64::from(beta2))?;
            let a = e.op("Mul", &[state[0], b1], vec![]);
            let b = e.op("Mul", &[grad, c1], vec![]);
            let m = e.op("Add", &[a, b], vec![]);
            let g2 = e.op("Mul", &[grad, grad], vec![]);
            let a = e.op("Mul", &[state[1], b2], vec![]);
            let b = e.op("Mul", &[g2, c2], vec![]);
            let v = e.op("Add", &[a, b], vec![]);
            let vh = e.op("Mul", &[v, inv_bc2], vec![]);
            let sd = e.op("Sqrt", &[vh], vec![]);
            let ev = e.scalar(f, f64::from(eps))?;
            let den = e.op("Add", &[sd, ev], vec![]);
            let num = e.op("Mul", &[m, lr_bc1], vec![]);
            let upd = e.op("Div", &[num, den], vec![]);
            let p = e.op("Sub", &[p1, upd], vec![]);
            Ok((p, vec![m, v]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Tensor;
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::{add_input, declare};

    /// Reference update in f64: returns the new parameter and state.
    fn reference(
        opt: &Optimizer,
        p: &[f64],
        g: &[f64],
        st: &[Vec<f64>],
        lr: f64,
        t: f64,
        decay: bool,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let n = p.len();
        match *opt {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let (mu, wd) = (
                    f64::from(momentum),
                    if decay { f64::from(weight_decay) } else { 0.0 },
                );
                let gd: Vec<f64> = (0..n).map(|i| g[i] + wd * p[i]).collect();
                if mu > 0.0 {
                    let v: Vec<f64> = (0..n).map(|i| mu * st[0][i] + gd[i]).collect();
                    let d: Vec<f64> = (0..n)
                        .map(|i| if nesterov { gd[i] + mu * v[i] } else { v[i] })
                        .collect();
                    ((0..n).map(|i| p[i] - lr * d[i]).collect(), vec![v])
                } else {
                    ((0..n).map(|i| p[i] - lr * gd[i]).collect(), vec![])
                }
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (b1, b2, e) = (f64::from(beta1), f64::from(beta2), f64::from(eps));
                let wd = if decay { f64::from(weight_decay) } else { 0.0 };
                let m: Vec<f64> = (0..n).map(|i| b1 * st[0][i] + (1.0 - b1) * g[i]).collect();
                let v: Vec<f64> = (0..n)
                    .map(|i| b2 * st[1][i] + (1.0 - b2) * g[i] * g[i])
                    .collect();
                let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
                let np = (0..n)
                    .map(|i| p[i] * (1.0 - lr * wd) - lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + e))
                    .collect();
                (np, vec![m, v])
            }
        }
    }

    fn lcg(s: &mut u64) -> f64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn updates_match_reference_over_several_steps() {
        if crate::runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        let opts = [
            Optimizer::Sgd {
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 1e-2,
            },
            Optimizer::Sgd {
                momentum: 0.8,
                nesterov: true,
                weight_decay: 5e-2,
            },
            Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-2,
            },
            Optimizer::AdamW {
                beta1: 0.5,
                beta2: 0.7,
                eps: 1e-3,
                weight_decay: 0.1,
            },
        ];
        let shape = vec![2usize, 3];
        let n = 6;
        let f = DType::F32;
        for opt in &opts {
            for decay in [true, false] {
                let mut g = Graph::new();
                let p = add_input(&mut g, "p", f, &shape);
                let gr = add_input(&mut g, "g", f, &shape);
                let st: Vec<ValueId> = opt
                    .state_slots()
                    .iter()
                    .map(|s| add_input(&mut g, s, f, &shape))
                    .collect();
                let lr = add_input(&mut g, "lr", f, &[]);
                let step = add_input(&mut g, "step", f, &[]);
                let sh = prepare(&mut g, 17, opt, lr, step).unwrap();
                let (np, ns) = update(&mut g, &sh, "p", p, gr, &st, decay).unwrap();
                for &o in std::iter::once(&np).chain(&ns) {
                    declare(&mut g, o, f, &shape);
                    g.outputs.push(o);
                }
                let m = crate::passes::testutil::model(g, 17);
                let dir = crate::temp_dir::TempDir::new("optim").unwrap();
                let path = dir.path().join("opt.onnx");
                m.save(&path, &Default::default()).unwrap();
                let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
                let mut s = 3u64;
                let mut pv: Vec<f64> = (0..n).map(|_| lcg(&mut s)).collect();
                let mut sv: Vec<Vec<f64>> = vec![vec![0.0; n]; st.len()];
                let (mut pr, mut sr) = (pv.clone(), sv.clone());
                let t = |v: &[f64]| Tensor::from_f64_as(f, shape.clone(), v).unwrap();
                let mut worst = 0f64;
                for k in 1..=5 {
                    let gv: Vec<f64> = (0..n).map(|_| lcg(&mut s)).collect();
                    let lrv = 0.1 / k as f64;
                    let mut feed = vec![("p".to_string(), t(&pv)), ("g".to_string(), t(&gv))];
                    for (slot, v) in opt.state_slots().iter().zip(&sv) {
                        feed.push((slot.to_string(), t(v)));
                    }
                    feed.push(("lr".into(), Tensor::from_f32(vec![], &[lrv as f32])));
                    feed.push(("step".into(), Tensor::from_f32(vec![], &[k as f32])));
                    let out = sess.run(&feed).unwrap();
                    let vals: Vec<Vec<f64>> =
                        out.iter().map(|(_, t)| t.to_f64_vec().unwrap()).collect();
                    let lr32 = f64::from(lrv as f32);
                    (pr, sr) = reference(opt, &pr, &gv, &sr, lr32, k as f64, decay);
                    for (a, b) in vals[0].iter().zip(&pr) {
                        worst = worst.max((a - b).abs());
                    }
                    for (sa, sb) in vals[1..].iter().zip(&sr) {
                        for (a, b) in sa.iter().zip(sb) {
                            worst = worst.max((a - b).abs());
                        }
                    }
                    pv = vals[0].clone();
                    sv = vals[1..].to_vec();
                }
                assert!(worst < 1e-5, "{opt:?} decay {decay}: max abs error {worst}");
            }
        }
    }

    #[test]
    fn bad_hyperparameters_are_errors() {
        let mut g = Graph::new();
        let lr = add_input(&mut g, "lr", DType::F32, &[]);
        let step = add_input(&mut g, "step", DType::F32, &[]);
        let bad = Optimizer::Sgd {
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        };
        assert!(prepare(&mut g, 17, &bad, lr, step).is_err());
        let bad = Optimizer::AdamW {
            beta1: 1.0,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        assert!(prepare(&mut g, 17, &bad, lr, step).is_err());
    }
}
