//! Lowers a train step's convolutions to ONNX Runtime's channel-blocked CPU kernels (the
//! `com.microsoft.nchwc` contrib ops that its own NCHWc layout rewrite emits for inference).
//!
//! ONNX Runtime applies that rewrite only to convolutions whose weights are constants, so a
//! train step, whose weights are inputs, ran every convolution through the plain im2col
//! kernel. Here each qualifying float32 2-D `Conv` (ungrouped with input and output channels
//! multiples of the block; depthwise with a multiple of the block; or reading an image's 1 or
//! 3 channels) becomes, in the ungrouped form,
//!
//! ```text
//! X ─ ReorderInput ─┐
//! W ─ Reshape [M/b, b, C/b, b, kh, kw] ─ Transpose (0, 2, 4, 5, 3, 1) ─ Reshape ─ nchwc.Conv ─ ReorderOutput ─ Y
//! ```
//!
//! the weight reordered in the graph each step (it is small) into the kernel's filter layout
//! `[M/b][C/b][kh][kw][b_in][b_out]` (`[M/b][C/group][kh][kw][b_out]` for the depthwise and
//! image-input forms, the latter reading X as it is). That covers the forward convolutions
//! and the unit-stride input gradients (themselves convolutions, `ops/conv.rs`): the ResNet-20
//! step at batch 128 runs 15% faster on 2 threads. The block size `b` belongs to the CPU (8
//! with AVX2, 16 with AVX-512), so a lowered step is for the machine it was compiled on;
//! [`crate::runtime::ort::channel_block`] finds it by running [`probe_model`] through ONNX
//! Runtime. Not lowered: other grouped convolutions, widths that are not multiples of the
//! block (padding them measured slower than the plain kernel), 1-D and 3-D convolutions,
//! `ConvTranspose`. Not for the CUDA provider, which has no such kernels.

use crate::analysis::{infer_shapes, Shapes};
use crate::error::{Error, Result};
use crate::ir::{is_default_domain, DType, Graph, Model, NodeId, ValueId};
use crate::onnx::proto::OperatorSetIdProto;
use crate::ops::build::{Build, Builder};

use super::emit::add_input;

/// The contrib-op domain of ONNX Runtime's channel-blocked kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";

/// How a convolution is lowered: which input layout the blocked kernel reads and how the
/// filter is reordered (ONNX Runtime's own rewrite uses these three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Ungrouped, input and output channels multiples of the block: blocked X, filter
    /// `[M/b][C/b][kh][kw][b_in][b_out]`.
    Full,
    /// Depthwise (`group = C = M`, a multiple of the block): blocked X, filter
    /// `[C/b][1][kh][kw][b]`.
    Depthwise,
    /// Ungrouped with fewer input channels than the block and not a multiple of 4 (an image's 1
    /// or 3, which the blocked input reorder refuses): plain NCHW X, filter `[M/b][C][kh][kw][b]`.
    PlainInput,
}

/// Rewrites every qualifying `Conv` of `m` to the blocked kernels with block `block`; returns
/// how many were rewritten. The model needs static shapes on the convolutions (a train step
/// has them).
pub fn block_convolutions(m: &mut Model, block: usize) -> Result<usize> {
    if block < 2 {
        return Err(Error::Usage(format!(
            "a channel block of {block} is not a blocked layout"
        )));
    }
    let shapes = infer_shapes(m)?;
    let opset = m.opset();
    let convs: Vec<(NodeId, Form, [usize; 4])> = m
        .graph
        .node_ids()
        .filter_map(|id| qualifies(&m.graph, &shapes, id, block).map(|(f, w)| (id, f, w)))
        .collect();
    for &(id, form, ws) in &convs {
        lower(&mut m.graph, opset, id, form, ws, block);
    }
    if !convs.is_empty() {
        m.import_domain(DOMAIN);
    }
    Ok(convs.len())
}

/// The form and W's shape when node `id` is a float32 2-D `Conv` that one of the [`Form`]s
/// covers.
fn qualifies(g: &Graph, shapes: &Shapes, id: NodeId, block: usize) -> Option<(Form, [usize; 4])> {
    let n = g.node(id);
    if n.op_type != "Conv"
        || !is_default_domain(&n.domain)
        || n.input(0).is_none()
        || n.output(0).is_none()
    {
        return None;
    }
    // W alone decides: ONNX makes X float32 of rank 4 with `ws[1]·group` channels when W is
    // float32 of rank 4, and the backward's dY often has no static shape (a `Reshape` to a
    // shape computed at run time upstream).
    let w = n.input(1)?;
    let fact = shapes.get(w)?;
    if fact.dtype != Some(DType::F32) {
        return None;
    }
    let known: Vec<usize> = fact
        .shape
        .as_ref()?
        .iter()
        .map(|d| d.known())
        .collect::<Option<_>>()?;
    let ws: [usize; 4] = known.try_into().ok()?;
    let group = usize::try_from(n.attr_i("group").unwrap_or(1)).ok()?;
    let (c, m) = (ws[1] * group, ws[0]);
    if m % block != 0 {
        return None;
    }
    let form = if group == 1 && c % block == 0 {
        Form::Full
    } else if group > 1 && group == c && group == m && ws[1] == 1 && c % block == 0 {
        Form::Depthwise
    } else if group == 1 && c < block && c % 4 != 0 {
        Form::PlainInput
    } else {
        return None;
    };
    Some((form, ws))
}

/// Rewrites `Conv` node `id` (weight shape `ws`) in place into `form`.
fn lower(g: &mut Graph, opset: i64, id: NodeId, form: Form, ws: [usize; 4], block: usize) {
    let node = g.node(id);
    let (x, w, y) = (node.input(0), node.input(1), node.output(0));
    let (Some(x), Some(w), Some(y)) = (x, w, y) else {
        return;
    };
    let prefix = format!("{}/nchwc", node.name);
    let [m, i, kh, kw] = ws;
    let mut bld = Builder::new(g, prefix.clone(), opset);
    let wb = match form {
        Form::Full => {
            let w6 = bld.reshape(w, &[m / block, block, i / block, block, kh, kw]);
            let w6 = bld.transpose(w6, &[0, 2, 4, 5, 3, 1]);
            bld.reshape(w6, &ws)
        }
        Form::Depthwise | Form::PlainInput => {
            let w5 = bld.reshape(w, &[m / block, block, i, kh, kw]);
            let w5 = bld.transpose(w5, &[0, 2, 3, 4, 1]);
            bld.reshape(w5, &ws)
        }
    };
    if form != Form::PlainInput {
        let xb = contrib(
            g,
            &format!("{prefix}/ReorderInput"),
            "ReorderInput",
            x,
            vec![],
        );
        g.set_input(id, 0, Some(xb));
    }
    g.set_input(id, 1, Some(wb));
    g.node_mut(id).domain = DOMAIN.into();
    // The blocked output, then the plain one under Y's own value (its readers stay).
    let yb = g.add_value(&format!("{prefix}/blocked"));
    g.set_output(id, 0, yb);
    let channels = crate::ir::graph::attr_int("channels", m as i64);
    let name = format!("{prefix}/ReorderOutput");
    let stale = contrib(g, &name, "ReorderOutput", yb, vec![channels]);
    if let Some((reorder, _)) = g.value(stale).producer {
        g.set_output(reorder, 0, y);
        g.remove_value(stale);
    }
}

/// A one-input node of the blocked domain; returns its output.
fn contrib(
    g: &mut Graph,
    name: &str,
    op_type: &str,
    input: ValueId,
    attrs: Vec<crate::onnx::proto::AttributeProto>,
) -> ValueId {
    let id = g.add_node(
        name,
        op_type,
        &[Some(input)],
        &[&format!("{name}_out")],
        attrs,
    );
    g.node_mut(id).domain = DOMAIN.into();
    g.node(id).output(0).expect("a new node has its output")
}

/// The probe's convolutions, one per [`Form`]: name, X's shape, W's shape, group.
const PROBES: [(&str, [usize; 4], [usize; 4], i64); 3] = [
    ("full", [1, 16, 6, 6], [16, 16, 3, 3], 1),
    ("depthwise", [1, 16, 6, 6], [16, 1, 3, 3], 16),
    ("image", [1, 3, 6, 6], [16, 3, 3, 3], 1),
];

/// A model that computes each [`Form`]'s probe convolution (3×3, pads 1, of inputs
/// `{name}.x` by `{name}.w`) twice: plainly as `{name}.plain`, and lowered with `block` as
/// `{name}.blocked`, the outputs in that order. Each pair agrees (up to rounding) on random
/// inputs exactly when `block` is the runtime's block size and the runtime reads the layouts
/// as lowered (a wrong layout mixes channels).
pub fn probe_model(block: usize) -> Result<Model> {
    let mut g = Graph::new();
    let pads = crate::ir::graph::attr_ints("pads", &[1, 1, 1, 1]);
    let mut lowered = Vec::new();
    for (name, xs, ws, group) in PROBES {
        let x = add_input(&mut g, &format!("{name}.x"), DType::F32, &xs);
        let w = add_input(&mut g, &format!("{name}.w"), DType::F32, &ws);
        let attrs = vec![pads.clone(), crate::ir::graph::attr_int("group", group)];
        for kind in ["plain", "blocked"] {
            let out = format!("{name}.{kind}");
            let id = g.add_node(&out, "Conv", &[Some(x), Some(w)], &[&out], attrs.clone());
            let y = g.node(id).output(0).expect("a new node has its output");
            super::emit::declare(&mut g, y, DType::F32, &[1, ws[0], xs[2], xs[3]]);
            g.outputs.push(y);
            if kind == "blocked" {
                lowered.push(id);
            }
        }
    }
    let mut m = Model {
        graph: g,
        rest: crate::onnx::proto::ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            ..Default::default()
        },
    };
    let shapes = infer_shapes(&m)?;
    let opset = m.opset();
    for id in lowered {
        let Some((form, ws)) = qualifies(&m.graph, &shapes, id, block) else {
            return Err(Error::Usage(format!(
                "a channel block of {block} does not fit the probe's convolution '{}'",
                m.graph.node(id).name
            )));
        };
        lower(&mut m.graph, opset, id, form, ws, block);
    }
    m.import_domain(DOMAIN);
    crate::ir::verify(&m.graph)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_lowered_and_keeps_its_output() {
        let m = probe_model(8).unwrap();
        let g = &m.graph;
        let count = |domain: &str, op: &str| {
            g.node_ids()
                .filter(|&id| g.node(id).domain == domain && g.node(id).op_type == op)
                .count()
        };
        assert_eq!(count(DOMAIN, "Conv"), 3);
        assert_eq!(count("", "Conv"), 3);
        // The image-input form reads plain NCHW: two reorders in, three out.
        assert_eq!(count(DOMAIN, "ReorderInput"), 2);
        assert_eq!(count(DOMAIN, "ReorderOutput"), 3);
        for (name, ..) in PROBES {
            let y = g.value_by_name(&format!("{name}.blocked")).unwrap();
            let (p, _) = g.value(y).producer.unwrap();
            assert_eq!(g.node(p).op_type, "ReorderOutput", "{name}");
        }
        // 16 channels are not a whole number of blocks of 5.
        assert!(probe_model(5).is_err());
    }
}
