//! What the training compiler (`crate::train`) and `lopper train --from-scratch` learn from an
//! op (the training block of [`super::Op`]): which operands of a weight layer are its weight
//! and bias ([`Layer`]), how a node with running statistics runs in training mode
//! ([`TrainingMode`]: BatchNormalization), and how a random op draws its randomness from noise
//! the host feeds ([`Noise`], [`NoiseCx`]: Dropout).

use crate::analysis::Shapes;
use crate::ir::{Graph, NodeId};
use crate::onnx::proto::AttributeProto;

/// A weight layer's learned operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The weight input.
    pub weight: usize,
    /// The bias input, when the op has one.
    pub bias: Option<usize>,
    /// The axis of the weight along which each slice is one output filter, when the weight is
    /// a convolution filter bank that group lasso penalises filter by filter (`None`: fully
    /// connected weights, grouped transposed convolutions).
    pub filter_axis: Option<usize>,
}

/// How a node with running statistics runs in training mode: the same op with `attrs`, whose
/// outputs then give the batch's statistics, from which the train step updates the running
/// ones (`running' = m·running + (1 − m)·batch`, the variance made unbiased).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingMode {
    /// The training-mode node's attributes.
    pub attrs: Vec<AttributeProto>,
    /// `(input, output)`: the running mean's input and the batch mean's output.
    pub mean: (usize, usize),
    /// `(input, output)`: the running variance's input and the batch (biased) variance's
    /// output.
    pub var: (usize, usize),
    /// The momentum `m` of the running update.
    pub momentum: f64,
}

/// The noise input a random op's training rule added: the host feeds fresh uniform `[0, 1)`
/// values every step.
#[derive(Clone, Debug, PartialEq)]
pub struct Noise {
    /// Graph input name (float32, uniform in `[0, 1)`).
    pub input: String,
    /// Its static shape (batch included).
    pub shape: Vec<usize>,
    /// The node it replaces.
    pub node: String,
    /// The drop probability: an element is kept when its noise is ≥ this.
    pub ratio: f64,
}

/// What a random op's training rule ([`super::Op::lower_random`]) sees.
pub struct NoiseCx<'a> {
    /// The graph (the node is in it).
    pub g: &'a mut Graph,
    /// Facts of its values (static shapes: the batch is fixed).
    pub shapes: &'a Shapes,
    /// The node.
    pub node: NodeId,
    /// The opset the model's nodes were written for.
    pub model_opset: i64,
    /// The opset the train step emits.
    pub opset: i64,
    /// Whether the node's outputs reach the loss.
    pub on_loss_path: bool,
}
