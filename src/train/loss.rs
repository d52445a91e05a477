//! Losses appended to a model output, and the batch accuracy.
//!
//! Targets are **int64 class labels** `[B]` (graph input `labels`), turned into smoothed
//! one-hot rows inside the graph by one `OneHot` whose off/on values are `ε/K` and
//! `1 − ε + ε/K` (label smoothing ε), so the host feeds the labels it has. Losses are
//! batch means and scalars (`[]`):
//!
//! * cross-entropy: `CE = −(1/B) Σ_b Σ_k t_bk · LogSoftmax(z)_bk`;
//! * distillation: `KD = (T²/B) Σ_b Σ_k p_bk (log p_bk − LogSoftmax(z/T)_bk)` with
//!   `p = Softmax(teacher/T)` (graph input `teacher`, logits shaped like `z`), and
//!   `loss = α·KD + (1 − α)·CE` (α weighs the teacher);
//! * MSE: `mean((z − targets)²)` over every element (graph input `targets`, shaped like `z`).
//!
//! Accuracy is `mean(ArgMax(z, 1) == labels)` as a float scalar; it is not on the loss path, so
//! autodiff never differentiates it. Classification losses need logits of rank 2 (`[B, K]`);
//! nothing here reshapes other outputs, and MSE has no accuracy.

use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::graph::attr_int;
use crate::ir::{DType, Graph, ValueId};

use super::emit::{add_input, declare, dtype_of, static_shape};
use crate::ops::build::{Build, Builder};

/// Which loss to build.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy against int64 labels, with label smoothing ε (0: none).
    CrossEntropy {
        /// ε in `[0, 1)`.
        label_smoothing: f32,
    },
    /// Knowledge distillation from teacher logits mixed with cross-entropy.
    Distill {
        /// ε of the cross-entropy part.
        label_smoothing: f32,
        /// Temperature T (> 0).
        temperature: f32,
        /// Weight α of the distillation term, in `[0, 1]`.
        alpha: f32,
    },
    /// Mean squared error against float targets shaped like the output.
    Mse,
}

impl Default for Loss {
    fn default() -> Self {
        Loss::CrossEntropy {
            label_smoothing: 0.0,
        }
    }
}

/// What [`add_loss`] added.
#[derive(Clone, Debug)]
pub struct LossGraph {
    /// The scalar loss.
    pub loss: ValueId,
    /// The scalar batch accuracy (classification losses).
    pub accuracy: Option<ValueId>,
    /// Graph input of int64 labels `[B]` (classification losses).
    pub labels: Option<ValueId>,
    /// Graph input of teacher logits (distillation).
    pub teacher: Option<ValueId>,
    /// Graph input of float targets (MSE).
    pub targets: Option<ValueId>,
}

/// Appends `loss` on `output` (facts in `shapes`; its shape must be static) and adds the graph
/// inputs it reads.
pub fn add_loss(
    g: &mut Graph,
    shapes: &Shapes,
    opset: i64,
    output: ValueId,
    loss: &Loss,
) -> Result<LossGraph> {
    let shape = static_shape(g, shapes, output)?;
    let dt = dtype_of(shapes, output);
    if !matches!(dt, DType::F32 | DType::F64) {
        return Err(Error::Usage(format!(
            "the loss needs float32/float64 outputs, '{}' is {dt}",
            g.value(output).name
        )));
    }
    if let Loss::Mse = loss {
        let targets = add_input(g, "targets", dt, &shape);
        let numel: usize = shape.iter().product();
        let axes: Vec<i64> = (0..shape.len() as i64).collect();
        let mut e = Builder::new(g, "loss/mse", opset);
        let d = e.op("Sub", &[output, targets], vec![]);
        let d2 = e.op("Mul", &[d, d], vec![]);
        let s = e.reduce("ReduceSum", d2, &axes, false);
        let k = e.scalar(dt, 1.0 / numel.max(1) as f64)?;
        let l = e.op("Mul", &[s, k], vec![]);
        return Ok(LossGraph {
            loss: l,
            accuracy: None,
            labels: None,
            teacher: None,
            targets: Some(targets),
        });
    }
    let [b, k] = shape[..] else {
        return Err(Error::Usage(format!(
            "classification losses need logits [B, K]; '{}' has shape {shape:?}",
            g.value(output).name
        )));
    };
    let (eps, distill) = match *loss {
        Loss::CrossEntropy { label_smoothing } => (label_smoothing, None),
        Loss::Distill {
            label_smoothing,
            temperature,
            alpha,
        } => (label_smoothing, Some((temperature, alpha))),
        Loss::Mse => (0.0, None),
    };
    if !(0.0..1.0).contains(&eps) {
        return Err(Error::Usage(format!(
            "label smoothing must be in [0, 1), got {eps}"
        )));
    }
    let labels = add_input(g, "labels", DType::I64, &[b]);
    let teacher = match distill {
        Some((t, a)) => {
            let ok = t > 0.0 && (0.0..=1.0).contains(&a);
            if !ok {
                return Err(Error::Usage(format!(
                    "distillation needs temperature > 0 and alpha in [0, 1], got {t} and {a}"
                )));
            }
            Some(add_input(g, "teacher", dt, &[b, k]))
        }
        None => None,
    };
    let eps = f64::from(eps);
    let kf = k as f64;
    let bf = b as f64;

    let mut e = Builder::new(g, "loss/ce", opset);
    let depth = e.ints(&[k as i64]);
    let vals = e.fconst(dt, vec![2], &[eps / kf, 1.0 - eps + eps / kf])?;
    let onehot = e.op("OneHot", &[labels, depth, vals], vec![attr_int("axis", -1)]);
    declare(e.g, onehot, dt, &[b, k]);
    let ls = e.op("LogSoftmax", &[output], vec![attr_int("axis", 1)]);
    let prod = e.op("Mul", &[onehot, ls], vec![]);
    let s = e.reduce("ReduceSum", prod, &[0, 1], false);
    let negb = e.scalar(dt, -1.0 / bf)?;
    let ce = e.op("Mul", &[s, negb], vec![]);

    let total = match (distill, teacher) {
        (Some((t, a)), Some(teacher)) => {
            let kd = distillation(g, opset, dt, output, teacher, b, t, a)?;
            let mut e = Builder::new(g, "loss/kd", opset);
            let cscale = e.scalar(dt, 1.0 - f64::from(a))?;
            let cw = e.op("Mul", &[ce, cscale], vec![]);
            e.op("Add", &[kd, cw], vec![])
        }
        _ => ce,
    };

    let mut e = Builder::new(g, "accuracy", opset);
    let am = e.op(
        "ArgMax",
        &[output],
        vec![attr_int("axis", 1), attr_int("keepdims", 0)],
    );
    declare(e.g, am, DType::I64, &[b]);
    let eq = e.op("Equal", &[am, labels], vec![]);
    let f = e.op("Cast", &[eq], vec![attr_int("to", dt.to_onnx() as i64)]);
    let acc = e.reduce("ReduceMean", f, &[0], false);
    Ok(LossGraph {
        loss: total,
        accuracy: Some(acc),
        labels: Some(labels),
        teacher,
        targets: None,
    })
}

/// `alpha·T²·KL(softmax(teacher/T) ‖ softmax(output/T))` averaged over the batch of `b`.
#[allow(clippy::too_many_arguments)]
fn distillation(
    g: &mut Graph,
    opset: i64,
    dt: DType,
    output: ValueId,
    teacher: ValueId,
    b: usize,
    t: f32,
    a: f32,
) -> Result<ValueId> {
    let (t, a) = (f64::from(t), f64::from(a));
    let mut e = Builder::new(g, "loss/kd", opset);
    let inv_t = e.scalar(dt, 1.0 / t)?;
    let zs = e.op("Mul", &[output, inv_t], vec![]);
    let ls_s = e.op("LogSoftmax", &[zs], vec![attr_int("axis", 1)]);
    let zt = e.op("Mul", &[teacher, inv_t], vec![]);
    let ls_t = e.op("LogSoftmax", &[zt], vec![attr_int("axis", 1)]);
    let pt = e.op("Exp", &[ls_t], vec![]);
    let diff = e.op("Sub", &[ls_t, ls_s], vec![]);
    let kl = e.op("Mul", &[pt, diff], vec![]);
    let ks = e.reduce("ReduceSum", kl, &[0, 1], false);
    let kscale = e.scalar(dt, a * t * t / b as f64)?;
    Ok(e.op("Mul", &[ks, kscale], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::infer_shapes;
    use crate::ir::{Model, Tensor};
    use crate::onnx::proto::ModelProto;
    use crate::runtime::{self, BackendKind};

    fn lcg(s: &mut u64) -> f64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    fn log_softmax(row: &[f64]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        row.iter().map(|v| v - lse).collect()
    }

    /// Runs `loss` on random logits in ORT; returns (loss, accuracy) and the fed values.
    fn run(loss: &Loss, b: usize, k: usize, opset: i64) -> (Vec<f64>, Vec<Vec<f64>>, Vec<i64>) {
        let mut g = Graph::new();
        let z = add_input(&mut g, "logits", DType::F32, &[b, k]);
        let mut m = crate::passes::testutil::model(g, opset);
        let shapes = infer_shapes(&m).unwrap();
        let lg = add_loss(&mut m.graph, &shapes, opset, z, loss).unwrap();
        declare(&mut m.graph, lg.loss, DType::F32, &[]);
        m.graph.outputs = vec![lg.loss];
        if let Some(a) = lg.accuracy {
            declare(&mut m.graph, a, DType::F32, &[]);
            m.graph.outputs.push(a);
        }
        let mut s = 11u64 + k as u64;
        let zv: Vec<f64> = (0..b * k).map(|_| 3.0 * lcg(&mut s)).collect();
        let tv: Vec<f64> = (0..b * k).map(|_| 3.0 * lcg(&mut s)).collect();
        let labels: Vec<i64> = (0..b).map(|i| ((i * 7 + 3) % k) as i64).collect();
        let f = |v: &[f64]| Tensor::from_f64_as(DType::F32, vec![b, k], v).unwrap();
        let mut feed = vec![("logits".to_string(), f(&zv))];
        if lg.labels.is_some() {
            feed.push(("labels".into(), Tensor::from_i64(vec![b], &labels)));
        }
        if lg.teacher.is_some() {
            feed.push(("teacher".into(), f(&tv)));
        }
        if lg.targets.is_some() {
            feed.push(("targets".into(), f(&tv)));
        }
        let dir = crate::temp_dir::TempDir::new("loss").unwrap();
        let path = dir.path().join("loss.onnx");
        m.save(&path, &Default::default()).unwrap();
        let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
        let out = sess.run(&feed).unwrap();
        let got = out
            .iter()
            .map(|(_, t)| t.to_f64_vec().unwrap()[0])
            .collect();
        (got, vec![zv, tv], labels)
    }

    fn ce_ref(z: &[f64], labels: &[i64], k: usize, eps: f64) -> f64 {
        let b = labels.len();
        let mut tot = 0.0;
        for i in 0..b {
            let ls = log_softmax(&z[i * k..(i + 1) * k]);
            for (j, l) in ls.iter().enumerate() {
                let t = eps / k as f64
                    + if j as i64 == labels[i] {
                        1.0 - eps
                    } else {
                        0.0
                    };
                tot -= t * l;
            }
        }
        tot / b as f64
    }

    fn acc_ref(z: &[f64], labels: &[i64], k: usize) -> f64 {
        let hits = labels
            .iter()
            .enumerate()
            .filter(|(i, &l)| {
                let row = &z[i * k..(i + 1) * k];
                let am = (0..k).fold(0, |a, j| if row[j] > row[a] { j } else { a });
                am as i64 == l
            })
            .count();
        hits as f64 / labels.len() as f64
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * b.abs().max(1.0)
    }

    #[test]
    fn losses_match_reference() {
        if crate::runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        let (b, k) = (6, 5);
        for opset in [17, 18] {
            for eps in [0.0, 0.1] {
                let (got, v, labels) = run(
                    &Loss::CrossEntropy {
                        label_smoothing: eps as f32,
                    },
                    b,
                    k,
                    opset,
                );
                let want = ce_ref(&v[0], &labels, k, eps);
                assert!(close(got[0], want), "CE eps {eps}: {} vs {want}", got[0]);
                let acc = acc_ref(&v[0], &labels, k);
                assert!(close(got[1], acc), "accuracy {} vs {acc}", got[1]);
            }
            let (t, a, eps) = (4.0f64, 0.7f64, 0.1f64);
            let loss = Loss::Distill {
                label_smoothing: eps as f32,
                temperature: t as f32,
                alpha: a as f32,
            };
            let (got, v, labels) = run(&loss, b, k, opset);
            let mut kd = 0.0;
            for i in 0..b {
                let zs: Vec<f64> = v[0][i * k..(i + 1) * k].iter().map(|x| x / t).collect();
                let zt: Vec<f64> = v[1][i * k..(i + 1) * k].iter().map(|x| x / t).collect();
                let (ls, lt) = (log_softmax(&zs), log_softmax(&zt));
                kd += (0..k).map(|j| lt[j].exp() * (lt[j] - ls[j])).sum::<f64>();
            }
            let want = a * kd * t * t / b as f64 + (1.0 - a) * ce_ref(&v[0], &labels, k, eps);
            assert!(close(got[0], want), "KD: {} vs {want}", got[0]);
            let (got, v, _) = run(&Loss::Mse, b, k, opset);
            let want = v[0]
                .iter()
                .zip(&v[1])
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                / (b * k) as f64;
            assert!(close(got[0], want), "MSE: {} vs {want}", got[0]);
            assert_eq!(got.len(), 1, "MSE has no accuracy output");
        }
    }

    #[test]
    fn bad_options_and_shapes_are_errors() {
        let mut g = Graph::new();
        let z = add_input(&mut g, "z", DType::F32, &[2, 3, 4]);
        let m = Model {
            graph: g,
            rest: ModelProto::default(),
        };
        let shapes = infer_shapes(&m).unwrap();
        let mut g = m.graph.clone();
        let e = add_loss(&mut g, &shapes, 17, z, &Loss::default()).unwrap_err();
        assert!(e.to_string().contains("[B, K]"), "{e}");
        let mut g2 = Graph::new();
        let z2 = add_input(&mut g2, "z", DType::F32, &[2, 3]);
        let m2 = Model {
            graph: g2,
            rest: ModelProto::default(),
        };
        let shapes = infer_shapes(&m2).unwrap();
        let mut g2 = m2.graph.clone();
        let bad = Loss::Distill {
            label_smoothing: 0.0,
            temperature: 0.0,
            alpha: 0.5,
        };
        let e = add_loss(&mut g2, &shapes, 17, z2, &bad).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
