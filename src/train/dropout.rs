//! Random ops in training mode with randomness fed by the host. Every node whose op has a
//! random training rule ([`crate::ops::Op::lower_random`]; Dropout: on the path to the loss
//! with a ratio `r` above 0, `y = x · Cast(noise ≥ r) / (1 − r)`, see `ops/identity.rs`) is
//! rewritten so that its randomness is a new float32 graph input, shaped like what it draws
//! for (static: the batch is fixed), that the host fills with uniform `[0, 1)` values every
//! step from its own seeded stream, so that runs repeat exactly and resume byte-identically
//! (ONNX Runtime's Dropout seed would restart with every session).
//!
//! Not done here: Dropouts off the loss path and those with ratio 0 stay as they are
//! (inference no-ops; their pre-opset-12 `ratio`/`is_test` attributes are dropped, since the
//! step runs at opset ≥ 17); the inference model keeps its Dropout nodes (see
//! [`super::TrainStep::inference_model`]).

use std::collections::HashSet;

use crate::analysis::Shapes;
use crate::error::Result;
use crate::ir::{Graph, ValueId};
use crate::ops::training::NoiseCx;

/// A lowered random node: the noise input the host feeds every step.
pub use crate::ops::training::Noise as DropoutNoise;

/// Lowers every random node of `g` (see the module docs); `root` is the value the loss is
/// built on. Returns their noise inputs in graph order. `model_opset` is the opset the nodes
/// were written for (it decides where a Dropout's ratio is), `opset` the one the step emits.
pub(crate) fn lower_dropouts(
    g: &mut Graph,
    shapes: &Shapes,
    model_opset: i64,
    opset: i64,
    root: ValueId,
) -> Result<Vec<DropoutNoise>> {
    let order = g.topo_order()?;
    let mut to_root: HashSet<ValueId> = HashSet::from([root]);
    for &n in order.iter().rev() {
        let node = g.node(n);
        if node.outputs.iter().flatten().any(|v| to_root.contains(v)) {
            to_root.extend(node.inputs.iter().flatten().copied());
        }
    }
    let mut out = Vec::new();
    for n in order {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let on_loss_path = node.outputs.iter().flatten().any(|v| to_root.contains(v));
        let mut cx = NoiseCx {
            g,
            shapes,
            node: n,
            model_opset,
            opset,
            on_loss_path,
        };
        out.extend(op.lower_random(&mut cx)?);
    }
    Ok(out)
}
