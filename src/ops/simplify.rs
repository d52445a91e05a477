//! What the simplification passes ask an op: whether a node is a no-op at inference
//! ([`Op::no_op`], for `remove_identity`), the per-channel affine map a node computes at
//! inference ([`Op::channel_affine`], BatchNormalization), whether an output is never
//! negative ([`Op::non_negative`], so that a Relu of it is a no-op) and how to fold such a map into a
//! node's weights ([`Op::fold_output_affine`], Conv, ConvTranspose, Gemm), for
//! `fold_batch_norm`.
//!
//! [`Op::no_op`]: super::Op::no_op
//! [`Op::channel_affine`]: super::Op::channel_affine
//! [`Op::non_negative`]: super::Op::non_negative
//! [`Op::fold_output_affine`]: super::Op::fold_output_affine

use crate::error::Result;
use crate::ir::{DType, Node, Tensor};
use crate::onnx::proto::AttributeProto;

/// How a node is a no-op (see [`super::Op::no_op`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoOp {
    /// Output 0 is input 0 in every mode (Identity).
    Always,
    /// Output 0 is input 0 at inference only: the training compiler gives the node a
    /// training behaviour (Dropout), so a model kept for training keeps it.
    Inference,
}

/// What an op may read when deciding whether a node is a no-op.
pub struct NoOpCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Constant (initializer) inputs, by port; `None` for omitted or computed inputs.
    pub consts: &'a [Option<&'a Tensor>],
    /// Whether output `k` is read (by a node or as a graph output), by output port.
    pub used: &'a [bool],
    /// Whether input `p` is provably never negative ([`super::Op::non_negative`]), by port.
    pub non_negative: &'a [bool],
}

/// What an op may read when saying whether its output 0 is never negative (see
/// [`super::Op::non_negative`]).
pub struct SignCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Constant (initializer) inputs, by port; `None` for omitted or computed inputs.
    pub consts: &'a [Option<&'a Tensor>],
    /// Whether input `p` is provably never negative, by port (`false` for omitted inputs).
    pub non_negative: &'a [bool],
}

impl SignCx<'_> {
    /// Whether input `port` is present and never negative.
    pub fn input(&self, port: usize) -> bool {
        self.non_negative.get(port).copied().unwrap_or(false)
    }

    /// Whether every present input among `ports` is never negative.
    pub fn inputs(&self, ports: std::ops::Range<usize>) -> bool {
        ports
            .filter(|p| self.node.input(*p).is_some())
            .all(|p| self.input(p))
    }
}

/// A per-channel affine map `y[:, c, ..] = x[:, c, ..]·scale[c] + shift[c]` (channel axis 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelAffine {
    /// Per-channel factor.
    pub scale: Vec<f64>,
    /// Per-channel offset, added after the scaling.
    pub shift: Vec<f64>,
}

/// What an op may read when folding a [`ChannelAffine`] applied to its output 0 into its own
/// constant inputs (see [`super::Op::fold_output_affine`]).
pub struct FoldCx<'a> {
    /// The node whose output the map follows.
    pub node: &'a Node,
    /// Constant (initializer) inputs, by port; `None` for omitted or computed inputs.
    pub consts: &'a [Option<&'a Tensor>],
    /// The opset version of the default domain.
    pub opset: i64,
    /// The map to fold.
    pub affine: &'a ChannelAffine,
}

/// How an op absorbs a [`ChannelAffine`]: new values for its weight and bias inputs (the
/// bias input may have been omitted before), then attributes to set.
#[derive(Debug)]
pub struct AffineFold {
    /// `(port, value)` of the scaled weight.
    pub weight: (usize, Tensor),
    /// `(port, value)` of the new per-channel bias `old·scale + shift`.
    pub bias: (usize, Tensor),
    /// Attributes set afterwards (Gemm: `beta = 1`, its `beta·C` being in the new bias).
    pub attrs: Vec<AttributeProto>,
}

/// Which bias shapes a fold accepts, and how the old bias is read.
#[derive(Clone, Copy, Debug)]
pub enum BiasRule {
    /// Exactly one value per output channel (`[channels]`).
    PerChannel,
    /// Gemm's `C`: a scalar or a row (`[]`, `[1]`, `[1, 1]`, `[channels]`, `[1, channels]`),
    /// multiplied by `beta`.
    Broadcast {
        /// Gemm's `beta`.
        beta: f64,
    },
}

impl FoldCx<'_> {
    /// Output channels of the map.
    pub fn channels(&self) -> usize {
        self.affine.scale.len()
    }

    /// The constant float tensor at `port`, if there is one.
    pub fn float_const(&self, port: usize) -> Option<&Tensor> {
        self.consts
            .get(port)
            .copied()
            .flatten()
            .filter(|t| is_float(t.dtype()))
    }

    /// Folds the map into the weight at `w_port` (element `i` of which belongs to output channel
    /// `channel(i)`) and the bias at `b_port` (omitted: zero), stored in their element types
    /// (the weight's when the bias was omitted). `Ok(None)` when the weight or a wired bias
    /// is not a constant float or the bias shape does not fit `rule`.
    pub fn fold(
        &self,
        w_port: usize,
        b_port: usize,
        rule: BiasRule,
        channel: impl Fn(usize) -> usize,
    ) -> Result<Option<AffineFold>> {
        let (scale, shift) = (&self.affine.scale, &self.affine.shift);
        let channels = self.channels();
        let Some(w) = self.float_const(w_port) else {
            return Ok(None);
        };
        let bias = match self.node.input(b_port) {
            None => None,
            Some(_) => match self.float_const(b_port) {
                Some(t) => Some(t),
                None => return Ok(None),
            },
        };
        let Some(mut wv) = w.to_f64_vec() else {
            return Ok(None);
        };
        for (i, v) in wv.iter_mut().enumerate() {
            *v *= scale[channel(i)];
        }
        let old_bias: Vec<f64> = match bias {
            None => vec![0.0; channels],
            Some(b) => {
                let Some(bv) = b.to_f64_vec() else {
                    return Ok(None);
                };
                let (beta, fits) = match rule {
                    BiasRule::PerChannel => (1.0, b.shape() == [channels]),
                    BiasRule::Broadcast { beta } => {
                        let fits = match b.shape() {
                            [] | [1] | [1, 1] => true,
                            [n] | [1, n] => *n == channels,
                            _ => false,
                        };
                        (beta, fits)
                    }
                };
                if !fits {
                    return Ok(None);
                }
                (0..channels)
                    .map(|c| beta * bv[if bv.len() == 1 { 0 } else { c }])
                    .collect()
            }
        };
        let new_bias: Vec<f64> = (0..channels)
            .map(|c| old_bias[c] * scale[c] + shift[c])
            .collect();
        let weight = Tensor::from_f64_as(w.dtype(), w.shape().to_vec(), &wv)?;
        let bias_dtype = bias.map_or(w.dtype(), Tensor::dtype);
        let bias = Tensor::from_f64_as(bias_dtype, vec![channels], &new_bias)?;
        Ok(Some(AffineFold {
            weight: (w_port, weight),
            bias: (b_port, bias),
            attrs: Vec::new(),
        }))
    }
}

/// Whether `d` is a floating-point element type.
fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Test helpers: a BatchNormalization after a node, and the check that folding it changes
/// nothing numerically.
#[cfg(test)]
pub mod testing {
    use crate::ir::{Model, Tensor, ValueId};
    use crate::ops::channel::testing::{values, Net};
    use crate::runtime::BackendKind;

    /// An inference BatchNormalization of `c` channels after `x`, with distinct non-trivial
    /// scale, bias, mean and (positive) variance.
    pub fn bn(n: &mut Net, x: ValueId, c: usize) -> ValueId {
        let var: Vec<f32> = values(c, 7).iter().map(|v| v.abs() + 0.25).collect();
        let mut ins = vec![x];
        for (i, vals) in [values(c, 3), values(c, 4), values(c, 5), var]
            .into_iter()
            .enumerate()
        {
            let t = Tensor::from_f32(vec![c], &vals);
            ins.push(n.g.add_initializer(&format!("bn_{i}_{}", ins.len()), t));
        }
        let eps = crate::ir::graph::attr_float("epsilon", 1e-3);
        n.op("BatchNormalization", &ins, vec![eps])
    }

    /// Folds every BatchNormalization of `m` (asserting that one folded and none is left) and
    /// checks under tract that the result computes what `m` does.
    pub fn folds_exactly(m: &Model) {
        let mut folded = m.clone();
        assert!(crate::passes::fold_batch_norm(&mut folded).expect("fold"));
        crate::ir::verify(&folded.graph).expect("verify");
        let g = &folded.graph;
        assert!(g
            .node_ids()
            .all(|n| g.node(n).op_type != "BatchNormalization"));
        let cmp = crate::oracle::compare(m, &folded, &[BackendKind::Tract], 2, 5).expect("compare");
        assert!(cmp.max_rel_error < 1e-5, "error {}", cmp.max_rel_error);
    }
}
