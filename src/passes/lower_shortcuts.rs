//! [`lower_shortcuts`]: writes a subsampling shortcut — strided Slices keeping every k-th row
//! and column, then a Pad adding zero channels (the parameter-free shortcut of CIFAR ResNets)
//! — as one 1×1 convolution of stride k whose weight places each input channel at its padded
//! position. Exact (each output is one input times 1, or 0), at the cost of the convolution's
//! few MACs (`C_in · C_out` per output pixel).
//!
//! Why: ONNX Runtime's CPU provider runs convolutions in a channel-blocked layout and keeps a
//! residual stream in it from sum to sum only while every op on the way understands it; a
//! Slice or Pad sends the stream back to the plain layout, and every later block then pays two
//! reorders and an unfused sum and Relu. ResNet-56 pruned to FLOPs ×0.5 ran at ×0.561 of the
//! original's time at batch 1 with the shortcuts as Slice/Pad and ×0.510 as convolutions
//! (tract: the same time either way).
//!
//! It does not touch a Pad of other axes than the channel axis 1 of a rank-4 float32 tensor,
//! or with non-zero values, or Slices with offsets; it does not run unless asked (`lopper
//! prune` and `compress` call it on the model they write, see `pipeline::lower`).

use crate::analysis::infer_shapes;
use crate::error::Result;
use crate::ir::graph::attr_ints;
use crate::ir::{verify, DType, Model, Tensor, ValueId};

use super::eliminate_dead_code;

/// What [`lower_shortcuts`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lowered {
    /// Shortcuts rewritten.
    pub count: usize,
    /// MACs per sample the convolutions add (spatial dims unknown: not counted).
    pub added_macs: u64,
}

/// Rewrites every subsampling shortcut (`Slice`+ → `Pad` of zero channels) as a 1×1 strided
/// `Conv`.
pub fn lower_shortcuts(model: &mut Model) -> Result<Lowered> {
    let shapes = infer_shapes(model)?;
    let g = &mut model.graph;
    let dims = |v: ValueId| -> Option<Vec<Option<usize>>> {
        Some(
            shapes
                .get(v)?
                .shape
                .as_ref()?
                .iter()
                .map(|d| d.known())
                .collect(),
        )
    };
    let (mut rewrites, mut added_macs) = (Vec::new(), 0);
    for n in g.topo_order()? {
        let node = g.node(n);
        let Some(pads) = crate::ops::zero_pads(node, &g.const_inputs(node)) else {
            continue;
        };
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else {
            continue;
        };
        // Only channels padded, on a rank-4 tensor.
        if pads.len() != 8 || pads.iter().enumerate().any(|(i, p)| i % 4 != 1 && *p != 0) {
            continue;
        }
        // Back through the Slices that subsample rows and columns.
        let (mut src, mut stride) = (x, [1usize, 1]);
        let mut slices = 0;
        while let Some((s, 0)) = g.value(src).producer {
            let sn = g.node(s);
            let single = g.value(src).uses.len() == 1 && !g.outputs.contains(&src);
            let (Some(input), true) = (sn.input(0), single) else {
                break;
            };
            let Some(d) = dims(input) else { break };
            let Some(axes) = crate::ops::subsampling(sn, &g.const_inputs(sn), &d) else {
                break;
            };
            if axes.iter().any(|(a, _)| *a < 2) {
                break;
            }
            for (a, k) in axes {
                stride[a - 2] *= k;
            }
            src = input;
            slices += 1;
        }
        let float = shapes.get(src).and_then(|f| f.dtype) == Some(DType::F32);
        let Some(c) = dims(src)
            .filter(|d| d.len() == 4 && float && slices > 0)
            .and_then(|d| d[1])
        else {
            continue;
        };
        let pixels: Option<usize> = dims(y).and_then(|d| d[2]?.checked_mul(d[3]?));
        let (lo, hi) = (pads[1] as usize, pads[5] as usize);
        added_macs += (c * (c + lo + hi) * pixels.unwrap_or(0)) as u64;
        rewrites.push((n, src, y, c, lo, hi, stride));
    }
    let count = rewrites.len();
    for (n, src, y, c, lo, hi, stride) in rewrites {
        let name = g.node(n).name.clone();
        let out = c + lo + hi;
        let mut w = vec![0.0f32; out * c];
        for i in 0..c {
            w[(lo + i) * c + i] = 1.0;
        }
        let wname = g.fresh_name(&format!("{name}_as_conv_weight"));
        let w = g.add_initializer(&wname, Tensor::from_f32(vec![out, c, 1, 1], &w));
        g.remove_node(n);
        let strides = [stride[0] as i64, stride[1] as i64];
        g.add_node_writing(
            &format!("{name}_as_conv"),
            "Conv",
            &[Some(src), Some(w)],
            y,
            vec![
                attr_ints("kernel_shape", &[1, 1]),
                attr_ints("strides", &strides),
            ],
        );
    }
    if count > 0 {
        eliminate_dead_code(model)?;
        model.graph.compact();
        verify(&model.graph)?;
    }
    Ok(Lowered { count, added_macs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use crate::oracle::compare;
    use crate::passes::testutil::{input, model, ops};
    use crate::runtime::BackendKind;

    /// `x[1,4,6,5] → Relu → Slice(rows, start, step 2) → Slice(cols, 0, step 3) → Pad(channels
    /// 2 + 1, value) → y`.
    fn shortcut(start: i64, value: f32) -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 4, 6, 5]);
        let r = g.add_node("r", "Relu", &[Some(x)], &["r"], vec![]);
        let mut v = g.node(r).outputs[0];
        for (axis, st, step) in [(2, start, 2), (3, 0, 3)] {
            let ints = |g: &mut Graph, n: &str, i: i64| {
                Some(g.add_initializer(n, Tensor::from_i64(vec![1], &[i])))
            };
            let ins = [
                v,
                ints(&mut g, "st", st),
                ints(&mut g, "en", i64::MAX),
                ints(&mut g, "ax", axis),
                ints(&mut g, "sp", step),
            ];
            let s = g.add_node("s", "Slice", &ins, &["s"], vec![]);
            v = g.node(s).outputs[0];
        }
        let pads = Tensor::from_i64(vec![8], &[0, 2, 0, 0, 0, 1, 0, 0]);
        let pads = Some(g.add_initializer("pads", pads));
        let val = Some(g.add_initializer("val", Tensor::from_f32(vec![], &[value])));
        let p = g.add_node("p", "Pad", &[v, pads, val], &["y"], vec![]);
        g.outputs.push(g.node(p).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn a_subsampling_shortcut_becomes_an_exact_strided_convolution() {
        let before = shortcut(0, 0.0);
        let mut m = before.clone();
        assert_eq!(lower_shortcuts(&mut m).unwrap().count, 1);
        assert_eq!(ops(&m), ["Relu", "Conv"]);
        let g = &m.graph;
        let y = g.value_by_name("y").unwrap();
        let conv = g.node(g.value(y).producer.unwrap().0);
        assert_eq!(conv.attr_ints("strides"), Some(&[2i64, 3][..]));
        assert_eq!(
            g.init(conv.input(1).unwrap()).unwrap().shape(),
            [7, 4, 1, 1]
        );
        let cmp = compare(&before, &m, &[BackendKind::Tract], 2, 1).unwrap();
        assert_eq!(cmp.max_rel_error, 0.0, "{cmp:?}");
        let shapes = infer_shapes(&m).unwrap();
        assert_eq!(
            shapes.get(y).unwrap().concrete(),
            Some(vec![1, 7, 3, 2]),
            "the shortcut's shape"
        );
        assert_eq!(lower_shortcuts(&mut m).unwrap().count, 0);
    }

    #[test]
    fn other_windows_and_values_stay() {
        // A non-zero padding value: nothing changes.
        let mut m = shortcut(0, 0.5);
        assert_eq!(lower_shortcuts(&mut m).unwrap().count, 0);
        assert_eq!(ops(&m), ["Relu", "Slice", "Slice", "Pad"]);
        // A row window with an offset stays a Slice; the columns' subsampling and the padding
        // still become the convolution.
        let before = shortcut(1, 0.0);
        let mut m = before.clone();
        assert_eq!(lower_shortcuts(&mut m).unwrap().count, 1);
        assert_eq!(ops(&m), ["Relu", "Slice", "Conv"]);
        let cmp = compare(&before, &m, &[BackendKind::Tract], 2, 1).unwrap();
        assert_eq!(cmp.max_rel_error, 0.0, "{cmp:?}");
    }
}
