//! Graph plumbing shared by the train-step pieces (BatchNormalization rewrite, losses,
//! regularizers, optimizers): declaring graph inputs and value types, turning initializers into
//! inputs, and reading static shapes. Nodes and constants are emitted through the crate's one
//! graph builder, [`crate::ops::build::Builder`].

use crate::error::{Error, Result};
use crate::ir::{Graph, Tensor, ValueId};

pub(crate) use crate::ops::build::{add_input, declare, dtype_of, static_shape};

/// Turns initializer `v` into a graph input of the same name and type (its contents are
/// returned; the graph no longer holds them).
pub(crate) fn initializer_to_input(g: &mut Graph, v: ValueId) -> Result<Tensor> {
    let t = g
        .init(v)
        .cloned()
        .ok_or_else(|| Error::tensor(&g.value(v).name, "is not an initializer"))?;
    {
        let val = g.values_mut(v);
        val.init = None;
        val.init_proto = None;
    }
    g.initializers.retain(|x| *x != v);
    declare(g, v, t.dtype(), t.shape());
    g.value_info.retain(|x| *x != v);
    if !g.inputs.contains(&v) {
        g.inputs.push(v);
    }
    Ok(t)
}
