//! A small node builder shared by the train-step pieces (BatchNormalization rewrite, losses,
//! regularizers, optimizers): names every node and value under one prefix, builds typed
//! constants, and declares graph inputs and value types. It does not check that what it emits
//! is well typed; callers pass consistent element types.

use crate::error::{Error, Result};
use crate::ir::graph::attr_ints;
use crate::ir::{DType, Dim, Fact, Graph, Tensor, ValueId};
use crate::onnx::proto::{AttributeProto, ValueInfoProto};

/// Emits nodes named `{prefix}/{op}` into a graph.
pub(crate) struct Emit<'a> {
    /// The graph being extended.
    pub g: &'a mut Graph,
    /// Name prefix of what is emitted.
    pub prefix: String,
    /// Opset of the default domain (decides attribute-vs-input forms).
    pub opset: i64,
}

impl<'a> Emit<'a> {
    /// A builder writing under `prefix`.
    pub fn new(g: &'a mut Graph, prefix: impl Into<String>, opset: i64) -> Emit<'a> {
        Emit {
            g,
            prefix: prefix.into(),
            opset,
        }
    }

    /// A one-output node; returns its output.
    pub fn op(&mut self, op_type: &str, inputs: &[ValueId], attrs: Vec<AttributeProto>) -> ValueId {
        let base = format!("{}/{op_type}", self.prefix);
        let out = format!("{base}:0");
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|v| Some(*v)).collect();
        let id = self
            .g
            .add_node(&base, op_type, &ins, &[out.as_str()], attrs);
        // `add_node` always creates the one output it was asked for.
        self.g
            .node(id)
            .outputs
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()[0]
    }

    /// A constant of `dtype` (a float type) with the given shape and values.
    pub fn constant(&mut self, dtype: DType, shape: Vec<usize>, values: &[f64]) -> Result<ValueId> {
        let t = Tensor::from_f64_as(dtype, shape, values)?;
        Ok(self.g.add_initializer(&format!("{}/const", self.prefix), t))
    }

    /// A scalar constant of `dtype`.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> Result<ValueId> {
        self.constant(dtype, vec![], &[v])
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, v: &[i64]) -> ValueId {
        let t = Tensor::from_i64(vec![v.len()], v);
        self.g.add_initializer(&format!("{}/ints", self.prefix), t)
    }

    /// `ReduceMean`/`ReduceSum`/`ReduceMax` over `axes`, in the form the opset wants (axes
    /// as an input from opset 18, or 13 for ReduceSum; as an attribute before).
    pub fn reduce(&mut self, op_type: &str, x: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        let keep = crate::ir::graph::attr_int("keepdims", i64::from(keepdims));
        let input_form = self.opset >= 18 || (op_type == "ReduceSum" && self.opset >= 13);
        if input_form {
            let a = self.ints(axes);
            self.op(op_type, &[x, a], vec![keep])
        } else {
            self.op(op_type, &[x], vec![attr_ints("axes", axes), keep])
        }
    }
}

/// A tensor type with a static shape.
pub(crate) fn tensor_type(dtype: DType, shape: &[usize]) -> crate::onnx::proto::TypeProto {
    Fact::new(Some(dtype), shape.iter().map(|&d| Dim::Known(d)).collect()).to_type()
}

/// Declares the type of `v` (graph input, output or value_info).
pub(crate) fn declare(g: &mut Graph, v: ValueId, dtype: DType, shape: &[usize]) {
    let name = g.value(v).name.clone();
    g.set_decl(
        v,
        ValueInfoProto {
            name: Some(name),
            r#type: Some(tensor_type(dtype, shape)),
            ..Default::default()
        },
    );
}

/// Adds a graph input named after `name` (made unique) with a static type.
pub(crate) fn add_input(g: &mut Graph, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
    let v = g.add_value(name);
    declare(g, v, dtype, shape);
    g.value_info.retain(|x| *x != v);
    g.inputs.push(v);
    v
}

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

/// The static shape of `v` in `shapes`, or an error naming it.
pub(crate) fn static_shape(
    g: &Graph,
    shapes: &crate::analysis::Shapes,
    v: ValueId,
) -> Result<Vec<usize>> {
    shapes
        .get(v)
        .and_then(|f| f.shape.as_ref())
        .and_then(|s| s.iter().map(Dim::known).collect::<Option<Vec<usize>>>())
        .ok_or_else(|| {
            Error::Graph(format!(
                "the shape of '{}' must be static to train (is the batch size fixed?)",
                g.value(v).name
            ))
        })
}

/// The element type of `v` in `shapes` (float32 when unknown).
pub(crate) fn dtype_of(shapes: &crate::analysis::Shapes, v: ValueId) -> DType {
    shapes.get(v).and_then(|f| f.dtype).unwrap_or(DType::F32)
}
