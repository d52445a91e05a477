//! Linear layers: nodes whose output 0 is a linear map of their data input (port 0) by a
//! constant weight (port 1), plus a bias for some. [`super::Op::linear`] describes such a
//! node: where its channels are, how its weight is laid out and, for a convolution, its
//! window. Recovery stages that refit weights in closed form (compensation) and that relate
//! a pruned node's channels to the original's read it. It evaluates nothing and does not
//! check that the weight is constant: the caller gives the weight's shape.

use crate::ir::Node;

pub use super::util::Window;

/// What [`super::Op::linear`] may read.
pub struct LinearCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// The weight's (port 1) shape.
    pub weight: &'a [usize],
    /// Rank of the data input (port 0), when known.
    pub input_rank: Option<usize>,
    /// Rank of output 0, when known.
    pub output_rank: Option<usize>,
}

/// A node as a linear map of its data input.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Channel axis of the data input (port 0).
    pub input_axis: usize,
    /// Channel axis of output 0.
    pub output_axis: usize,
    /// Input channels (all groups).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// The port a bias goes in (one value per output channel, or one broadcast), present or
    /// not; `None` when the op has no bias (or ignores it, Gemm with `beta` 0).
    pub bias_port: Option<usize>,
    /// How the weight maps the input.
    pub form: Form,
}

/// How a [`Linear`]'s weight maps its input.
#[derive(Clone, Debug, PartialEq)]
pub enum Form {
    /// A convolution with weight `[out, in/group, k…]`: output channel `o` at position `p`
    /// is `Σ W[o, c, t]·x[c, p·stride + t·dilation − pad]` over the group's channels `c` and
    /// the taps `t`, plus the bias.
    Conv {
        /// Channel groups.
        group: usize,
        /// Kernel, strides, dilations and pads per spatial axis (the weight's axes 2…).
        window: Window,
    },
    /// A matrix product over the channel axis: `y = alpha·x·W + beta·bias`, with `W` stored
    /// `[in, out]`, or `[out, in]` when `out_major`.
    Dense {
        /// The weight is stored `[out, in]`.
        out_major: bool,
        /// The input is stored `[in, rows]` (channels first) rather than `[rows, in]`.
        channels_first: bool,
        /// Factor of the product.
        alpha: f64,
        /// Factor of the bias.
        beta: f64,
    },
}

/// Node `n` of `model` as a linear layer ([`super::Op::linear`]) whose weight is the constant
/// at port 1, with the ranks `shapes` knows; `None` for anything else.
pub fn of_node(
    model: &crate::ir::Model,
    shapes: &crate::analysis::Shapes,
    n: crate::ir::NodeId,
) -> Option<Linear> {
    let g = &model.graph;
    let node = g.node(n);
    let op = super::lookup(&node.domain, &node.op_type)?;
    let rank = |v: Option<crate::ir::ValueId>| shapes.get(v?)?.rank();
    op.linear(&LinearCx {
        node,
        weight: g.init(node.input(1)?)?.shape(),
        input_rank: rank(node.input(0)),
        output_rank: rank(node.output(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::{attr_float, attr_int, attr_ints};
    use crate::ir::Graph;

    /// `op`'s [`Linear`] for a node with `attrs` and a weight of shape `weight`.
    fn describe(
        op: &str,
        attrs: Vec<crate::onnx::proto::AttributeProto>,
        weight: &[usize],
        ranks: (usize, usize),
    ) -> Option<Linear> {
        let mut g = Graph::new();
        let n = g.add_node("n", op, &[], &["y"], attrs);
        crate::ops::lookup("", op)?.linear(&LinearCx {
            node: g.node(n),
            weight,
            input_rank: Some(ranks.0),
            output_rank: Some(ranks.1),
        })
    }

    #[test]
    fn a_grouped_strided_conv_gives_its_channels_and_window() {
        let attrs = vec![
            attr_int("group", 2),
            attr_ints("strides", &[2, 1]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        let l = describe("Conv", attrs, &[8, 3, 3, 3], (4, 4)).unwrap();
        assert_eq!((l.in_channels, l.out_channels), (6, 8));
        assert_eq!((l.input_axis, l.output_axis, l.bias_port), (1, 1, Some(2)));
        let Form::Conv { group, window } = l.form else {
            panic!("{:?}", l.form)
        };
        assert_eq!(group, 2);
        assert_eq!(window.kernel, [3, 3]);
        assert_eq!(window.strides, [2, 1]);
        assert_eq!(window.dilations, [1, 1]);
        assert_eq!(window.pads, [1, 1, 1, 1]);
        // Attributes that do not fit the kernel: not described.
        let bad = vec![attr_ints("strides", &[2])];
        assert!(describe("Conv", bad, &[8, 3, 3, 3], (4, 4)).is_none());
    }

    #[test]
    fn gemm_and_matmul_give_their_weight_layout() {
        let attrs = vec![
            attr_int("transB", 1),
            attr_float("alpha", 0.5),
            attr_float("beta", 0.0),
        ];
        let l = describe("Gemm", attrs, &[10, 64], (2, 2)).unwrap();
        assert_eq!((l.in_channels, l.out_channels), (64, 10));
        assert_eq!(l.bias_port, None, "beta 0 ignores C");
        assert_eq!(
            l.form,
            Form::Dense {
                out_major: true,
                channels_first: false,
                alpha: 0.5,
                beta: 0.0
            }
        );
        let t = describe("Gemm", vec![attr_int("transA", 1)], &[64, 10], (2, 2)).unwrap();
        assert_eq!((t.input_axis, t.bias_port), (0, Some(2)));
        let m = describe("MatMul", vec![], &[64, 10], (3, 3)).unwrap();
        assert_eq!((m.input_axis, m.output_axis), (2, 2));
        assert_eq!((m.in_channels, m.out_channels, m.bias_port), (64, 10, None));
        assert!(describe("MatMul", vec![], &[2, 64, 10], (3, 3)).is_none());
        assert!(describe("Relu", vec![], &[64, 10], (2, 2)).is_none());
    }
}
