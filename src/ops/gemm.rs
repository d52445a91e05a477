//! `Gemm`: `Y = alpha·op(A)·op(B) + beta·C` with `op` = transpose when `transA`/`transB` is set.
//! A is `[M, K]` (`[K, M]` transposed), B is `[K, N]` (`[N, K]`), Y is `[M, N]` typed like A.
//!
//! Checks that both K agree when known and that C broadcasts to `[M, N]`. MACs = M·N·K.
//! Not handled: the opset-1..6 `broadcast` attribute (C is checked with numpy broadcasting
//! regardless) and constant folding. A following per-channel affine map (an inference
//! BatchNormalization) folds into row `j` of B with `transB`, column `j` without, and into C
//! (times `beta`, which becomes 1), in opset 7+.

use crate::error::Result;
use crate::ir::graph::{attr_float, attr_int};
use crate::ir::{Dim, Fact, Node, ValueId};

use super::channel::{CompensateCx, Compensation, ConstCx, Link, LinkCx, Map, Slot};
use super::linear::{Form, Linear, LinearCx};
use super::simplify::{AffineFold, BiasRule, FoldCx};
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, FreshInit, Op};

/// `Gemm`.
pub struct Gemm {
    name: &'static str,
}

/// `(rows, cols)` of `op(X)` for a rank-2 shape, honouring the transpose flag.
fn oriented(s: &[Dim], trans: bool) -> (Dim, Dim) {
    if trans {
        (s[1].clone(), s[0].clone())
    } else {
        (s[0].clone(), s[1].clone())
    }
}

impl Op for Gemm {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, opset: i64) -> Option<(usize, usize)> {
        // C became optional at opset 11.
        Some(if opset < 11 { (3, 3) } else { (2, 3) })
    }

    fn weight_input(&self, _port: usize) -> bool {
        // Either operand may be a learned matrix (or bias).
        true
    }

    fn fresh_init(&self, node: &Node, weights: &[Option<&[usize]>]) -> Vec<(usize, FreshInit)> {
        // A constant B is the weight (fan-in K), a constant C its bias.
        let mut out = Vec::new();
        if let Some(&[rows, cols]) = weights.get(1).copied().flatten() {
            let trans_b = node.attr_i("transB").unwrap_or(0) != 0;
            let fan_in = if trans_b { cols } else { rows };
            out.push((
                1,
                FreshInit::Kaiming {
                    fan_in,
                    dense: true,
                },
            ));
        }
        if weights.get(2).copied().flatten().is_some() {
            out.push((2, FreshInit::Fill(0.0)));
        }
        out
    }

    fn layer_channels(&self, node: &crate::ir::Node, w: &[usize]) -> Option<(usize, usize)> {
        // B = [K, N], or [N, K] with transB.
        match w {
            [a, b] if node.attr_i("transB").unwrap_or(0) != 0 => Some((*a, *b)),
            [a, b] => Some((*b, *a)),
            _ => None,
        }
    }

    fn linear(&self, cx: &LinearCx) -> Option<Linear> {
        // Y = alpha·A'·B' + beta·C, A' = A or Aᵀ, B' = B [K, N] or Bᵀ with transB.
        let &[a, b] = cx.weight else {
            return None;
        };
        let trans_a = cx.node.attr_i("transA").unwrap_or(0) != 0;
        let out_major = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let (k, n) = if out_major { (b, a) } else { (a, b) };
        let beta = cx.node.attr_f("beta").map_or(1.0, f64::from);
        Some(Linear {
            input_axis: usize::from(!trans_a),
            output_axis: 1,
            in_channels: k,
            out_channels: n,
            bias_port: (beta != 0.0).then_some(2),
            form: Form::Dense {
                out_major,
                channels_first: trans_a,
                alpha: cx.node.attr_f("alpha").map_or(1.0, f64::from),
                beta,
            },
        })
    }

    fn fold_output_affine(&self, cx: &FoldCx) -> Result<Option<AffineFold>> {
        // Output channel j = row j of B with transB, column j without; C (times beta) goes
        // into the new bias, so beta becomes 1. Opsets < 7 need the `broadcast` attribute.
        let trans_b = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let Some(w) = cx.float_const(1).filter(|_| cx.opset >= 7) else {
            return Ok(None);
        };
        let shape = w.shape().to_vec();
        let cols = match shape[..] {
            [rows, cols] => {
                if trans_b {
                    rows
                } else {
                    cols
                }
            }
            _ => return Ok(None),
        };
        if cols != cx.channels() {
            return Ok(None);
        }
        let beta = f64::from(cx.node.attr_f("beta").unwrap_or(1.0));
        let rule = BiasRule::Broadcast { beta };
        let fold = cx.fold(1, 2, rule, |i| {
            if trans_b {
                i / shape[1]
            } else {
                i % shape[1]
            }
        })?;
        Ok(fold.map(|f| AffineFold {
            attrs: vec![attr_float("beta", 1.0)],
            ..f
        }))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let a = util::required_input(cx, 0)?;
        let b = util::required_input(cx, 1)?;
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(None);
        };
        let dtype = a.dtype.or(b.dtype);
        for (name, f) in [("A", a), ("B", b)] {
            if let Some(s) = &f.shape {
                if s.len() != 2 {
                    return Err(cx.err(format!("{name} has rank {}, expected 2", s.len())));
                }
            }
        }
        let trans_a = cx.node.attr_i("transA").unwrap_or(0) != 0;
        let trans_b = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let (m, ka) = a
            .shape
            .as_deref()
            .map_or((Dim::Unknown, Dim::Unknown), |s| oriented(s, trans_a));
        let (kb, n) = b
            .shape
            .as_deref()
            .map_or((Dim::Unknown, Dim::Unknown), |s| oriented(s, trans_b));
        if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
            if x != y {
                return Err(cx.err(format!(
                    "inner dimensions mismatch: A gives K={x} (transA={}), B gives K={y} (transB={})",
                    u8::from(trans_a),
                    u8::from(trans_b)
                )));
            }
        }
        let out = vec![m, n];
        if let Some(cs) = cx
            .inputs
            .get(2)
            .copied()
            .flatten()
            .and_then(|f| f.shape.as_ref())
        {
            util::broadcast(&[cs, &out])
                .map_err(|e| cx.err(format!("C does not broadcast to [M, N]: {e}")))?;
        }
        Ok(Some(vec![Fact::new(dtype, out)]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // Y[M,N] = A'[M,K]·B'[K,N] + C: output features (axis 1) are created by B's N axis;
        // input features (A's K axis) are consumed by B's K axis.
        let (Some(b), true) = (cx.in_dims(1), cx.is_const(1)) else {
            return cx.block_all("Gemm weight B is not a constant");
        };
        if b.len() != 2 || (cx.node.input(2).is_some() && !cx.is_const(2)) {
            return cx.block_all("Gemm bias C is not a constant");
        }
        let trans_a = cx.node.attr_i("transA").unwrap_or(0) != 0;
        let trans_b = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let (b_k, b_n) = if trans_b { (1, 0) } else { (0, 1) };
        let out = Slot::output(0, 1);
        let mut links = vec![
            Link::Create {
                to: out,
                len: b[b_n],
            },
            Link::Member {
                input: 1,
                axis: b_n,
                slot: out,
                map: Map::Identity,
            },
        ];
        if let Some(c) = cx.in_dims(2) {
            if c.last().is_some_and(|&n| n == b[b_n] && n > 1) {
                links.push(Link::Member {
                    input: 2,
                    axis: c.len() - 1,
                    slot: out,
                    map: Map::Identity,
                });
            }
        }
        let k_axis = if trans_a { 0 } else { 1 };
        for (a, _) in cx.tracked_axes(0) {
            if a == k_axis {
                links.push(Link::Consume {
                    from: Slot::input(0, a),
                });
                links.push(Link::Member {
                    input: 1,
                    axis: b_k,
                    slot: Slot::input(0, a),
                    map: Map::Identity,
                });
            } else {
                links.push(Link::Block {
                    slot: Slot::input(0, a),
                    reason: "channels on the Gemm row axis".into(),
                });
            }
        }
        links
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        if cx.zero.get(1).copied().unwrap_or(false) {
            let beta = cx.node.attr_f("beta").unwrap_or(1.0) as f64;
            return if cx.node.input(2).is_some() {
                cx.inputs.get(2).copied().flatten().map(|c| beta * c)
            } else {
                Some(0.0)
            };
        }
        None
    }

    fn channel_compensation(&self, cx: &CompensateCx) -> Result<Option<Compensation>> {
        // Removed input feature k with constant c adds alpha·c·B'[k, :] to every row.
        let Some(b) = cx.consts.get(1).copied().flatten() else {
            return Ok(None);
        };
        if b.shape().len() != 2 {
            return Ok(None);
        }
        let trans_b = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let alpha = cx.node.attr_f("alpha").unwrap_or(1.0) as f64;
        // Only the removed features' rows of B' are read (B may be hundreds of MB: VGG's
        // first classifier layer is 25088 × 4096).
        let (axis, n) = if trans_b {
            (1, b.shape()[0])
        } else {
            (0, b.shape()[1])
        };
        let ks: Vec<usize> = cx.constants.iter().map(|(k, _)| *k).collect();
        if ks.iter().any(|&k| k >= b.shape()[axis]) {
            return Ok(None);
        }
        let Some(sub) = b.select(axis, &ks)?.to_f64_vec() else {
            return Ok(None);
        };
        let m = ks.len();
        let mut bias = vec![0f64; n];
        for (i, &(_, c)) in cx.constants.iter().enumerate() {
            for (j, slot) in bias.iter_mut().enumerate() {
                let w = if trans_b {
                    sub[j * m + i]
                } else {
                    sub[i * n + j]
                };
                *slot += alpha * c * w;
            }
        }
        // Added to C, which Gemm scales by beta.
        let beta = cx.node.attr_f("beta").unwrap_or(1.0) as f64;
        if beta == 0.0
            || cx
                .consts
                .get(2)
                .copied()
                .flatten()
                .is_some_and(|c| c.len() != n)
        {
            return Ok(None);
        }
        let bias: Vec<f64> = bias.iter().map(|v| v / beta).collect();
        Ok(Some(Compensation::AddToInput {
            port: 2,
            tensor: crate::ir::Tensor::from_f64_as(b.dtype(), vec![n], &bias)?,
        }))
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        gemm_vjp(cx, grads, needs)
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let shape = |p: usize| {
            cx.inputs
                .get(p)
                .copied()
                .flatten()
                .and_then(|f| f.shape.as_deref())
                .filter(|s| s.len() == 2)
        };
        let trans_a = cx.node.attr_i("transA").unwrap_or(0) != 0;
        let trans_b = cx.node.attr_i("transB").unwrap_or(0) != 0;
        let one = |d: &Dim| d.known().unwrap_or(1) as u64;
        let (m, k, n) = match (shape(0), shape(1)) {
            (Some(a), Some(b)) => {
                let (m, k) = oriented(a, trans_a);
                let (_, n) = oriented(b, trans_b);
                (one(&m), one(&k), one(&n))
            }
            (Some(a), None) => {
                let (_, k) = oriented(a, trans_a);
                (util::output_numel(outputs, 0), one(&k), 1)
            }
            (None, Some(b)) => {
                let (k, _) = oriented(b, trans_b);
                (util::output_numel(outputs, 0), one(&k), 1)
            }
            (None, None) => return Cost::default(),
        };
        let macs = m.saturating_mul(n).saturating_mul(k);
        Cost {
            macs,
            flops: macs.saturating_mul(2),
        }
    }

    fn layer(&self, _node: &Node) -> Option<super::training::Layer> {
        // Fully connected: B and C.
        Some(super::training::Layer {
            weight: 1,
            bias: Some(2),
            filter_axis: None,
        })
    }
}

/// `Gemm`.
pub static GEMM: Gemm = Gemm { name: "Gemm" };

/// Backward rule of `Gemm` (G = dY `[M, N]`): dA = α·G·op(B)ᵀ and dB = α·op(A)ᵀ·G, each one
/// `Gemm` whose transpose flags put the result in the orientation A or B is stored in; dC = β·G
/// summed back to C's broadcast shape.
fn gemm_vjp(
    cx: &mut VjpCx,
    grads: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>> {
    let need = |p: usize| needs.get(p).copied().unwrap_or(false);
    let mut out = vec![None; needs.len()];
    let Some(g) = grads.first().copied().flatten() else {
        return Ok(out);
    };
    let (a, b, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let (sa, sb, sy) = (cx.shape(a)?, cx.shape(b)?, cx.shape(y)?);
    if sa.len() != 2 || sb.len() != 2 || sy.len() != 2 {
        return Err(cx.err(format!(
            "A {sa:?}, B {sb:?} and Y {sy:?} must all have rank 2"
        )));
    }
    let ta = cx.attr_i("transA", 0) != 0;
    let tb = cx.attr_i("transB", 0) != 0;
    let (alpha, beta) = (cx.attr_f("alpha", 1.0), cx.attr_f("beta", 1.0));
    // `alpha·op(p)·op(q)` as a Gemm without C (a zero C before opset 11, where C is required).
    let product = |cx: &mut VjpCx, p: ValueId, q: ValueId, tp: bool, tq: bool| -> Result<ValueId> {
        let attrs = vec![
            attr_int("transA", i64::from(tp)),
            attr_int("transB", i64::from(tq)),
            attr_float("alpha", alpha),
        ];
        if cx.opset >= 11 {
            Ok(cx.op("Gemm", &[p, q], attrs))
        } else {
            let zero = cx.fconst(cx.dtype(y), vec![1], &[0.0])?;
            Ok(cx.op("Gemm", &[p, q, zero], attrs))
        }
    };
    if need(0) {
        out[0] = Some(if ta {
            product(cx, b, g, tb, true)?
        } else {
            product(cx, g, b, false, !tb)?
        });
    }
    if need(1) {
        out[1] = Some(if tb {
            product(cx, g, a, true, ta)?
        } else {
            product(cx, a, g, !ta, false)?
        });
    }
    if need(2) {
        let c = cx.input(2)?;
        let sc = cx.shape(c)?;
        let scaled = if beta == 1.0 {
            g
        } else {
            let k = cx.fconst(cx.dtype(y), vec![], &[f64::from(beta)])?;
            cx.op("Mul", &[g, k], vec![])
        };
        out[2] = Some(cx.unbroadcast(scaled, &sy, &sc));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_int;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    #[test]
    fn trans_b_with_symbolic_batch() {
        let n = node("Gemm", 1, vec![attr_int("transB", 1)]);
        let ins = vec![f32_fact("batch,512"), f32_fact("10,512"), f32_fact("10")];
        let r = infer(&GEMM, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("batch,10")));
        let c = cost(&GEMM, &n, &ins, &[f32_fact("batch,10")]);
        assert_eq!(c.macs, 512 * 10);
        assert_eq!(c.flops, 2 * 512 * 10);
    }

    #[test]
    fn trans_a() {
        let n = node("Gemm", 1, vec![attr_int("transA", 1)]);
        let ins = vec![f32_fact("7,3"), f32_fact("7,5")];
        let r = infer(&GEMM, &n, &ins, 13).unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("3,5")));
    }

    #[test]
    fn inner_mismatch_is_named() {
        let n = node("Gemm", 1, vec![attr_int("transB", 1)]);
        let ins = vec![f32_fact("1,512"), f32_fact("10,256")];
        let e = infer(&GEMM, &n, &ins, 13).unwrap_err();
        assert!(e.to_string().contains("inner dimensions mismatch"), "{e}");
        let n = node("Gemm", 1, vec![]);
        let ins = vec![f32_fact("1,4"), f32_fact("4,10"), f32_fact("9")];
        let e = infer(&GEMM, &n, &ins, 13).unwrap_err();
        assert!(e.to_string().contains("C does not broadcast"), "{e}");
    }

    #[test]
    fn folding_a_following_batch_norm_is_exact() {
        use crate::ir::graph::attr_float;
        use crate::ops::channel::testing::Net;
        use crate::ops::simplify::testing::{bn, folds_exactly};
        // transB with a row C and beta; plain with a scalar C; no C.
        let mut n = Net::new();
        let x = n.input(&[2, 3]);
        let (w, c) = (n.floats(&[4, 3]), n.floats(&[1, 4]));
        let attrs = vec![attr_int("transB", 1), attr_float("beta", 0.5)];
        let y = n.op("Gemm", &[x, w, c], attrs);
        let y = bn(&mut n, y, 4);
        let (w, c) = (n.floats(&[4, 5]), n.floats(&[]));
        let y = n.op("Gemm", &[y, w, c], vec![attr_float("alpha", 2.0)]);
        let y = bn(&mut n, y, 5);
        let w = n.floats(&[5, 2]);
        let y = n.op("Gemm", &[y, w], vec![]);
        let y = bn(&mut n, y, 2);
        n.output(y);
        folds_exactly(&n.model(13));
    }

    /// A removed constant input feature k adds alpha·c·B'[k, :] / beta to the bias, with B
    /// stored either way round; only the removed features' part of B is read.
    #[test]
    fn compensation_reads_the_removed_features_either_layout() {
        // B' = [[1, 2], [3, 4], [5, 6]] (3 features, 2 outputs); stored as B' or as B'ᵀ.
        let b_kn = crate::ir::Tensor::from_f32(vec![3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b_nk = crate::ir::Tensor::from_f32(vec![2, 3], &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let constants = [(0usize, 2.0f64), (2, -1.0)];
        for (trans_b, b) in [(0, &b_kn), (1, &b_nk)] {
            let n = node(
                "Gemm",
                1,
                vec![
                    attr_int("transB", trans_b),
                    crate::ir::graph::attr_float("alpha", 0.5),
                    crate::ir::graph::attr_float("beta", 2.0),
                ],
            );
            let Some(Compensation::AddToInput { port, tensor }) = compensate(&n, b, &constants)
            else {
                panic!("no bias compensation (transB {trans_b})");
            };
            assert_eq!(port, 2);
            // 0.5 · (2·[1, 2] − [5, 6]) / 2 = [-0.75, -0.5].
            assert_eq!(
                tensor.to_f64_vec().unwrap(),
                vec![-0.75, -0.5],
                "transB {trans_b}"
            );
        }
        // A feature outside B: no compensation (the removal is refused elsewhere).
        let n = node("Gemm", 1, vec![]);
        assert!(compensate(&n, &b_kn, &[(7, 1.0)]).is_none());
    }

    /// The Gemm's compensation of removed input features `constants`, B the constant input.
    fn compensate(
        n: &crate::ir::Node,
        b: &crate::ir::Tensor,
        constants: &[(usize, f64)],
    ) -> Option<Compensation> {
        let consts = [None, Some(b), None];
        let cx = CompensateCx {
            node: n,
            inputs: &[],
            outputs: &[],
            slot: crate::ops::channel::Slot {
                port: crate::ops::channel::Port::In(0),
                axis: 1,
            },
            constants,
            consts: &consts,
        };
        GEMM.channel_compensation(&cx).unwrap()
    }
}
