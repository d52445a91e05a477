//! The model before its first step: [`prepare_model`] makes an inference model trainable by
//! the step compiler, and [`reinitialize`] (`--from-scratch`) draws fresh weights, seeded, as
//! each op says.

use crate::error::Result;
use crate::ir::{DType, Dim, Fact, Model, Tensor};
use crate::rng::SplitMix64;

/// Makes `model` trainable by the step compiler: folds constant subgraphs (so that reshaped
/// weights become initializers; BatchNormalization and Dropout are kept) and frees a fixed
/// batch size of the data input. It does not rewrite shapes hard-coded in the graph: models
/// with those fail later, in the step compiler's shape inference.
pub fn prepare_model(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    crate::passes::simplify(
        &mut m,
        &crate::passes::SimplifyOptions {
            keep_batch_norm: true,
            keep_dropout: true,
            verify: false,
        },
    )?;
    let g = &mut m.graph;
    let data: Vec<_> = g
        .inputs
        .iter()
        .copied()
        .filter(|v| g.is_runtime_input(*v))
        .collect();
    let free = |g: &mut crate::ir::Graph, v| {
        let Some(decl) = g.decl_mut(v) else {
            return false;
        };
        let Some(ty) = decl.r#type.as_ref() else {
            return false;
        };
        let mut fact = Fact::from_type(ty);
        match fact.shape.as_mut().and_then(|s| s.first_mut()) {
            Some(d0) if matches!(d0, Dim::Known(_)) => {
                *d0 = Dim::Sym("N".into());
                decl.r#type = Some(fact.to_type());
                true
            }
            _ => false,
        }
    };
    if let [x] = data[..] {
        if free(g, x) {
            // Declared shapes of intermediates and outputs carry the old batch: drop the
            // former (shape inference recomputes them), free the latter's first dimension.
            for v in std::mem::take(&mut g.value_info) {
                g.values_mut(v).decl = None;
            }
            for v in g.outputs.clone() {
                free(g, v);
            }
        }
    }
    Ok(m)
}

/// Re-initialises every weight a step would train, seeded, as each op asks
/// ([`crate::ops::Op::fresh_init`]): Kaiming-normal (fan-in, gain √2) for Conv/ConvTranspose/
/// Gemm/MatMul weights (gain 1 for the last weight when it is fully connected: the classifier),
/// zeros for their biases, γ = 1, β = 0, mean 0 and variance 1 for BatchNormalization; and
/// zeros for initializers added (`Add`) to the output of a weight layer
/// ([`crate::ops::Op::layer`]: Conv, ConvTranspose, Gemm, MatMul). Nodes are
/// visited in topological order and an initializer keeps the first rule it gets. Float32
/// initializers only; anything else, and inputs of ops with no opinion, is left as it is.
pub fn reinitialize(model: &mut Model, seed: u64) -> Result<()> {
    use crate::ops::FreshInit;
    let g = &mut model.graph;
    let mut rng = SplitMix64(seed ^ 0x5EED_1A17_0000_0001);
    let mut done = std::collections::HashSet::new();
    let order = g.topo_order()?;
    let mut plan: Vec<(crate::ir::ValueId, FreshInit)> = Vec::new();
    for n in order {
        let node = g.node(n);
        let weight = |port: usize| {
            node.input(port)
                .and_then(|v| g.init(v).map(|t| (v, t)))
                .filter(|(_, t)| t.dtype() == DType::F32)
        };
        if node.op_type == "Add" {
            // A bias added to a linear layer's output.
            for port in [0, 1] {
                let other = node.input(1 - port);
                let after_linear = other
                    .and_then(|o| g.value(o).producer)
                    .is_some_and(|(p, _)| {
                        let pn = g.node(p);
                        crate::ops::lookup(&pn.domain, &pn.op_type)
                            .is_some_and(|op| op.layer(pn).is_some())
                    });
                if let Some((v, _)) = weight(port).filter(|_| after_linear) {
                    plan.push((v, FreshInit::Fill(0.0)));
                }
            }
            continue;
        }
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let shapes: Vec<Option<&[usize]>> = (0..node.inputs.len())
            .map(|p| weight(p).map(|(_, t)| t.shape()))
            .collect();
        for (port, rule) in op.fresh_init(node, &shapes) {
            // Ops may only name float32 initializers.
            if let Some((v, _)) = weight(port) {
                plan.push((v, rule));
            }
        }
    }
    // The classifier (the last Kaiming weight, when fully connected) gets gain 1: no ReLU
    // follows it.
    let last = plan
        .iter()
        .rposition(|(_, r)| matches!(r, FreshInit::Kaiming { .. }))
        .filter(|&k| matches!(plan[k].1, FreshInit::Kaiming { dense: true, .. }));
    for (k, (v, rule)) in plan.into_iter().enumerate() {
        if !done.insert(v) {
            continue;
        }
        let Some(old) = g.init(v) else { continue };
        let shape = old.shape().to_vec();
        let n = old.len();
        let values: Vec<f32> = match rule {
            FreshInit::Fill(x) => vec![x; n],
            FreshInit::Kaiming { fan_in, .. } => {
                let gain = if Some(k) == last { 1.0 } else { 2.0 };
                let std = (gain / fan_in.max(1) as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
        };
        g.set_init(v, Tensor::from_f32(shape, &values));
    }
    Ok(())
}
