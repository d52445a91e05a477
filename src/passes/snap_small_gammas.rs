//! Snaps small channel scales to zero: every element of a per-channel output scale (a
//! BatchNormalization gamma, see [`crate::ops::channel_scale_input`]) with |γ| below a
//! threshold becomes exactly 0. After sparse training (network slimming) those channels then
//! output a constant, which dead-channel removal folds into the consumers. This changes the
//! model's outputs by at most the snapped scales' contribution; it removes nothing itself.

use crate::ir::{Model, Tensor};

/// Sets every channel-scale element with 0 < |γ| < `t` to 0 and returns how many it changed
/// (0: the model is unchanged). Scales that are not float initializers are left alone.
pub fn snap_small_gammas(model: &mut Model, t: f64) -> usize {
    let g = &mut model.graph;
    let scales: Vec<_> = g
        .node_ids()
        .filter_map(|n| {
            let node = g.node(n);
            node.input(crate::ops::channel_scale_input(node)?)
        })
        .collect();
    let mut count = 0;
    for v in scales {
        let Some(tensor) = g.init(v) else { continue };
        let Some(mut vals) = tensor.to_f64_vec() else {
            continue;
        };
        let small = vals.iter().filter(|x| x.abs() < t && **x != 0.0).count();
        if small == 0 {
            continue;
        }
        for x in vals.iter_mut().filter(|x| x.abs() < t) {
            *x = 0.0;
        }
        if let Ok(new) = Tensor::from_f64_as(tensor.dtype(), tensor.shape().to_vec(), &vals) {
            g.set_init(v, new);
            count += small;
        }
    }
    count
}
