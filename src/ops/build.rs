//! The one graph builder: emits standard-ONNX nodes and constants into a graph, named under a
//! prefix, in the form the graph's opset wants (`ReduceSum`, `Split`, `Pad`, `Slice` and,
//! from opset 18, every other reduction take their parameters as inputs in newer opsets and as
//! attributes in older ones). Backward rules ([`super::vjp::VjpCx`], prefix
//! `grad/{forward node}`) and the train-step compiler's pieces ([`Builder`]: losses,
//! optimizers, regularizers, BatchNormalization and Dropout in training mode) both build
//! through [`Build`]; only naming and error context differ between them.
//!
//! It does not check that what it emits is well typed: callers pass consistent element types.
//! Also here: declaring value types and graph inputs, and reading static shapes.

use crate::error::{Error, Result};
use crate::ir::graph::{attr_int, attr_ints};
use crate::ir::{DType, Dim, Fact, Graph, Tensor, ValueId};
use crate::onnx::proto::{AttributeProto, ValueInfoProto};

/// A place to emit nodes: a graph, a name prefix and an opset. Every method but the first
/// three is provided.
pub trait Build {
    /// The graph being extended.
    fn graph(&mut self) -> &mut Graph;

    /// The opset of the default domain (decides attribute-vs-input forms).
    fn opset(&self) -> i64;

    /// The prefix of every emitted name: nodes are `{prefix}/{op_type}`.
    fn prefix(&self) -> String;

    /// The name of a constant of kind `kind` (`const`, `ints`). Default: `{prefix}/{kind}`.
    fn const_name(&self, kind: &str) -> String {
        format!("{}/{kind}", self.prefix())
    }

    /// `e` with the context of what is being built (default: as it is).
    fn locate(&self, e: Error) -> Error {
        e
    }

    /// A one-output node; returns its output.
    fn op(&mut self, op_type: &str, inputs: &[ValueId], attrs: Vec<AttributeProto>) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|v| Some(*v)).collect();
        self.op_n(op_type, &ins, 1, attrs)[0]
    }

    /// A node with `n` outputs (inputs may be absent); returns its outputs.
    fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[Option<ValueId>],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<ValueId> {
        let base = format!("{}/{op_type}", self.prefix());
        let outs: Vec<String> = (0..n).map(|i| format!("{base}:{i}")).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let g = self.graph();
        let id = g.add_node(&base, op_type, inputs, &refs, attrs);
        g.node(id).outputs.iter().flatten().copied().collect()
    }

    /// A constant tensor (an initializer).
    fn constant(&mut self, t: Tensor) -> ValueId {
        let name = self.const_name("const");
        self.graph().add_initializer(&name, t)
    }

    /// A constant of float type `dtype` with the given shape and values.
    fn fconst(&mut self, dtype: DType, shape: Vec<usize>, values: &[f64]) -> Result<ValueId> {
        let t = Tensor::from_f64_as(dtype, shape, values).map_err(|e| self.locate(e))?;
        Ok(self.constant(t))
    }

    /// A scalar constant of float type `dtype`.
    fn scalar(&mut self, dtype: DType, v: f64) -> Result<ValueId> {
        self.fconst(dtype, vec![], &[v])
    }

    /// A zero tensor of `shape` and float type `dtype`.
    fn zeros(&mut self, shape: &[usize], dtype: DType) -> Result<ValueId> {
        let n: usize = shape.iter().product();
        self.fconst(dtype, shape.to_vec(), &vec![0.0; n])
    }

    /// A 1-D int64 constant (axes, shapes, pads).
    fn ints(&mut self, v: &[i64]) -> ValueId {
        let name = self.const_name("ints");
        let t = Tensor::from_i64(vec![v.len()], v);
        self.graph().add_initializer(&name, t)
    }

    /// Reduction `op_type` (`ReduceSum`, `ReduceMean`, ...) of `x` over `axes`: the axes are an
    /// input from opset 18 (13 for `ReduceSum`), an attribute before.
    fn reduce(&mut self, op_type: &str, x: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        let keep = attr_int("keepdims", i64::from(keepdims));
        let opset = self.opset();
        if opset >= 18 || (op_type == "ReduceSum" && opset >= 13) {
            let a = self.ints(axes);
            self.op(op_type, &[x, a], vec![keep])
        } else {
            self.op(op_type, &[x], vec![keep, attr_ints("axes", axes)])
        }
    }

    /// [`Build::reduce`] with `ReduceSum`.
    fn reduce_sum(&mut self, x: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        self.reduce("ReduceSum", x, axes, keepdims)
    }

    /// `Split(v)` along `axis` into parts of `sizes` (sizes as an input from opset 13).
    fn split(&mut self, v: ValueId, axis: usize, sizes: &[usize]) -> Vec<ValueId> {
        let s: Vec<i64> = sizes.iter().map(|&d| d as i64).collect();
        let ax = attr_int("axis", axis as i64);
        if self.opset() >= 13 {
            let si = self.ints(&s);
            self.op_n("Split", &[Some(v), Some(si)], sizes.len(), vec![ax])
        } else {
            self.op_n(
                "Split",
                &[Some(v)],
                sizes.len(),
                vec![ax, attr_ints("split", &s)],
            )
        }
    }

    /// Zero `Pad` of `v` by `pads` (`[begins.., ends..]` over every axis; pads as an input
    /// from opset 11).
    fn pad_zeros(&mut self, v: ValueId, pads: &[i64]) -> ValueId {
        if self.opset() >= 11 {
            let p = self.ints(pads);
            self.op("Pad", &[v, p], vec![])
        } else {
            self.op("Pad", &[v], vec![attr_ints("pads", pads)])
        }
    }

    /// `Slice(v)` with step 1 (parameters as inputs from opset 10).
    fn slice(&mut self, v: ValueId, starts: &[i64], ends: &[i64], axes: &[i64]) -> ValueId {
        if self.opset() >= 10 {
            let (s, e, a) = (self.ints(starts), self.ints(ends), self.ints(axes));
            self.op("Slice", &[v, s, e, a], vec![])
        } else {
            self.op(
                "Slice",
                &[v],
                vec![
                    attr_ints("starts", starts),
                    attr_ints("ends", ends),
                    attr_ints("axes", axes),
                ],
            )
        }
    }

    /// `v` reshaped to the static `shape`.
    fn reshape(&mut self, v: ValueId, shape: &[usize]) -> ValueId {
        let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.ints(&s);
        self.op("Reshape", &[v, s], vec![])
    }

    /// `Transpose` with a permutation.
    fn transpose(&mut self, v: ValueId, perm: &[i64]) -> ValueId {
        self.op("Transpose", &[v], vec![attr_ints("perm", perm)])
    }

    /// `v` cast to `dtype`.
    fn cast(&mut self, v: ValueId, dtype: DType) -> ValueId {
        self.op(
            "Cast",
            &[v],
            vec![attr_int("to", i64::from(dtype.to_onnx()))],
        )
    }
}

/// A [`Build`] that names everything `{prefix}/...`: the train-step compiler's.
pub struct Builder<'a> {
    /// The graph being extended.
    pub g: &'a mut Graph,
    /// Name prefix of what is emitted.
    pub prefix: String,
    /// Opset of the default domain.
    pub opset: i64,
}

impl<'a> Builder<'a> {
    /// A builder writing into `g` under `prefix`.
    pub fn new(g: &'a mut Graph, prefix: impl Into<String>, opset: i64) -> Builder<'a> {
        Builder {
            g,
            prefix: prefix.into(),
            opset,
        }
    }
}

impl Build for Builder<'_> {
    fn graph(&mut self) -> &mut Graph {
        self.g
    }
    fn opset(&self) -> i64 {
        self.opset
    }
    fn prefix(&self) -> String {
        self.prefix.clone()
    }
}

/// A tensor type with a static shape.
pub fn tensor_type(dtype: DType, shape: &[usize]) -> crate::onnx::proto::TypeProto {
    Fact::new(Some(dtype), shape.iter().map(|&d| Dim::Known(d)).collect()).to_type()
}

/// Declares the type of `v` (graph input, output or value_info).
pub fn declare(g: &mut Graph, v: ValueId, dtype: DType, shape: &[usize]) {
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

/// Adds a float32 graph input named after `name` (made unique) of shape `[batch, dims...]`,
/// the batch dimension the symbol `batch`.
pub fn add_batched_input(g: &mut Graph, name: &str, batch: &str, dims: &[usize]) -> ValueId {
    let v = g.add_value(name);
    let mut shape = vec![Dim::Sym(batch.into())];
    shape.extend(dims.iter().map(|&d| Dim::Known(d)));
    let name = g.value(v).name.clone();
    g.set_decl(
        v,
        ValueInfoProto {
            name: Some(name),
            r#type: Some(Fact::new(Some(DType::F32), shape).to_type()),
            ..Default::default()
        },
    );
    g.value_info.retain(|x| *x != v);
    g.inputs.push(v);
    v
}

/// Adds a graph input named after `name` (made unique) with a static type.
pub fn add_input(g: &mut Graph, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
    let v = g.add_value(name);
    declare(g, v, dtype, shape);
    g.value_info.retain(|x| *x != v);
    g.inputs.push(v);
    v
}

/// The static shape of `v` in `shapes`, or an error naming it.
pub fn static_shape(g: &Graph, shapes: &crate::analysis::Shapes, v: ValueId) -> Result<Vec<usize>> {
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
pub fn dtype_of(shapes: &crate::analysis::Shapes, v: ValueId) -> DType {
    shapes.get(v).and_then(|f| f.dtype).unwrap_or(DType::F32)
}
