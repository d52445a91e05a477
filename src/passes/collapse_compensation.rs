//! [`collapse_compensation`]: replaces the per-pixel compensation maps that channel removal
//! adds after a convolution (`Add(conv, map[C,H,W])`, where zero padding makes a removed
//! constant channel's contribution vary near the border) by the map's value at the centre
//! pixel folded into the convolution's bias. Exact in the interior, approximate within the
//! padding's reach of the border; it removes one elementwise node and a `C·H·W` tensor per
//! convolution. An explicit approximation: nothing calls it unless asked (MaskSparsity's prune
//! stage does, and says so). It does not touch compensations that are already biases.

use crate::error::Result;
use crate::ir::{DType, Model, Tensor};

/// Collapses every `{conv}_compensate` Add of [`crate::passes::remove_channels()`] whose
/// constant is a float32 `[C,H,W]` or `[1,C,H,W]` map after a `Conv`; returns how many.
pub fn collapse_compensation(model: &mut Model) -> Result<usize> {
    let g = &mut model.graph;
    let mut done = 0;
    let adds: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op_type == "Add" && g.node(n).name.ends_with("_compensate"))
        .collect();
    for add in adds {
        let node = g.node(add);
        let (Some(pre), Some(map), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
            continue;
        };
        let Some((conv, 0)) = g.value(pre).producer else {
            continue;
        };
        if g.node(conv).op_type != "Conv" || g.value(pre).uses.len() != 1 {
            continue;
        }
        let Some(t) = g.init(map).filter(|t| t.dtype() == DType::F32) else {
            continue;
        };
        let shape = t.shape().to_vec();
        let (c, h, w) = match shape[..] {
            [c, h, w] | [1, c, h, w] => (c, h, w),
            _ => continue,
        };
        let Some(values) = t.to_f64_vec() else {
            continue;
        };
        let centre: Vec<f64> = (0..c)
            .map(|k| values[k * h * w + (h / 2) * w + w / 2])
            .collect();
        // Fold into the bias (created when absent).
        let bias = g.node(conv).input(2).and_then(|b| g.init(b).cloned());
        let new_bias = match bias {
            Some(b) => {
                let Some(old) = b.to_f64_vec().filter(|o| o.len() == c) else {
                    continue;
                };
                let sum: Vec<f64> = old.iter().zip(&centre).map(|(a, b)| a + b).collect();
                Tensor::from_f64_as(b.dtype(), vec![c], &sum)?
            }
            None => Tensor::from_f64_as(DType::F32, vec![c], &centre)?,
        };
        let name = format!("{}_bias_collapsed", g.node(conv).name);
        let bv = g.add_initializer(&name, new_bias);
        while g.node(conv).inputs.len() < 2 {
            g.push_input(conv, None);
        }
        if g.node(conv).inputs.len() == 2 {
            g.push_input(conv, Some(bv));
        } else {
            g.set_input(conv, 2, Some(bv));
        }
        g.remove_node(add);
        g.set_output(conv, 0, y);
        g.remove_value(pre);
        done += 1;
    }
    if done > 0 {
        crate::passes::eliminate_dead_code(model)?;
        model.graph.compact();
    }
    Ok(done)
}
