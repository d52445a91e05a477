//! Operators: one file per op (or per family of ops that behave identically), each
//! implementing [`Op`]. An op declares how to infer its output facts, how to evaluate itself on
//! constants (for folding), and its cost. Defaults are conservative: an op that does not know
//! says nothing (shape inference falls back to the model's `value_info`), is never folded, and
//! costs zero MACs. Ops without an entry here are *opaque*: kept verbatim, never crash anything.
//!
//! Adding an op = one file + one line in [`REGISTRY`].

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Node, Shape, Tensor};
use crate::onnx::proto::attribute_proto::AttributeType;

mod activation;
mod batch_norm;
mod binary;
pub mod build;
mod cast;
pub mod channel;
mod concat;
mod constant;
mod constant_of_shape;
mod conv;
mod conv_transpose;
mod flatten;
mod gather;
mod gemm;
mod global_pool;
mod grad_util;
mod identity;
mod layer_norm;
pub mod linear;
mod lrn;
mod matmul;
mod modulo;
mod pad;
mod pool;
mod reduce;
mod reshape;
mod resize;
mod shape;
pub mod simplify;
mod slice;
mod softmax;
mod split;
mod squeeze;
pub mod training;
mod transpose;
mod unsqueeze;
pub mod util;
pub mod vjp;

pub use pad::zero_pads;
pub use slice::subsampling;

/// Everything an op may read when inferring or costing one node.
pub struct Cx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Facts of the inputs, by port; `None` for omitted optional inputs or unknown values.
    pub inputs: &'a [Option<&'a Fact>],
    /// The opset version of the default domain.
    pub opset: i64,
}

impl<'a> Cx<'a> {
    /// An error naming this node.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::node(&self.node.name, &self.node.op_type, msg)
    }

    /// The fact of input `port`. Errors only when the node does not wire that input; a wired
    /// input about which nothing is known gives an empty fact (ops then return `Ok(None)`).
    pub fn input(&self, port: usize) -> Result<&'a Fact> {
        match self.inputs.get(port).copied().flatten() {
            Some(f) => Ok(f),
            None if self.node.input(port).is_some() => Ok(&util::UNKNOWN_FACT),
            None => Err(self.err(format!("input {port} is missing"))),
        }
    }

    /// Whether input `port` is present.
    pub fn has_input(&self, port: usize) -> bool {
        self.inputs.get(port).copied().flatten().is_some()
    }

    /// The shape of input `port`, or `Unknown` (as `Ok(None)`) when the rank is not known.
    pub fn shape(&self, port: usize) -> Result<Option<&'a Shape>> {
        Ok(self.input(port)?.shape.as_ref())
    }

    /// The constant integer contents of input `port`, when known at compile time.
    pub fn ints(&self, port: usize) -> Option<Vec<i64>> {
        self.inputs
            .get(port)
            .copied()
            .flatten()?
            .value
            .as_ref()?
            .to_i64_vec()
    }

    /// The constant value of input `port`, when known.
    pub fn value(&self, port: usize) -> Option<&'a Tensor> {
        self.inputs.get(port).copied().flatten()?.value.as_ref()
    }

    /// Resolves a possibly negative axis against `rank`.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r.max(1) {
            return Err(self.err(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(if axis < 0 {
            (axis + r) as usize
        } else {
            axis as usize
        })
    }
}

/// What [`Op::check`] may read about one node before any analysis runs: its attributes, the
/// model's opset, and what the file itself says about its inputs (initializer contents,
/// declared element types and shapes).
pub struct CheckCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// The opset version of the default domain.
    pub opset: i64,
    /// Initializer contents of the inputs, by port (`None`: computed, a graph input, omitted).
    pub consts: &'a [Option<&'a Tensor>],
    /// Element types of the inputs, by port, where an initializer or a declaration gives one.
    pub dtypes: &'a [Option<DType>],
}

impl CheckCx<'_> {
    /// Integer attribute `name`: `Ok(None)` when absent, `Err` (the rule broken) when it is
    /// not an `INT`.
    pub fn int_attr(&self, name: &str) -> std::result::Result<Option<i64>, String> {
        let Some(a) = self.node.attr(name) else {
            return Ok(None);
        };
        attr_is(a, AttributeType::Int, a.i.is_some() || a.f.is_none())?;
        Ok(Some(a.i()))
    }

    /// Integer-list attribute `name`: `Ok(None)` when absent, `Err` when it is not `INTS`.
    pub fn ints_attr(&self, name: &str) -> std::result::Result<Option<&[i64]>, String> {
        let Some(a) = self.node.attr(name) else {
            return Ok(None);
        };
        attr_is(
            a,
            AttributeType::Ints,
            a.floats.is_empty() || !a.ints.is_empty(),
        )?;
        Ok(Some(a.ints.as_slice()))
    }

    /// The shape of input `port` when it is an initializer.
    pub fn const_shape(&self, port: usize) -> Option<&[usize]> {
        self.consts.get(port).copied().flatten().map(|t| t.shape())
    }
}

/// `Ok` when attribute `a` has type `want` (or no type and `untyped_ok`, what old files
/// write), else the rule it breaks.
fn attr_is(
    a: &crate::onnx::proto::AttributeProto,
    want: AttributeType,
    untyped_ok: bool,
) -> std::result::Result<(), String> {
    let ok = match a.r#type {
        Some(t) => t == want as i32,
        None => untyped_ok,
    };
    if ok {
        return Ok(());
    }
    let got = a
        .r#type
        .and_then(|t| AttributeType::try_from(t).ok())
        .map_or_else(|| "untyped".to_string(), |t| t.as_str_name().to_string());
    Err(format!(
        "attribute '{}' must be {}, not {got} (attribute type)",
        a.name(),
        want.as_str_name()
    ))
}

/// The cost of one node. Convention: `macs` counts multiply-accumulates of Conv,
/// ConvTranspose, Gemm and MatMul only (like torchvision/fvcore: ResNet-50 at 224² = 4.09 G);
/// `flops` = 2·MACs + one per output element of every other computing op (activations,
/// element-wise arithmetic, normalisation, pooling windows). Symbolic dims count as 1. Counts
/// saturate at `u64::MAX` (too large to count) instead of wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Multiply-accumulates.
    pub macs: u64,
    /// Floating-point operations.
    pub flops: u64,
}

/// A weight layer at other widths (see [`Op::resized`]).
#[derive(Clone, Debug)]
pub struct Resized {
    /// The node's attributes at these widths.
    pub attrs: Vec<crate::onnx::proto::AttributeProto>,
    /// The static shape of each present input, in port order.
    pub inputs: Vec<Vec<usize>>,
    /// Whether input and output widths move together (a depthwise convolution, or a grouped
    /// one losing whole groups): only `cin == cout` is valid.
    pub tied: bool,
    /// Widths the layer takes are multiples of this (untied: a grouped convolution's group
    /// count; tied: its channels a group).
    pub multiple: usize,
}

/// A re-initialisation rule for one weight input (see [`Op::fresh_init`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FreshInit {
    /// Kaiming-normal, `N(0, 2 / fan_in)`. `dense` marks fully connected weights (Gemm,
    /// MatMul): when the model's last Kaiming weight is dense it is the classifier, which no
    /// ReLU follows, and gets `N(0, 1 / fan_in)` instead.
    Kaiming {
        /// Inputs feeding one output element.
        fan_in: usize,
        /// A fully connected weight.
        dense: bool,
    },
    /// Every element set to this value.
    Fill(f32),
}

/// What [`Op::upgrade`] changes in one node.
#[derive(Clone, Debug, Default)]
pub struct Upgrade {
    /// Attributes that became inputs: `(attribute, input port, value)`.
    pub to_inputs: Vec<(&'static str, usize, Tensor)>,
    /// Attributes removed without replacement.
    pub drop: Vec<&'static str>,
    /// Attributes set (an old default made explicit where the default changed).
    pub set: Vec<crate::onnx::proto::AttributeProto>,
}

impl Upgrade {
    /// Moves integer-list attribute `attr`, when present, to input `port` (int64, 1-D).
    pub fn ints_to_input(mut self, node: &Node, attr: &'static str, port: usize) -> Upgrade {
        if let Some(v) = node.attr_ints(attr) {
            self.to_inputs
                .push((attr, port, Tensor::from_i64(vec![v.len()], v)));
        }
        self
    }

    /// Moves float attribute `attr`, when present, to input `port` (a float32 scalar).
    pub fn float_to_input(mut self, node: &Node, attr: &'static str, port: usize) -> Upgrade {
        if let Some(v) = node.attr_f(attr) {
            self.to_inputs
                .push((attr, port, Tensor::from_f32(vec![], &[v])));
        }
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.to_inputs.is_empty() && self.drop.is_empty() && self.set.is_empty()
    }
}

/// One operator's behaviour. All methods have conservative defaults.
pub trait Op: Sync {
    /// The ONNX op type (default domain).
    fn op_type(&self) -> &'static str;

    /// How many inputs the ONNX spec allows at the model's default-domain `opset`,
    /// `(min, max)` (`usize::MAX`: variadic); trailing omitted optional inputs count. The
    /// verifier refuses a node outside it. Default: `None`, not checked.
    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        None
    }

    /// The op's own spec rules on one node, checked by the verifier before anything else
    /// reads the node (attribute types and values, input types the spec fixes, weights that
    /// must agree): one message per broken rule, naming the rule. Default: none.
    fn check(&self, _cx: &CheckCx) -> Vec<String> {
        Vec::new()
    }

    /// Output facts from input facts. `Ok(None)`: this op cannot say (the analysis then uses
    /// the model's declared types). `Err`: the inputs are inconsistent (names the node).
    fn infer(&self, _cx: &Cx) -> Result<Option<Vec<Fact>>> {
        Ok(None)
    }

    /// Computes the outputs from constant inputs (`None`: this op does not fold).
    fn eval(
        &self,
        _node: &Node,
        _inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        None
    }

    /// Cost of the node given its input and output facts.
    fn cost(&self, _cx: &Cx, _outputs: &[Option<&Fact>]) -> Cost {
        Cost::default()
    }

    /// How channels flow through the node (see [`channel::Link`]). Default: every tracked
    /// input slot is blocked: an op that does not declare its channels is a pruning barrier.
    fn channel_links(&self, cx: &channel::LinkCx) -> Vec<channel::Link> {
        cx.block_all(&format!("{} has no channel rule", self.op_type()))
    }

    /// The constant value of one output channel given what is constant at the inputs (see
    /// [`channel::ConstCx`]), or `None` when the channel is not provably constant. Default: `None`.
    fn channel_constant(&self, _cx: &channel::ConstCx) -> Option<f64> {
        None
    }

    /// For a consumer: the exact contribution of removed constant channels, to be added to its
    /// output. Default: `None` (the op cannot compensate; such channels are not removed as dead).
    fn channel_compensation(
        &self,
        _cx: &channel::CompensateCx,
    ) -> Result<Option<channel::Compensation>> {
        Ok(None)
    }

    /// Rewrites attributes and constant inputs (reshape targets, split sizes, ...) after
    /// channels were removed. Default: nothing to change.
    fn rewrite_channels(&self, _cx: &channel::RewriteCx) -> Result<channel::Rewrite> {
        Ok(channel::Rewrite::default())
    }

    /// How a node written for opset `from` is written for opset `to` (`from < to`) when the
    /// op's signature changed in between (attributes that became inputs, defaults that
    /// changed). Default: the op reads the same at every opset lopper handles. `Err`: the
    /// node uses a form that has no equivalent at `to`.
    fn upgrade(&self, _node: &Node, _from: i64, _to: i64) -> Result<Upgrade> {
        Ok(Upgrade::default())
    }

    /// Whether input `port` is a weight operand (a trainable parameter when it is a float
    /// initializer). Default: no.
    fn weight_input(&self, _port: usize) -> bool {
        false
    }

    /// How `lopper train --from-scratch` re-initialises this node's inputs: `(port, rule)`
    /// pairs, in the order the values are drawn. `weights[p]` is the shape of input `p` when it
    /// is a float32 initializer (`None` otherwise); only such inputs may be named. Default: no
    /// opinion (the inputs keep their values).
    fn fresh_init(&self, _node: &Node, _weights: &[Option<&[usize]>]) -> Vec<(usize, FreshInit)> {
        Vec::new()
    }

    // What the simplification passes ask (see [`simplify`]).

    /// Whether this node is a no-op: output 0 is input 0 (always, or at inference only) and
    /// nothing reads its other outputs, so `remove_identity` may bypass it. Default: `None`.
    fn no_op(&self, _cx: &simplify::NoOpCx) -> Option<simplify::NoOp> {
        None
    }

    /// Whether output 0 is never negative, given which inputs are ([`simplify::SignCx`]):
    /// Relu's output, or a data movement (Slice, Pad with a non-negative value, pooling,
    /// Concat, reshapes) of never-negative inputs. `remove_identity` bypasses a Relu of such
    /// a value. Default: not known to be.
    fn non_negative(&self, _cx: &simplify::SignCx) -> bool {
        false
    }

    /// The per-channel affine map (channel axis 1, input 0 → output 0) this node computes at
    /// inference, given its constant inputs by port; `None` when it is not one (training mode,
    /// computed parameters). `fold_batch_norm` folds it into the producer. Default: `None`.
    fn channel_affine(
        &self,
        _node: &Node,
        _consts: &[Option<&Tensor>],
    ) -> Option<simplify::ChannelAffine> {
        None
    }

    /// Folds a per-channel affine map applied to output 0 into this node's constant weight and
    /// bias (see [`simplify::FoldCx::fold`]). `Ok(None)`: the node cannot absorb it (computed
    /// weights, a layout that does not fit). Default: `Ok(None)`.
    fn fold_output_affine(&self, _cx: &simplify::FoldCx) -> Result<Option<simplify::AffineFold>> {
        Ok(None)
    }

    /// Whether output 0 is the broadcast sum of the inputs (`Add`, `Sum`): a residual merge,
    /// whose branches depth pruning may drop ([`crate::passes::collapse_branches`]). Default:
    /// not.
    fn is_sum(&self) -> bool {
        false
    }

    /// The input holding a per-channel output scale (BatchNormalization's γ), which network
    /// slimming penalises and the `bn-scale` criterion ranks by. Default: none.
    fn channel_scale_input(&self) -> Option<usize> {
        None
    }

    /// This weight layer alone at other widths, for per-layer latency tables: given the
    /// static shapes of its inputs (`None` where absent), the attributes and input shapes of
    /// the same node reading `cin` and writing `cout` channels. `None`: not a timed layer, or
    /// widths it cannot take. Default: not timed.
    fn resized(
        &self,
        _node: &Node,
        _inputs: &[Option<&[usize]>],
        _cin: usize,
        _cout: usize,
    ) -> Option<Resized> {
        None
    }

    /// `(out, in)` channels of a weight layer whose weight (input 1) has shape `weight`, for
    /// per-layer reports; `None` when the op is not a weight layer or the shape does not fit.
    /// Default: not a weight layer.
    fn layer_channels(&self, _node: &Node, _weight: &[usize]) -> Option<(usize, usize)> {
        None
    }

    /// Backward rule (vector-Jacobian product): given the gradient of each output (`None`:
    /// the output does not reach the loss), emits nodes computing the gradient of every input
    /// `p` with `needs[p]` and returns them by port. Default: not differentiable (an error
    /// naming the node).
    fn vjp(
        &self,
        cx: &mut vjp::VjpCx,
        _grads: &[Option<crate::ir::ValueId>],
        _needs: &[bool],
    ) -> Result<Vec<Option<crate::ir::ValueId>>> {
        Err(cx.err("has no backward rule, so the loss cannot be differentiated through it"))
    }

    /// This node as a linear map of its data input by its weight (port 1, of shape
    /// `cx.weight`): channel axes, weight layout, convolution window ([`linear`]); `None`
    /// when it is not one or the shapes do not fit. Default: not a linear layer.
    fn linear(&self, _cx: &linear::LinearCx) -> Option<linear::Linear> {
        None
    }

    // Training: what the train-step compiler and `--from-scratch` ask (see [`training`]).

    /// This node's weight and bias when it is a weight layer: re-initialisation zeroes the
    /// biases added to its output, group lasso penalises its filters. Default: not one.
    fn layer(&self, _node: &Node) -> Option<training::Layer> {
        None
    }

    /// How this node runs in training mode with batch statistics (running statistics become
    /// carried tensors of the train step). `opset`: the step's. Default: it has no running
    /// statistics (`Ok(None)`); `Err`: it has, but this node cannot be trained.
    fn training_mode(&self, _node: &Node, _opset: i64) -> Result<Option<training::TrainingMode>> {
        Ok(None)
    }

    /// Rewrites a random node for training so that its randomness is noise the host feeds
    /// (returned); `Ok(None)`: the node stays as it is. Default: not random.
    fn lower_random(&self, _cx: &mut training::NoiseCx) -> Result<Option<training::Noise>> {
        Ok(None)
    }
}

/// Every op lopper knows, by op type.
pub static REGISTRY: &[&dyn Op] = &[
    &activation::RELU,
    &activation::LEAKY_RELU,
    &activation::PRELU,
    &activation::CLIP,
    &activation::SIGMOID,
    &activation::HARD_SIGMOID,
    &activation::HARD_SWISH,
    &activation::TANH,
    &activation::GELU,
    &activation::ELU,
    &activation::SELU,
    &activation::CELU,
    &activation::SOFTPLUS,
    &activation::SOFTSIGN,
    &activation::NEG,
    &activation::ABS,
    &activation::SQRT,
    &activation::RECIPROCAL,
    &activation::EXP,
    &activation::LOG,
    &activation::ERF,
    &activation::FLOOR,
    &activation::CEIL,
    &activation::NOT,
    &batch_norm::BATCH_NORM,
    &batch_norm::INSTANCE_NORM,
    &binary::ADD,
    &binary::SUB,
    &binary::MUL,
    &binary::DIV,
    &binary::POW,
    &binary::SUM,
    &binary::MAX,
    &binary::MIN,
    &binary::MEAN,
    &binary::EQUAL,
    &binary::LESS,
    &binary::GREATER,
    &binary::WHERE,
    &cast::CAST,
    &concat::CONCAT,
    &constant::CONSTANT,
    &constant_of_shape::CONSTANT_OF_SHAPE,
    &conv::CONV,
    &conv_transpose::CONV_TRANSPOSE,
    &flatten::FLATTEN,
    &gather::GATHER,
    &gemm::GEMM,
    &global_pool::GLOBAL_AVERAGE_POOL,
    &global_pool::GLOBAL_MAX_POOL,
    &identity::IDENTITY,
    &identity::DROPOUT,
    &layer_norm::LAYER_NORM,
    &matmul::MATMUL,
    &pad::PAD,
    &pool::MAX_POOL,
    &pool::AVERAGE_POOL,
    &reduce::REDUCE_MEAN,
    &reduce::REDUCE_SUM,
    &reduce::REDUCE_MAX,
    &reduce::REDUCE_MIN,
    &reduce::REDUCE_PROD,
    &reduce::REDUCE_L2,
    &reduce::REDUCE_L1,
    &reduce::REDUCE_SUM_SQUARE,
    &reduce::REDUCE_LOG_SUM_EXP,
    &reshape::RESHAPE,
    &resize::RESIZE,
    &resize::UPSAMPLE,
    &shape::SHAPE,
    &slice::SLICE,
    &lrn::LRN,
    &modulo::MOD,
    &softmax::SOFTMAX,
    &softmax::LOG_SOFTMAX,
    &split::SPLIT,
    &squeeze::SQUEEZE,
    &transpose::TRANSPOSE,
    &unsqueeze::UNSQUEEZE,
];

/// The port of `node`'s per-channel output scale, when its op has one
/// ([`Op::channel_scale_input`]).
pub fn channel_scale_input(node: &Node) -> Option<usize> {
    lookup(&node.domain, &node.op_type)?.channel_scale_input()
}

/// The per-channel affine map node `n` of `g` computes at inference from its constant
/// inputs ([`Op::channel_affine`]), when its op has one.
pub fn channel_affine_of(
    g: &crate::ir::Graph,
    n: crate::ir::NodeId,
) -> Option<simplify::ChannelAffine> {
    let node = g.node(n);
    let consts = g.const_inputs(node);
    lookup(&node.domain, &node.op_type)?.channel_affine(node, &consts)
}

/// The op implementing `(domain, op_type)`, if lopper knows it.
pub fn lookup(domain: &str, op_type: &str) -> Option<&'static dyn Op> {
    if !crate::ir::is_default_domain(domain) {
        return None;
    }
    REGISTRY.iter().copied().find(|op| op.op_type() == op_type)
}

/// Product of known dims, with symbolic/unknown dims counted as 1 (the cost convention);
/// saturates at `u64::MAX` (a count too large to represent, never a wrapped small one).
pub fn numel_or_one(shape: &[Dim]) -> u64 {
    shape
        .iter()
        .map(|d| d.known().unwrap_or(1) as u64)
        .fold(1u64, u64::saturating_mul)
}
