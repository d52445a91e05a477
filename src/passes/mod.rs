//! Graph rewrites. Each pass is a verb-named function in its own file that returns whether it
//! changed anything; [`simplify`] runs the simplification pipeline as one literal list.

pub mod collapse_branches;
pub mod collapse_compensation;
pub mod eliminate_dead_code;
pub mod fold_batch_norm;
pub mod fold_constants;
pub mod lower_shortcuts;
pub mod remove_channels;
pub mod remove_identity;
pub mod snap_small_gammas;
pub mod upgrade_opset;

pub use collapse_branches::collapse_branches;
pub use collapse_compensation::collapse_compensation;
pub use eliminate_dead_code::eliminate_dead_code;
pub use fold_batch_norm::fold_batch_norm;
pub use fold_constants::fold_constants;
pub use lower_shortcuts::lower_shortcuts;
pub use remove_channels::remove_channels;
pub use remove_identity::remove_identity;
pub use upgrade_opset::upgrade_opset;

use crate::error::{Error, Result};
use crate::ir::{Fact, Model, Tensor, ValueId};
use crate::onnx::proto::ValueInfoProto;

/// Options of [`simplify`].
#[derive(Clone, Debug, Default)]
pub struct SimplifyOptions {
    /// Keep `BatchNormalization` nodes instead of folding them into the preceding Conv/Gemm.
    pub keep_batch_norm: bool,
    /// Keep inference-mode `Dropout` nodes (the training compiler turns them into masks)
    /// instead of removing them with the Identity nodes.
    pub keep_dropout: bool,
    /// Run the IR verifier after every pass (always done in debug builds).
    pub verify: bool,
}

/// One pipeline step.
type Pass = fn(&mut Model, &SimplifyOptions) -> Result<bool>;

/// The simplification pipeline, in order.
const PIPELINE: &[(&str, Pass)] = &[
    ("remove_identity", |m, o| {
        if o.keep_dropout {
            remove_identity::remove_identity_keep_dropout(m)
        } else {
            remove_identity(m)
        }
    }),
    ("fold_constants", |m, _| fold_constants(m)),
    ("fold_batch_norm", |m, o| {
        if o.keep_batch_norm {
            Ok(false)
        } else {
            fold_batch_norm(m)
        }
    }),
    ("eliminate_dead_code", |m, _| eliminate_dead_code(m)),
];

/// Most rounds of [`PIPELINE`] that [`simplify`] runs before giving up on a fixed point.
const MAX_ROUNDS: usize = 8;

/// Simplifies the model: removes Identity and (unless `keep_dropout`) inference Dropout, folds
/// constant subgraphs and (unless `keep_batch_norm`) BatchNormalization into the preceding
/// Conv/ConvTranspose/Gemm, and removes dead code, repeating until nothing changes (at most 8
/// rounds). Returns whether anything changed. The verifier runs after each pass in debug
/// builds or with `opts.verify`.
pub fn simplify(model: &mut Model, opts: &SimplifyOptions) -> Result<bool> {
    let check = opts.verify || cfg!(debug_assertions);
    let mut changed = false;
    for _ in 0..MAX_ROUNDS {
        let mut round = false;
        for (name, pass) in PIPELINE {
            round |= pass(model, opts)?;
            if check {
                crate::ir::verify(&model.graph)
                    .map_err(|e| Error::Graph(format!("after pass {name}: {e}")))?;
            }
        }
        changed |= round;
        if !round {
            break;
        }
    }
    Ok(changed)
}

/// Turns `v` (which must have no producer) into an initializer holding `t`. Its `value_info`
/// entry is dropped (the tensor says its type). In IR < 4 models, where every initializer
/// must also be a graph input, it is listed as an input too.
pub(crate) fn make_initializer(model: &mut Model, v: ValueId, t: Tensor) {
    let ir3 = model.rest.ir_version() < 4;
    let g = &mut model.graph;
    g.value_info.retain(|x| *x != v);
    if ir3 && !g.inputs.contains(&v) {
        let decl = ValueInfoProto {
            name: Some(g.value(v).name.clone()),
            r#type: Some(Fact::constant(t.clone()).to_type()),
            ..Default::default()
        };
        g.values_mut(v).decl = Some(decl);
        g.inputs.push(v);
    }
    g.set_init(v, t);
}

/// Adds a new initializer named after `name` (made unique), listed as an input in IR < 4.
pub(crate) fn add_initializer(model: &mut Model, name: &str, t: Tensor) -> ValueId {
    let v = model.graph.add_value(name);
    make_initializer(model, v, t);
    v
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Small helpers for the passes' unit tests.
    use crate::ir::{DType, Dim, Fact, Graph, Model, ValueId};
    use crate::onnx::proto::{ModelProto, OperatorSetIdProto, ValueInfoProto};

    /// Adds a float graph input of the given shape.
    pub fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
        let v = g.add_value(name);
        let fact = Fact::new(
            Some(DType::F32),
            shape.iter().map(|&d| Dim::Known(d)).collect(),
        );
        g.values_mut(v).decl = Some(ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(fact.to_type()),
            ..Default::default()
        });
        g.inputs.push(v);
        v
    }

    /// A model around `graph` with IR version 8 and default-domain opset `opset`.
    pub fn model(graph: Graph, opset: i64) -> Model {
        Model {
            graph,
            rest: ModelProto {
                ir_version: Some(8),
                opset_import: vec![OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(opset),
                }],
                ..Default::default()
            },
        }
    }

    /// Names of the live nodes' op types, in topological order.
    pub fn ops(m: &Model) -> Vec<String> {
        let g = &m.graph;
        g.topo_order()
            .unwrap_or_default()
            .into_iter()
            .map(|n| g.node(n).op_type.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{input, model, ops};
    use super::*;
    use crate::ir::graph::attr_tensor;
    use crate::ir::{verify, Graph};

    /// `x → Identity → Conv(W from a Constant) → BatchNormalization → Dropout → y`.
    fn conv_bn() -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 1, 2, 2]);
        let i = g.add_node("id", "Identity", &[Some(x)], &["xi"], vec![]);
        let xi = g.node(i).outputs[0];
        let w = Tensor::from_f32(vec![2, 1, 1, 1], &[1.0, 2.0]);
        let c = g.add_node("w", "Constant", &[], &["w"], vec![attr_tensor("value", &w)]);
        let w = g.node(c).outputs[0];
        let conv = g.add_node("conv", "Conv", &[xi, w], &["c"], vec![]);
        let c = g.node(conv).outputs[0];
        let mut ins = vec![c];
        for name in ["scale", "B", "mean", "var"] {
            let t = Tensor::from_f32(vec![2], &[1.0, 0.5]);
            ins.push(Some(g.add_initializer(name, t)));
        }
        let bn = g.add_node("bn", "BatchNormalization", &ins, &["b"], vec![]);
        let b = g.node(bn).outputs[0];
        let d = g.add_node("drop", "Dropout", &[b], &["y"], vec![]);
        g.outputs.push(g.node(d).outputs[0].unwrap());
        model(g, 13)
    }

    #[test]
    fn simplify_reaches_a_fixed_point() {
        let mut m = conv_bn();
        let opts = SimplifyOptions {
            verify: true,
            ..Default::default()
        };
        assert!(simplify(&mut m, &opts).unwrap());
        verify(&m.graph).unwrap();
        assert_eq!(ops(&m), ["Conv"]);
        let g = &m.graph;
        let y = g.value_by_name("y").unwrap();
        assert_eq!(g.outputs, [y]);
        let (conv, _) = g.value(y).producer.unwrap();
        assert_eq!(g.node(conv).input(0), g.value_by_name("x"));
        assert_eq!(g.initializers.len(), 2, "folded weight and bias only");
        assert!(!simplify(&mut m, &opts).unwrap());
    }

    #[test]
    fn simplify_can_keep_batch_norm() {
        let mut m = conv_bn();
        let opts = SimplifyOptions {
            keep_batch_norm: true,
            verify: true,
            ..Default::default()
        };
        assert!(simplify(&mut m, &opts).unwrap());
        assert_eq!(ops(&m), ["Conv", "BatchNormalization"]);
    }
}
