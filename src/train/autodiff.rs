//! Reverse-mode automatic differentiation over the IR: appends to a graph the nodes that
//! compute the gradient of a scalar `loss` with respect to chosen values (parameters), by
//! calling each op's backward rule ([`crate::ops::Op::vjp`]) in reverse topological order and
//! summing gradients that reach a value along several paths.
//!
//! Only nodes on a path from a chosen value to the loss are differentiated; integer-valued
//! tensors (shapes, indices) carry no gradient. It does not build losses or optimizer updates
//! (see [`super::step`]), does not rewrite BatchNormalization into training mode, and does
//! not simplify what it emits.

use std::collections::{HashMap, HashSet};

use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Tensor, ValueId};
use crate::ops::{self, vjp::VjpCx};

fn carries_gradient(shapes: &Shapes, v: ValueId) -> bool {
    match shapes.get(v).and_then(|f| f.dtype) {
        Some(d) => matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16),
        None => true,
    }
}

/// Appends to `g` the gradient of `loss` (a float scalar or tensor, seeded with ones) with
/// respect to each of `wrt`; `None` where a value does not reach the loss. `shapes` are the
/// facts of `g` before the call (static shapes needed by the rules). Standard ONNX ops only.
pub fn gradients(
    g: &mut Graph,
    shapes: &Shapes,
    opset: i64,
    loss: ValueId,
    wrt: &[ValueId],
) -> Result<Vec<Option<ValueId>>> {
    gradients_with(g, shapes, opset, loss, wrt, false)
}

/// [`gradients`], with `kernels`: the rules may use lopper's own ONNX Runtime kernels
/// ([`crate::runtime::kernels`]) where they are faster; the graph then runs in lopper's ONNX
/// Runtime sessions only.
pub fn gradients_with(
    g: &mut Graph,
    shapes: &Shapes,
    opset: i64,
    loss: ValueId,
    wrt: &[ValueId],
    kernels: bool,
) -> Result<Vec<Option<ValueId>>> {
    let order = g.topo_order()?;
    // Values that depend on a chosen value (through float tensors).
    let mut from_wrt: HashSet<ValueId> = wrt.iter().copied().collect();
    for &n in &order {
        let node = g.node(n);
        if node.inputs.iter().flatten().any(|v| from_wrt.contains(v)) {
            for &o in node.outputs.iter().flatten() {
                if carries_gradient(shapes, o) {
                    from_wrt.insert(o);
                }
            }
        }
    }
    // Values the loss depends on.
    let mut to_loss: HashSet<ValueId> = HashSet::from([loss]);
    for &n in order.iter().rev() {
        let node = g.node(n);
        if node.outputs.iter().flatten().any(|v| to_loss.contains(v)) {
            to_loss.extend(node.inputs.iter().flatten().copied());
        }
    }
    if !from_wrt.contains(&loss) {
        return Ok(vec![None; wrt.len()]);
    }
    let loss_shape: Vec<usize> = shapes
        .get(loss)
        .and_then(|f| f.shape.as_ref())
        .and_then(|s| s.iter().map(|d| d.known()).collect())
        .ok_or_else(|| Error::Graph("the loss must have a static shape".into()))?;
    let n: usize = loss_shape.iter().product();
    // Ones typed like the loss (a float64 model differentiates in float64).
    let dtype = shapes.get(loss).and_then(|f| f.dtype).unwrap_or(DType::F32);
    let seed = g.add_initializer(
        "grad/seed",
        Tensor::from_f64_as(dtype, loss_shape, &vec![1.0; n])?,
    );
    let mut grads: HashMap<ValueId, Vec<ValueId>> = HashMap::from([(loss, vec![seed])]);
    for &n in order.iter().rev() {
        let node = g.node(n);
        let on_path = node.outputs.iter().flatten().any(|v| to_loss.contains(v))
            && node.inputs.iter().flatten().any(|v| from_wrt.contains(v));
        if !on_path {
            continue;
        }
        let outs: Vec<Option<ValueId>> = node.outputs.clone();
        let ins: Vec<Option<ValueId>> = node.inputs.clone();
        let (op_type, domain, name) =
            (node.op_type.clone(), node.domain.clone(), node.name.clone());
        let mut out_grads = Vec::with_capacity(outs.len());
        for o in &outs {
            out_grads.push(match o {
                Some(o) => accumulate(g, &mut grads, *o),
                None => None,
            });
        }
        if out_grads.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = ins
            .iter()
            .map(|v| v.is_some_and(|v| from_wrt.contains(&v)))
            .collect();
        let op = ops::lookup(&domain, &op_type).ok_or_else(|| {
            Error::node(
                &name,
                &op_type,
                "is not a known op, so the loss cannot be differentiated through it",
            )
        })?;
        let mut cx = VjpCx {
            g,
            shapes,
            node: n,
            opset,
            kernels,
        };
        let in_grads = op.vjp(&mut cx, &out_grads, &needs)?;
        for (p, gv) in in_grads.into_iter().enumerate() {
            if let (Some(gv), Some(Some(v)), true) = (gv, ins.get(p), needs.get(p) == Some(&true)) {
                grads.entry(*v).or_default().push(gv);
            }
        }
    }
    let mut out = Vec::with_capacity(wrt.len());
    for &w in wrt {
        out.push(accumulate(g, &mut grads, w));
    }
    Ok(out)
}

/// The total gradient of `v`: its single contribution, or their `Sum`.
fn accumulate(
    g: &mut Graph,
    grads: &mut HashMap<ValueId, Vec<ValueId>>,
    v: ValueId,
) -> Option<ValueId> {
    let parts = grads.get(&v)?.clone();
    match parts.as_slice() {
        [] => None,
        [one] => Some(*one),
        many => {
            let ins: Vec<Option<ValueId>> = many.iter().map(|p| Some(*p)).collect();
            let name = format!("grad/{}", g.value(v).name);
            let out = format!("{name}:sum");
            let id = g.add_node(&format!("{name}/Sum"), "Sum", &ins, &[out.as_str()], vec![]);
            let s = g.node(id).outputs[0]?;
            grads.insert(v, vec![s]);
            Some(s)
        }
    }
}
