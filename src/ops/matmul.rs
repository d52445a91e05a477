//! `MatMul` with numpy semantics: `[..., M, K] × [..., K, N] → [broadcast(...), M, N]`. A 1-D A
//! is promoted to `[1, K]` and a 1-D B to `[K, 1]`, and the promoted axis is dropped from the
//! result. Batch dims broadcast (symbolic dims propagate); K must agree when known.
//!
//! MACs = Π(output batch dims)·M·N·K (= output elements · K). Not handled: folding, and
//! `MatMulInteger`/`QLinearMatMul` (other op types).

use crate::error::Result;
use crate::ir::{Dim, Fact, Node, ValueId};

use super::channel::{CompensateCx, Compensation, ConstCx, Link, LinkCx, Map, Slot};
use super::linear::{Form, Linear, LinearCx};
use super::vjp::{Build, VjpCx};
use super::{util, Cost, Cx, FreshInit, Op};

/// `MatMul`.
pub struct MatMul {
    name: &'static str,
}

impl Op for MatMul {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 2))
    }

    fn weight_input(&self, _port: usize) -> bool {
        // Either operand may be a learned matrix (or bias).
        true
    }

    fn fresh_init(&self, _node: &Node, weights: &[Option<&[usize]>]) -> Vec<(usize, FreshInit)> {
        // A constant 2-D B `[K, N]` is the weight; failing that a constant 2-D A `[M, K]`.
        let w = |p: usize| weights.get(p).copied().flatten();
        match (w(0), w(1)) {
            (_, Some(&[k, _])) => vec![(
                1,
                FreshInit::Kaiming {
                    fan_in: k,
                    dense: true,
                },
            )],
            (Some(&[_, k]), _) => vec![(
                0,
                FreshInit::Kaiming {
                    fan_in: k,
                    dense: true,
                },
            )],
            _ => Vec::new(),
        }
    }

    fn linear(&self, cx: &LinearCx) -> Option<Linear> {
        // A constant 2-D B [K, N] over the last axis of A.
        let (&[k, n], Some(ra), Some(ry)) = (cx.weight, cx.input_rank, cx.output_rank) else {
            return None;
        };
        if ra == 0 || ry == 0 {
            return None;
        }
        Some(Linear {
            input_axis: ra - 1,
            output_axis: ry - 1,
            in_channels: k,
            out_channels: n,
            bias_port: None,
            form: Form::Dense {
                out_major: false,
                channels_first: false,
                alpha: 1.0,
                beta: 1.0,
            },
        })
    }

    fn layer_channels(&self, _node: &crate::ir::Node, w: &[usize]) -> Option<(usize, usize)> {
        // B = [.., K, N].
        let r = w.len();
        (r >= 2).then(|| (w[r - 1], w[r - 2]))
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let a = util::required_input(cx, 0)?;
        let b = util::required_input(cx, 1)?;
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(None);
        };
        let dtype = a.dtype.or(b.dtype);
        let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
            return Ok(Some(vec![Fact {
                dtype,
                shape: None,
                ..Default::default()
            }]));
        };
        if sa.is_empty() || sb.is_empty() {
            return Err(cx.err("MatMul does not accept scalar (rank-0) inputs"));
        }
        let mut pa = sa.clone();
        if pa.len() == 1 {
            pa.insert(0, Dim::Known(1));
        }
        let mut pb = sb.clone();
        if pb.len() == 1 {
            pb.push(Dim::Known(1));
        }
        let (ra, rb) = (pa.len(), pb.len());
        if let (Some(ka), Some(kb)) = (pa[ra - 1].known(), pb[rb - 2].known()) {
            if ka != kb {
                return Err(cx.err(format!(
                    "inner dimensions mismatch: A{} has K={ka}, B{} has K={kb}",
                    crate::ir::fact::shape_string(sa),
                    crate::ir::fact::shape_string(sb)
                )));
            }
        }
        let batch_a: Vec<Dim> = pa[..ra - 2].to_vec();
        let batch_b: Vec<Dim> = pb[..rb - 2].to_vec();
        let mut out = util::broadcast(&[&batch_a, &batch_b])
            .map_err(|e| cx.err(format!("batch dimensions do not broadcast: {e}")))?;
        if sa.len() > 1 {
            out.push(pa[ra - 2].clone());
        }
        if sb.len() > 1 {
            out.push(pb[rb - 1].clone());
        }
        Ok(Some(vec![Fact::new(dtype, out)]))
    }

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        // Only X[..., K] · W[K, N] with a constant 2-D W: output features (last axis) are
        // created by W's columns; X's last axis is consumed by W's rows.
        let (Some(w), true, Some(out_rank)) = (
            cx.in_dims(1),
            cx.is_const(1),
            cx.outputs.first().copied().flatten().and_then(Fact::rank),
        ) else {
            return cx.block_all("MatMul with a non-constant right operand");
        };
        if w.len() != 2 || out_rank < 2 {
            return cx.block_all("MatMul weight is not 2-D");
        }
        let out = Slot::output(0, out_rank - 1);
        let mut links = vec![
            Link::Create { to: out, len: w[1] },
            Link::Member {
                input: 1,
                axis: 1,
                slot: out,
                map: Map::Identity,
            },
        ];
        let x_rank = cx.in_rank(0).unwrap_or(0);
        for (a, _) in cx.tracked_axes(0) {
            if a + 1 == x_rank {
                links.push(Link::Consume {
                    from: Slot::input(0, a),
                });
                links.push(Link::Member {
                    input: 1,
                    axis: 0,
                    slot: Slot::input(0, a),
                    map: Map::Identity,
                });
            } else {
                links.push(Link::Block {
                    slot: Slot::input(0, a),
                    reason: "channels on a MatMul row or batch axis".into(),
                });
            }
        }
        links
    }

    fn channel_constant(&self, cx: &ConstCx) -> Option<f64> {
        cx.zero.get(1).copied().unwrap_or(false).then_some(0.0)
    }

    fn channel_compensation(&self, cx: &CompensateCx) -> Result<Option<Compensation>> {
        // Removed input feature k with constant c adds c·W[k, :].
        let Some(w) = cx.consts.get(1).copied().flatten() else {
            return Ok(None);
        };
        let (Some(wv), true) = (w.to_f64_vec(), w.shape().len() == 2) else {
            return Ok(None);
        };
        let n = w.shape()[1];
        let mut bias = vec![0f64; n];
        for &(k, c) in cx.constants {
            for (j, slot) in bias.iter_mut().enumerate() {
                *slot += c * wv[k * n + j];
            }
        }
        Ok(Some(Compensation::AddToOutput(
            crate::ir::Tensor::from_f64_as(w.dtype(), vec![n], &bias)?,
        )))
    }

    fn vjp(
        &self,
        cx: &mut VjpCx,
        grads: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>> {
        matmul_vjp(cx, grads, needs)
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let Some(sa) = cx
            .inputs
            .first()
            .copied()
            .flatten()
            .and_then(|f| f.shape.as_ref())
        else {
            return Cost::default();
        };
        let Some(k) = sa.last() else {
            return Cost::default();
        };
        // Output elements = Π batch · M · N (promoted 1-D axes are 1 either way).
        let macs = util::output_numel(outputs, 0).saturating_mul(k.known().unwrap_or(1) as u64);
        Cost {
            macs,
            flops: macs.saturating_mul(2),
        }
    }

    fn layer(&self, _node: &Node) -> Option<super::training::Layer> {
        // Fully connected, no bias of its own (a following Add holds it).
        Some(super::training::Layer {
            weight: 1,
            bias: None,
            filter_axis: None,
        })
    }
}

/// `MatMul`.
pub static MATMUL: MatMul = MatMul { name: "MatMul" };

/// Backward rule of `MatMul` (1-D operands promoted as in the forward, G = dY with the promoted
/// axes restored): dA = G·Bᵀ and dB = Aᵀ·G, each summed over the batch axes its operand was
/// broadcast along and reshaped back to the operand's shape.
fn matmul_vjp(
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
    if sa.is_empty() || sb.is_empty() {
        return Err(cx.err("operands must have rank 1 or more"));
    }
    let pa = if sa.len() == 1 {
        vec![1, sa[0]]
    } else {
        sa.clone()
    };
    let pb = if sb.len() == 1 {
        vec![sb[0], 1]
    } else {
        sb.clone()
    };
    let (ra, rb) = (pa.len(), pb.len());
    if pa[ra - 1] != pb[rb - 2] {
        return Err(cx.err(format!("inner dimensions of {sa:?} and {sb:?} differ")));
    }
    // Broadcast batch dims, then the full (promoted) output shape.
    let rank = ra.max(rb);
    let mut full = Vec::with_capacity(rank);
    for i in 0..rank - 2 {
        let da = if i + ra >= rank { pa[i + ra - rank] } else { 1 };
        let db = if i + rb >= rank { pb[i + rb - rank] } else { 1 };
        if da != db && da != 1 && db != 1 {
            return Err(cx.err(format!("batch dims of {sa:?} and {sb:?} do not broadcast")));
        }
        full.push(da.max(db));
    }
    full.extend([pa[ra - 2], pb[rb - 1]]);
    if full.iter().product::<usize>() != sy.iter().product::<usize>() {
        return Err(cx.err(format!("output {sy:?} does not match {full:?}")));
    }
    let g = if full == sy { g } else { cx.reshape(g, &full) };
    let promote = |cx: &mut VjpCx, v: ValueId, s: &[usize], p: &[usize]| {
        if s.len() == p.len() {
            v
        } else {
            cx.reshape(v, p)
        }
    };
    let swap = |r: usize| -> Vec<i64> {
        let mut p: Vec<i64> = (0..r as i64).collect();
        p.swap(r - 2, r - 1);
        p
    };
    if need(0) {
        let b2 = promote(cx, b, &sb, &pb);
        let bt = cx.transpose(b2, &swap(rb));
        let da = cx.op("MatMul", &[g, bt], vec![]);
        let mut from = full.clone();
        from[rank - 1] = pa[ra - 1];
        let da = cx.unbroadcast(da, &from, &pa);
        out[0] = Some(promote(cx, da, &pa, &sa));
    }
    if need(1) {
        let a2 = promote(cx, a, &sa, &pa);
        let at = cx.transpose(a2, &swap(ra));
        let db = cx.op("MatMul", &[at, g], vec![]);
        let mut from = full.clone();
        from[rank - 2] = pb[rb - 2];
        let db = cx.unbroadcast(db, &from, &pb);
        out[1] = Some(promote(cx, db, &pb, &sb));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::test_extra::cost;
    use crate::ops::util::testing::{f32_fact, infer, node, shape};

    fn run(a: &str, b: &str) -> Result<Option<Vec<Fact>>> {
        let n = node("MatMul", 1, vec![]);
        infer(&MATMUL, &n, &[f32_fact(a), f32_fact(b)], 13)
    }

    #[test]
    fn batched_with_symbolic_batch_and_broadcast() {
        let r = run("B,12,S,64", "B,12,64,S").unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("B,12,S,S")));
        let r = run("N,197,768", "768,3072").unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("N,197,3072")));
        let r = run("2,1,3,4", "5,4,6").unwrap().unwrap();
        assert_eq!(r[0].shape, Some(shape("2,5,3,6")));
    }

    #[test]
    fn one_d_promotion() {
        assert_eq!(run("4", "4,6").unwrap().unwrap()[0].shape, Some(shape("6")));
        assert_eq!(run("3,4", "4").unwrap().unwrap()[0].shape, Some(shape("3")));
        assert_eq!(run("4", "4").unwrap().unwrap()[0].shape, Some(shape("")));
    }

    #[test]
    fn mismatches_are_errors() {
        let e = run("3,4", "5,6").unwrap_err();
        assert!(e.to_string().contains("inner dimensions mismatch"), "{e}");
        assert!(run("2,3,4", "3,4,6").is_err());
    }

    #[test]
    fn macs() {
        let n = node("MatMul", 1, vec![]);
        let ins = [f32_fact("2,3,4"), f32_fact("4,5")];
        let c = cost(&MATMUL, &n, &ins, &[f32_fact("2,3,5")]);
        assert_eq!(c.macs, 2 * 3 * 5 * 4);
    }
}
