//! [`collapse_compensation`]: replaces the per-pixel compensation maps that channel removal
//! adds after a convolution (`Add(conv, map[C,H,W])`, where zero padding makes a removed
//! constant channel's contribution vary near the border) by the map's value at the centre
//! pixel folded into the convolution's bias. Exact in the interior, approximate within the
//! padding's reach of the border; it removes one elementwise node and a `C·H·W` tensor per
//! convolution. An explicit approximation: nothing calls it unless asked (MaskSparsity's prune
//! stage does, and says so). It does not touch compensations that are already biases.

use crate::error::Result;
use crate::ir::{DType, Model, Tensor};

/// Collapses every `{conv}_compensate` Add of [`crate::passes::remove_channels()`] whose
/// constant is a float32 `[C, spatial..]` or `[1, C, spatial..]` map after a convolution (as
/// its op describes itself, [`crate::ops::Op::linear`]); returns how many.
pub fn collapse_compensation(model: &mut Model) -> Result<usize> {
    let g = &mut model.graph;
    let mut done = 0;
    let adds: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op_type == "Add" && g.node(n).name.ends_with("_compensate"))
        .collect();
    for add in adds {
        let node = g.node(add);
        let (Some(pre), Some(map), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
            continue;
        };
        let Some((conv, 0)) = g.value(pre).producer else {
            continue;
        };
        if g.value(pre).uses.len() != 1 {
            continue;
        }
        let Some(bias_port) = convolution_bias_port(g, conv) else {
            continue;
        };
        let Some(t) = g.init(map).filter(|t| t.dtype() == DType::F32) else {
            continue;
        };
        // `[C, spatial..]`, or with a leading batch dimension of 1.
        let shape = t.shape().to_vec();
        let dims = match shape.split_first() {
            Some((1, rest)) if rest.len() >= 2 => rest.to_vec(),
            _ if shape.len() >= 2 => shape.clone(),
            _ => continue,
        };
        let Some(values) = t.to_f64_vec() else {
            continue;
        };
        let c = dims[0];
        let spatial: usize = dims[1..].iter().product();
        let centre_offset = dims[1..].iter().fold(0, |acc, &d| acc * d + d / 2);
        let centre: Vec<f64> = (0..c)
            .map(|k| values[k * spatial + centre_offset])
            .collect();
        // Fold into the bias (created when absent).
        let bias = g
            .node(conv)
            .input(bias_port)
            .and_then(|b| g.init(b).cloned());
        let new_bias = match bias {
            Some(b) => {
                let Some(old) = b.to_f64_vec().filter(|o| o.len() == c) else {
                    continue;
                };
                let sum: Vec<f64> = old.iter().zip(&centre).map(|(a, b)| a + b).collect();
                Tensor::from_f64_as(b.dtype(), vec![c], &sum)?
            }
            None => Tensor::from_f64_as(DType::F32, vec![c], &centre)?,
        };
        let name = format!("{}_bias_collapsed", g.node(conv).name);
        let bv = g.add_initializer(&name, new_bias);
        while g.node(conv).inputs.len() < bias_port {
            g.push_input(conv, None);
        }
        if g.node(conv).inputs.len() == bias_port {
            g.push_input(conv, Some(bv));
        } else {
            g.set_input(conv, bias_port, Some(bv));
        }
        g.remove_node(add);
        g.set_output(conv, 0, y);
        g.remove_value(pre);
        done += 1;
    }
    if done > 0 {
        crate::passes::eliminate_dead_code(model)?;
        model.graph.compact();
    }
    Ok(done)
}

/// The bias port of node `n` when its op is a convolution (a linear map of the
/// [`crate::ops::linear::Form::Conv`] form, whose constant input gives a constant output away
/// from the border) with a known weight shape.
fn convolution_bias_port(g: &crate::ir::Graph, n: crate::ir::NodeId) -> Option<usize> {
    let node = g.node(n);
    let weight = node.input(1).and_then(|w| g.init(w))?.shape().to_vec();
    let op = crate::ops::lookup(&node.domain, &node.op_type)?;
    let linear = op.linear(&crate::ops::linear::LinearCx {
        node,
        weight: &weight,
        input_rank: None,
        output_rank: None,
    })?;
    match linear.form {
        crate::ops::linear::Form::Conv { .. } => linear.bias_port,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::attr_ints;
    use crate::ir::Graph;
    use crate::passes::testutil::{input, model};
    use crate::rng::SplitMix64;
    use crate::runtime::{self, BackendKind};

    const H: usize = 5;

    /// `x[1,2,5,5] → Conv(3×3, pad 1) → Add(map)`: the map is what a removed constant channel
    /// `c` through filters `v` adds (it varies at the border, where padding cuts the window).
    fn compensated(seed: u64) -> Model {
        let mut rng = SplitMix64(seed);
        let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let (w, b, v) = (r(3 * 2 * 9), r(3), r(3 * 9));
        let c = 0.7f32;
        let mut map = vec![0f32; 3 * H * H];
        for o in 0..3 {
            for i in 0..H {
                for j in 0..H {
                    let mut s = 0.0;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (y, x) = (i + di, j + dj);
                            if (1..=H).contains(&y) && (1..=H).contains(&x) {
                                s += c * v[o * 9 + di * 3 + dj];
                            }
                        }
                    }
                    map[o * H * H + i * H + j] = s;
                }
            }
        }
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 2, H, H]);
        let w = g.add_initializer("w", Tensor::from_f32(vec![3, 2, 3, 3], &w));
        let b = g.add_initializer("b", Tensor::from_f32(vec![3], &b));
        let m = g.add_initializer("conv_compensation", Tensor::from_f32(vec![3, H, H], &map));
        let conv = g.add_node(
            "conv",
            "Conv",
            &[Some(x), Some(w), Some(b)],
            &["pre"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        );
        let pre = g.node(conv).output(0);
        let add = g.add_node("conv_compensate", "Add", &[pre, Some(m)], &["y"], vec![]);
        g.outputs.push(g.node(add).output(0).unwrap());
        model(g, 13)
    }

    fn run(m: &Model, x: &Tensor) -> Vec<f64> {
        let dir = crate::temp_dir::TempDir::new("collapse").unwrap();
        let path = dir.path().join("m.onnx");
        m.save(&path, &Default::default()).unwrap();
        let mut s = runtime::load(BackendKind::Tract, &path).unwrap();
        let out = s.run(&[("x".into(), x.clone())]).unwrap();
        out[0].1.to_f64_vec().unwrap()
    }

    #[test]
    fn maps_become_biases_exact_inside_and_only_the_border_moves() {
        let exact = compensated(3);
        let mut collapsed = exact.clone();
        assert_eq!(collapse_compensation(&mut collapsed).unwrap(), 1);
        crate::ir::verify(&collapsed.graph).unwrap();
        let g = &collapsed.graph;
        let ops: Vec<&str> = g.node_ids().map(|n| g.node(n).op_type.as_str()).collect();
        assert_eq!(ops, ["Conv"]);
        assert!(g.value_by_name("conv_compensation").is_none());
        let mut rng = SplitMix64(9);
        let xs: Vec<f32> = (0..2 * H * H).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_f32(vec![1, 2, H, H], &xs);
        let (a, b) = (run(&exact, &x), run(&collapsed, &x));
        let mut border = 0f64;
        for o in 0..3 {
            for i in 0..H {
                for j in 0..H {
                    let k = o * H * H + i * H + j;
                    let d = (a[k] - b[k]).abs();
                    if (1..H - 1).contains(&i) && (1..H - 1).contains(&j) {
                        assert!(d < 1e-5, "interior ({o},{i},{j}) moved by {d}");
                    } else {
                        border = border.max(d);
                    }
                }
            }
        }
        assert!(
            border > 1e-3,
            "the border should differ, largest change {border}"
        );
    }

    #[test]
    fn adds_that_are_not_compensation_maps_stay() {
        let mut m = compensated(4);
        let add = m
            .graph
            .node_ids()
            .find(|&n| m.graph.node(n).op_type == "Add")
            .unwrap();
        m.graph.node_mut(add).name = "residual".into();
        assert_eq!(collapse_compensation(&mut m).unwrap(), 0);
    }
}
