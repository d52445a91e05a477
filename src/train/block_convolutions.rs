//! Lowers a train step's convolutions to ONNX Runtime's channel-blocked CPU kernels (the
//! `com.microsoft.nchwc` contrib ops that its own NCHWc layout rewrite emits for inference).
//!
//! ONNX Runtime applies that rewrite only to convolutions whose weights are constants, so a
//! train step, whose weights are inputs, ran every convolution through the plain im2col
//! kernel. Here each qualifying float32 `Conv` (2-D, ungrouped, input and output channels
//! multiples of the block) becomes
//!
//! ```text
//! X ─ ReorderInput ─┐
//! W ─ Reshape [M/b, b, C/b, b, kh, kw] ─ Transpose (0, 2, 4, 5, 3, 1) ─ Reshape ─ nchwc.Conv ─ ReorderOutput ─ Y
//! ```
//!
//! the weight reordered in the graph each step (it is small) into the kernel's filter layout
//! `[M/b][C/b][kh][kw][b_in][b_out]`. That covers the forward convolutions and the unit-stride
//! input gradients (themselves convolutions, `ops/conv.rs`): the ResNet-20 step at batch 128
//! runs 15% faster on 2 threads. The block size `b` belongs to the CPU (8 with AVX2, 16 with
//! AVX-512), so a lowered step is for the machine it was compiled on;
//! [`crate::runtime::ort::channel_block`] finds it by running [`probe_model`] through ONNX
//! Runtime. Not lowered: grouped and depthwise convolutions, widths that are not multiples of
//! the block (the first layer's 3 input channels), 1-D and 3-D convolutions, `ConvTranspose`.
//! Not for the CUDA provider, which has no such kernels.

use crate::analysis::{infer_shapes, Shapes};
use crate::error::{Error, Result};
use crate::ir::{is_default_domain, DType, Graph, Model, NodeId, Tensor, ValueId};
use crate::onnx::proto::OperatorSetIdProto;
use crate::ops::build::{Build, Builder};

use super::emit::{add_input, dtype_of};

/// The contrib-op domain of ONNX Runtime's channel-blocked kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";

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
    let convs: Vec<(NodeId, [usize; 4], [usize; 4])> = m
        .graph
        .node_ids()
        .filter_map(|id| qualifies(&m.graph, &shapes, id, block).map(|(x, w)| (id, x, w)))
        .collect();
    for &(id, _, ws) in &convs {
        lower(&mut m.graph, opset, id, ws, block);
    }
    if !convs.is_empty() && !m.rest.opset_import.iter().any(|o| o.domain() == DOMAIN) {
        m.rest.opset_import.push(OperatorSetIdProto {
            domain: Some(DOMAIN.into()),
            version: Some(1),
        });
    }
    Ok(convs.len())
}

/// X's and W's shapes when node `id` is a float32 2-D ungrouped `Conv` whose channel counts
/// are multiples of `block`.
fn qualifies(
    g: &Graph,
    shapes: &Shapes,
    id: NodeId,
    block: usize,
) -> Option<([usize; 4], [usize; 4])> {
    let n = g.node(id);
    if n.op_type != "Conv" || !is_default_domain(&n.domain) || n.attr_i("group").unwrap_or(1) != 1 {
        return None;
    }
    let (x, w) = (n.input(0)?, n.input(1)?);
    let shape = |v: ValueId| -> Option<[usize; 4]> {
        let dims = shapes.get(v)?.shape.as_ref()?;
        let known: Vec<usize> = dims.iter().map(|d| d.known()).collect::<Option<_>>()?;
        known.try_into().ok()
    };
    let (xs, ws) = (shape(x)?, shape(w)?);
    let fits = ws[0] % block == 0 && ws[1] % block == 0 && xs[1] == ws[1];
    let float = dtype_of(shapes, x) == DType::F32 && dtype_of(shapes, w) == DType::F32;
    (fits && float && n.output(0).is_some()).then_some((xs, ws))
}

/// Rewrites `Conv` node `id` (weight shape `ws`) in place into the blocked form.
fn lower(g: &mut Graph, opset: i64, id: NodeId, ws: [usize; 4], block: usize) {
    let node = g.node(id);
    let (x, w, y) = (node.input(0), node.input(1), node.output(0));
    let (Some(x), Some(w), Some(y)) = (x, w, y) else {
        return;
    };
    let prefix = format!("{}/nchwc", node.name);
    let [m_out, c_in, kh, kw] = ws.map(|d| d as i64);
    let b = block as i64;
    let mut bld = Builder::new(g, prefix.clone(), opset);
    let w6 = bld.reshape(
        w,
        &[ws[0] / block, block, ws[1] / block, block, ws[2], ws[3]],
    );
    let w6 = bld.transpose(w6, &[0, 2, 4, 5, 3, 1]);
    let wb = bld.reshape(w6, &ws);
    debug_assert_eq!(m_out * c_in * kh * kw % (b * b), 0);
    let xb = contrib(
        g,
        &format!("{prefix}/ReorderInput"),
        "ReorderInput",
        x,
        vec![],
    );
    g.set_input(id, 0, Some(xb));
    g.set_input(id, 1, Some(wb));
    g.node_mut(id).domain = DOMAIN.into();
    // The blocked output, then the plain one under Y's own value (its readers stay).
    let yb = g.add_value(&format!("{prefix}/blocked"));
    g.set_output(id, 0, yb);
    let reorder = g.add_node(
        &format!("{prefix}/ReorderOutput"),
        "ReorderOutput",
        &[Some(yb)],
        &[&format!("{prefix}/ReorderOutput_out")],
        vec![crate::ir::graph::attr_int("channels", m_out)],
    );
    g.node_mut(reorder).domain = DOMAIN.into();
    if let Some(stale) = g.node(reorder).output(0) {
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

/// A model that computes one 3×3 convolution of `x` `[1, 16, 6, 6]` by `w` `[16, 16, 3, 3]`
/// (both inputs) twice: plainly as `plain`, and lowered with `block` as `blocked`. The two
/// agree exactly when `block` is the runtime's block size (a wrong layout mixes channels).
pub fn probe_model(block: usize) -> Result<Model> {
    let mut g = Graph::new();
    let x = add_input(&mut g, "x", DType::F32, &[1, 16, 6, 6]);
    let w = add_input(&mut g, "w", DType::F32, &[16, 16, 3, 3]);
    let pads = crate::ir::graph::attr_ints("pads", &[1, 1, 1, 1]);
    for out in ["plain", "blocked"] {
        let id = g.add_node(out, "Conv", &[Some(x), Some(w)], &[out], vec![pads.clone()]);
        let y = g.node(id).output(0).expect("a new node has its output");
        super::emit::declare(&mut g, y, DType::F32, &[1, 16, 6, 6]);
        g.outputs.push(y);
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
    let blocked = m.graph.value_by_name("blocked");
    let shapes = infer_shapes(&m)?;
    let id = blocked
        .and_then(|v| m.graph.value(v).producer)
        .map(|(id, _)| id)
        .ok_or_else(|| Error::Graph("the probe lost its blocked convolution".into()))?;
    let Some((_, ws)) = qualifies(&m.graph, &shapes, id, block) else {
        return Err(Error::Usage(format!(
            "a channel block of {block} does not divide the probe's 16 channels"
        )));
    };
    let opset = m.opset();
    lower(&mut m.graph, opset, id, ws, block);
    m.rest.opset_import.push(OperatorSetIdProto {
        domain: Some(DOMAIN.into()),
        version: Some(1),
    });
    crate::ir::verify(&m.graph)?;
    Ok(m)
}

/// Seeded probe inputs (`x`, `w`) for [`probe_model`]: distinct values in every channel.
pub fn probe_inputs() -> Vec<(String, Tensor)> {
    let mut rng = crate::rng::SplitMix64::new(0x006e_6368_7763);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect() };
    vec![
        (
            "x".into(),
            Tensor::from_f32(vec![1, 16, 6, 6], &draw(16 * 36)),
        ),
        (
            "w".into(),
            Tensor::from_f32(vec![16, 16, 3, 3], &draw(256 * 9)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_rewires_the_convolution_and_keeps_its_output() {
        let m = probe_model(8).unwrap();
        let g = &m.graph;
        let ops: Vec<(String, String)> = g
            .node_ids()
            .map(|id| (g.node(id).domain.clone(), g.node(id).op_type.clone()))
            .collect();
        for op in ["ReorderInput", "Conv", "ReorderOutput"] {
            assert!(
                ops.contains(&(DOMAIN.into(), op.into())),
                "{op} missing: {ops:?}"
            );
        }
        // The plain convolution stays, and the blocked one still produces `blocked`.
        assert!(ops.contains(&(String::new(), "Conv".into())));
        let y = g.value_by_name("blocked").unwrap();
        let (p, _) = g.value(y).producer.unwrap();
        assert_eq!(g.node(p).op_type, "ReorderOutput");
        assert!(probe_model(5).is_err());
    }
}
