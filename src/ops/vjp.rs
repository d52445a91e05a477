//! The vocabulary of backward rules: what an op's [`Op::vjp`](super::Op::vjp) sees and the
//! builder it emits backward nodes with. A rule receives the gradient of each output (or `None`
//! when that output does not reach the loss) and returns the gradient of each input it was asked
//! for (`needs[port]`), as new values in the same graph, built from standard ONNX ops only
//! through the crate's one graph builder ([`Build`], which `VjpCx` implements).
//!
//! Shapes are static here: the train-step compiler fixes the batch size, so every forward value
//! has a known shape ([`VjpCx::shape`]). Rules do not run anything and do not simplify what
//! they emit.

use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Node, NodeId, ValueId};

pub use super::build::Build;

/// The context of one backward rule.
pub struct VjpCx<'a> {
    /// The graph being extended (forward nodes are in it).
    pub g: &'a mut Graph,
    /// Facts of the forward values.
    pub shapes: &'a Shapes,
    /// The forward node.
    pub node: NodeId,
    /// Opset of the default domain.
    pub opset: i64,
    /// Whether rules may emit lopper's own ONNX Runtime kernels ([`crate::runtime::kernels`]).
    pub kernels: bool,
}

impl VjpCx<'_> {
    /// The forward node.
    pub fn fwd(&self) -> &Node {
        self.g.node(self.node)
    }

    /// An error naming the forward node.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        let n = self.fwd();
        Error::node(&n.name, &n.op_type, msg)
    }

    /// Forward input `port` (an error when absent).
    pub fn input(&self, port: usize) -> Result<ValueId> {
        self.fwd()
            .input(port)
            .ok_or_else(|| self.err(format!("input {port} is missing")))
    }

    /// Forward output `port` (an error when absent).
    pub fn output(&self, port: usize) -> Result<ValueId> {
        self.fwd()
            .output(port)
            .ok_or_else(|| self.err(format!("output {port} is missing")))
    }

    /// Static shape of a forward value (an error when not fully known).
    pub fn shape(&self, v: ValueId) -> Result<Vec<usize>> {
        self.shapes
            .get(v)
            .and_then(|f| f.shape.as_ref())
            .and_then(|s| s.iter().map(|d| d.known()).collect::<Option<Vec<usize>>>())
            .ok_or_else(|| {
                self.err(format!(
                    "the shape of '{}' must be static to differentiate",
                    self.g.value(v).name
                ))
            })
    }

    /// Element type of a forward value (f32 when unknown).
    pub fn dtype(&self, v: ValueId) -> DType {
        self.shapes
            .get(v)
            .and_then(|f| f.dtype)
            .unwrap_or(DType::F32)
    }

    /// Integer attribute of the forward node, or `default`.
    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.fwd().attr_i(name).unwrap_or(default)
    }

    /// Float attribute of the forward node, or `default`.
    pub fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.fwd().attr_f(name).unwrap_or(default)
    }

    /// Ints attribute of the forward node.
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.fwd().attr_ints(name).map(<[i64]>::to_vec)
    }

    /// Whether rules may emit lopper's kernels for these forward values: [`VjpCx::kernels`] is
    /// on and every value is float32 (gradients take their forward value's type).
    pub fn kernels_for(&self, values: &[ValueId]) -> bool {
        self.kernels
            && values
                .iter()
                .all(|&v| self.shapes.get(v).and_then(|f| f.dtype) == Some(DType::F32))
    }

    /// A node of lopper's own kernel `op` ([`crate::runtime::kernels`]) with float32 outputs
    /// of the given shapes; returns its outputs. Callers check [`VjpCx::kernels_for`] first.
    pub fn kernel(
        &mut self,
        op: &str,
        inputs: &[ValueId],
        attrs: Vec<crate::onnx::proto::AttributeProto>,
        outputs: &[&[usize]],
    ) -> Vec<ValueId> {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        let outs = self.op_n(op, &ins, outputs.len(), attrs);
        if let Some((n, _)) = outs.first().and_then(|&v| self.g.value(v).producer) {
            self.g.node_mut(n).domain = crate::runtime::kernels::DOMAIN.into();
        }
        for (&v, shape) in outs.iter().zip(outputs) {
            super::build::declare(self.g, v, DType::F32, shape);
        }
        outs
    }

    /// `grad` (shaped like a broadcast result `from`) summed back to `to` (numpy broadcasting):
    /// leading axes and axes where `to` has 1 are summed, then reshaped to `to`.
    pub fn unbroadcast(&mut self, grad: ValueId, from: &[usize], to: &[usize]) -> ValueId {
        if from == to {
            return grad;
        }
        let lead = from.len().saturating_sub(to.len());
        let axes: Vec<i64> = (0..from.len())
            .filter(|&i| i < lead || (to[i - lead] == 1 && from[i] != 1))
            .map(|i| i as i64)
            .collect();
        let summed = if axes.is_empty() {
            grad
        } else {
            self.reduce_sum(grad, &axes, true)
        };
        self.reshape(summed, to)
    }
}

/// Backward nodes are named `grad/{forward node}/{op}`, constants `grad/{forward node}/const`,
/// errors name the forward node.
impl Build for VjpCx<'_> {
    fn graph(&mut self) -> &mut Graph {
        self.g
    }
    fn opset(&self) -> i64 {
        self.opset
    }
    fn prefix(&self) -> String {
        format!("grad/{}", self.fwd().name)
    }
    fn const_name(&self, _kind: &str) -> String {
        format!("{}/const", self.prefix())
    }
    fn locate(&self, e: Error) -> Error {
        self.err(e.to_string())
    }
}
