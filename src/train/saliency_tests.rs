//! Tests of the saliency indices on a bias-free chain `Conv → Relu → Conv → GAP → Gemm`:
//! SNIP and GraSP against finite differences of the host-computed loss, SynFlow's
//! conservation (every layer's scores sum to the same value in a chain), magnitude masks
//! that do not depend on the rounds, and the kept count.

use super::*;
use crate::ir::graph::attr_int;
use crate::ir::{Graph, ValueId};
use crate::onnx::proto::{ModelProto, OperatorSetIdProto};
use crate::pipeline::pan::{masks_for, Arm};

fn lcg(s: &mut u64) -> f32 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
}

fn rand(s: &mut u64, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| scale * lcg(s)).collect();
    Tensor::from_f32(shape.to_vec(), &v)
}

/// `x[N,2,5,5] → Conv 3×3 pad 1 (4) → Relu → Conv 3×3 pad 1 (3) → GAP → Flatten → Gemm (3)`.
fn chain() -> Model {
    let mut g = Graph::new();
    let x = crate::ops::build::add_batched_input(&mut g, "x", "N", &[2, 5, 5]);
    let mut s = 11u64;
    let w1 = g.add_initializer("c1.w", rand(&mut s, &[4, 2, 3, 3], 0.5));
    let w2 = g.add_initializer("c2.w", rand(&mut s, &[3, 4, 3, 3], 0.5));
    let w3 = g.add_initializer("fc.w", rand(&mut s, &[3, 3], 1.0));
    let chain = |g: &mut Graph, name: &str, op: &str, ins: &[Option<ValueId>], attrs| {
        let id = g.add_node(name, op, ins, &[&format!("{name}:0")], attrs);
        g.node(id).outputs[0].unwrap()
    };
    let pads = || vec![crate::ir::graph::attr_ints("pads", &[1, 1, 1, 1])];
    let y = chain(&mut g, "c1", "Conv", &[Some(x), Some(w1)], pads());
    let y = chain(&mut g, "r1", "Relu", &[Some(y)], vec![]);
    let y = chain(&mut g, "c2", "Conv", &[Some(y), Some(w2)], pads());
    let y = chain(&mut g, "gap", "GlobalAveragePool", &[Some(y)], vec![]);
    let y = chain(&mut g, "flat", "Flatten", &[Some(y)], vec![]);
    let y = chain(
        &mut g,
        "fc",
        "Gemm",
        &[Some(y), Some(w3)],
        vec![attr_int("transB", 1)],
    );
    g.outputs = vec![y];
    Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            ..Default::default()
        },
    }
}

fn batch() -> (Tensor, Tensor) {
    let mut s = 3u64;
    (
        rand(&mut s, &[4, 2, 5, 5], 1.0),
        Tensor::from_i64(vec![4], &[0, 2, 1, 2]),
    )
}

/// Mean cross-entropy of `model` with `w` in place on [`batch`], in float64 on the host.
fn loss(model: &Model, w: &WeightMap) -> f64 {
    let mut m = model.clone();
    for (k, v) in w {
        let id = m.graph.value_by_name(k).unwrap();
        let shape = m.graph.init(id).unwrap().shape().to_vec();
        m.graph.set_init(id, Tensor::from_f32(shape, v));
    }
    let dir = crate::temp_dir::TempDir::new("saliency-loss").unwrap();
    let path = dir.path().join("m.onnx");
    m.save(&path, &Default::default()).unwrap();
    let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
    let (x, y) = batch();
    let out = sess.run(&[("x".into(), x)]).unwrap();
    let logits = out[0].1.to_f64_vec().unwrap();
    let labels = y.to_i64_vec().unwrap();
    let mut total = 0.0;
    for (b, &l) in labels.iter().enumerate() {
        let row = &logits[b * 3..b * 3 + 3];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        total += lse - row[l as usize];
    }
    total / labels.len() as f64
}

fn scorer(model: &Model) -> Scorer {
    Scorer::new(model, vec![batch()], RuntimeOptions::default(), 5).unwrap()
}

fn ort() -> bool {
    let found = crate::runtime::ort::find_library().is_some();
    if !found {
        eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
    }
    found
}

#[test]
fn snip_and_grasp_match_finite_differences() {
    if !ort() {
        return;
    }
    let model = chain();
    let mut sc = scorer(&model);
    assert_eq!(sc.weights(), ["c1.w", "c2.w", "fc.w"]);
    let none = WeightMap::new();
    let w = sc.values().clone();
    let snip = sc.score(Index::Snip, &none).unwrap();
    // SNIP: |w·∂L/∂w| entry by entry, by central differences of the loss.
    for (k, i) in [("c1.w", 5), ("c2.w", 40), ("fc.w", 4)] {
        let h = 1e-3f32;
        let mut up = w.clone();
        up.get_mut(k).unwrap()[i] += h;
        let mut down = w.clone();
        down.get_mut(k).unwrap()[i] -= h;
        let g = (loss(&model, &up) - loss(&model, &down)) / (2.0 * f64::from(h));
        let want = (g * f64::from(w[k][i])).abs();
        let got = f64::from(snip[k][i]);
        assert!(
            (got - want).abs() <= 0.03 * want + 1e-4,
            "{k}[{i}]: SNIP {got}, finite differences {want}"
        );
    }
    // GraSP: Σ w ⊙ Hg = wᵀHg, by a mixed second difference of the loss along w and g.
    let grasp = sc.score(Index::Grasp, &none).unwrap();
    let total: f64 = grasp.values().flatten().map(|v| f64::from(*v)).sum();
    let g = sc.gradient(&w).unwrap();
    let (a, b) = (0.05, 0.05);
    let at = |sa: f64, sb: f64| -> WeightMap {
        w.iter()
            .map(|(k, v)| {
                let gv = &g[k];
                let p = v
                    .iter()
                    .zip(gv)
                    .map(|(w, g)| (f64::from(*w) * (1.0 + sa * a) + sb * b * f64::from(*g)) as f32)
                    .collect();
                (k.clone(), p)
            })
            .collect()
    };
    let want =
        (loss(&model, &at(1.0, 1.0)) - loss(&model, &at(1.0, -1.0)) - loss(&model, &at(-1.0, 1.0))
            + loss(&model, &at(-1.0, -1.0)))
            / (4.0 * a * b);
    eprintln!("GraSP total {total}, finite differences {want}");
    assert!(
        want.abs() > 1e-3,
        "the check would be vacuous: wᵀHg = {want}"
    );
    assert!(
        (total - want).abs() <= 0.1 * want.abs() + 1e-4,
        "GraSP total {total}, finite differences {want}"
    );
}

#[test]
fn synflow_conserves_the_flow_through_a_chain() {
    if !ort() {
        return;
    }
    let mut sc = scorer(&chain());
    let flow = sc.score(Index::Synflow, &WeightMap::new()).unwrap();
    let sums: Vec<f64> = ["c1.w", "c2.w", "fc.w"]
        .iter()
        .map(|k| flow[*k].iter().map(|v| f64::from(*v)).sum())
        .collect();
    assert!(sums[0] > 0.0, "{sums:?}");
    for s in &sums[1..] {
        assert!((s - sums[0]).abs() <= 1e-3 * sums[0], "layer sums {sums:?}");
    }
    // Masking a layer's weights removes their flow: the masked entries score 0.
    let mut masks = WeightMap::new();
    masks.insert(
        "c1.w".into(),
        (0..72).map(|i| f32::from(i % 2 == 0)).collect(),
    );
    let flow = sc.score(Index::Synflow, &masks).unwrap();
    assert!(flow["c1.w"].iter().skip(1).step_by(2).all(|v| *v == 0.0));
}

#[test]
fn magnitude_masks_keep_the_global_top_weights_in_any_number_of_rounds() {
    let mut sc = scorer(&chain());
    let all: Vec<f32> = sc.values().values().flatten().map(|v| v.abs()).collect();
    let keep = (0.3 * all.len() as f64).round() as usize;
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[keep - 1];
    for rounds in [1, 4] {
        let (masks, scores) =
            masks_for(&mut sc, &Arm::single(Index::Magnitude, rounds), 0.3).unwrap();
        let flat: Vec<f32> = masks.values().flatten().copied().collect();
        assert_eq!(flat.iter().filter(|m| **m != 0.0).count(), keep);
        for (m, w) in flat.iter().zip(&all) {
            assert_eq!(*m != 0.0, *w >= threshold, "rounds {rounds}: |w| {w}");
        }
        let s: Vec<f32> = scores.values().flatten().copied().collect();
        assert!(s.iter().zip(&flat).all(|(s, m)| *m != 0.0 || *s == 0.0));
    }
    assert!(masks_for(&mut sc, &Arm::single(Index::Magnitude, 1), 0.0).is_err());
}
