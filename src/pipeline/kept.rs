//! Which of the original channels each linear node (one whose op describes it as a linear
//! map by a constant weight: Conv, Gemm, MatMul) still has after a pruning plan: the map recovery stages need to relate a pruned
//! node to the same node of the original ([`super::compensate`]).
//!
//! [`kept_channels`] replays the plan on a copy of the original exactly as `lopper prune
//! --plan` does (per step: analyse, map the step onto the fresh groups, remove), and before
//! each removal reads the keep-mask of every linear node's input and output channel slots
//! off the analysis, composing the masks over the steps. Node names survive removal, so the
//! map is keyed by name. It reads no data and runs nothing.

use std::collections::BTreeMap;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::{infer_shapes, Shapes};
use crate::error::Result;
use crate::ir::{Model, NodeId, ValueId};
use crate::ops::linear::Linear;
use crate::passes::remove_channels;
use crate::plan::PlanFile;

use super::analyse::analyse;

/// The channels one node keeps: positions in the original node's input and output channels,
/// ascending, in the order the pruned node has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeChannels {
    /// The op (`Conv`, `Gemm`, `MatMul`).
    pub op: String,
    /// Kept input channels (of `in_channels`).
    pub inputs: Vec<usize>,
    /// Input channels of the original node.
    pub in_channels: usize,
    /// Kept output channels (of `out_channels`).
    pub outputs: Vec<usize>,
    /// Output channels of the original node.
    pub out_channels: usize,
}

impl NodeChannels {
    /// Whether pruning took input channels away from this node.
    pub fn inputs_reduced(&self) -> bool {
        self.inputs.len() < self.in_channels
    }
}

/// Kept channels by node name.
pub type KeptChannels = BTreeMap<String, NodeChannels>;

/// Where a linear node's channels are: its data input and output, the channel axis of each,
/// and the channel counts its weight gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearSlots {
    /// Data input and its channel axis.
    pub input: (ValueId, usize),
    /// Output and its channel axis.
    pub output: (ValueId, usize),
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// Node `n` of `model` as a linear layer ([`Op::linear`](crate::ops::Op::linear)) whose
/// weight is the constant at port 1; `None` for anything else.
pub fn linear(model: &Model, shapes: &Shapes, n: NodeId) -> Option<Linear> {
    crate::ops::linear::of_node(model, shapes, n)
}

/// The channel slots of `n` when it is a [`linear`] layer; `None` for anything else.
pub fn linear_slots(model: &Model, shapes: &Shapes, n: NodeId) -> Option<LinearSlots> {
    let node = model.graph.node(n);
    let (x, y) = (node.input(0)?, node.output(0)?);
    let l = linear(model, shapes, n)?;
    Some(LinearSlots {
        input: (x, l.input_axis),
        output: (y, l.output_axis),
        in_channels: l.in_channels,
        out_channels: l.out_channels,
    })
}

/// `kept` narrowed to the positions `mask` keeps (`None`: the slot is not tracked, nothing
/// goes). A mask of another length than `kept` leaves it as it is.
fn narrow(kept: &mut Vec<usize>, mask: Option<Vec<bool>>) {
    if let Some(mask) = mask.filter(|m| m.len() == kept.len()) {
        let mut i = 0;
        kept.retain(|_| {
            i += 1;
            mask[i - 1]
        });
    }
}

/// The kept channels of every linear node ([`linear_slots`]) of `original` after `plan`
/// (made for `original`: its fingerprint is checked), by node name. A plan with no steps
/// keeps everything. Errors as replaying the plan would (another model, groups that do not
/// match).
pub fn kept_channels(original: &Model, plan: &PlanFile) -> Result<KeptChannels> {
    plan.check_model(original)?;
    let mut model = original.clone();
    let mut kept = KeptChannels::new();
    for step in 0..plan.steps.len().max(1) {
        let groups = analyse(&mut model)?;
        let shapes = infer_shapes(&model)?;
        if step == 0 {
            kept = linear_nodes(&model, &shapes);
        }
        if plan.steps.is_empty() {
            break;
        }
        let classes = plan.step_classes(step, &groups)?;
        narrow_all(&model, &shapes, &groups, &classes, &mut kept);
        remove_channels(&mut model, &groups, &shapes, &classes)?;
    }
    Ok(kept)
}

/// Every linear node of `model` with all its channels kept.
fn linear_nodes(model: &Model, shapes: &Shapes) -> KeptChannels {
    let g = &model.graph;
    g.node_ids()
        .filter_map(|n| {
            let s = linear_slots(model, shapes, n)?;
            let node = g.node(n);
            Some((
                node.name.clone(),
                NodeChannels {
                    op: node.op_type.clone(),
                    inputs: (0..s.in_channels).collect(),
                    in_channels: s.in_channels,
                    outputs: (0..s.out_channels).collect(),
                    out_channels: s.out_channels,
                },
            ))
        })
        .collect()
}

/// Narrows every entry of `kept` by what removing `classes` of `groups` takes from its node.
fn narrow_all(
    model: &Model,
    shapes: &Shapes,
    groups: &ChannelGroups,
    classes: &[usize],
    kept: &mut KeptChannels,
) {
    let removed = groups.removed(classes);
    let g = &model.graph;
    for n in g.node_ids() {
        let (Some(s), Some(k)) = (
            linear_slots(model, shapes, n),
            kept.get_mut(&g.node(n).name),
        ) else {
            continue;
        };
        narrow(&mut k.inputs, groups.keep_mask(s.input, &removed));
        narrow(&mut k.outputs, groups.keep_mask(s.output, &removed));
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Pruning by hand for the recovery stages' unit tests.
    use super::*;
    use crate::plan::{fingerprint, PlanMeta};

    /// `m` pruned step by step, each step removing the given positions of the group whose
    /// sources include the named node: the pruned model and the plan (made for `m`).
    pub fn prune_steps(m: &Model, steps: &[(&str, &[usize])]) -> (Model, PlanFile) {
        let mut p = PlanFile::new(fingerprint(m), PlanMeta::default());
        let mut work = m.clone();
        for &(source, removed) in steps {
            let groups = analyse(&mut work).unwrap();
            let g = groups
                .groups
                .iter()
                .find(|g| g.sources.iter().any(|s| s.node_name == source))
                .unwrap();
            let classes: Vec<usize> = removed.iter().map(|&r| g.classes[r]).collect();
            p.push_step(&groups, &classes, None).unwrap();
            let shapes = infer_shapes(&work).unwrap();
            remove_channels(&mut work, &groups, &shapes, &classes).unwrap();
        }
        (work, p)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::prune_steps;
    use super::*;
    use crate::ir::{Graph, Tensor};
    use crate::passes::testutil::{input, model};
    use crate::plan::{fingerprint, PlanMeta};

    /// `x[1,2,4,4] → Conv a (4 filters, 3×3, pad 1) → Relu → Conv b (3 filters, 1×1) → Relu
    /// → Conv c (2 filters)`.
    fn chain() -> Model {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[1, 2, 4, 4]);
        let mut cur = x;
        for (name, (o, i, k)) in ["a", "b", "c"]
            .into_iter()
            .zip([(4, 2, 3), (3, 4, 1), (2, 3, 1)])
        {
            let vals: Vec<f32> = (0..o * i * k * k).map(|v| (v % 7) as f32 - 3.0).collect();
            let w = g.add_initializer(
                &format!("{name}.w"),
                Tensor::from_f32(vec![o, i, k, k], &vals),
            );
            let pads = crate::ir::graph::attr_ints("pads", &[k as i64 / 2; 4]);
            let c = g.add_node(
                name,
                "Conv",
                &[Some(cur), Some(w)],
                &[&format!("{name}.y")],
                vec![pads],
            );
            let c = g.node(c).outputs[0].unwrap();
            let r = g.add_node(
                &format!("{name}.relu"),
                "Relu",
                &[Some(c)],
                &[&format!("{name}.r")],
                vec![],
            );
            cur = g.node(r).outputs[0].unwrap();
        }
        g.outputs.push(cur);
        model(g, 13)
    }

    #[test]
    fn one_step_narrows_the_producer_outputs_and_the_consumer_inputs() {
        let m = chain();
        let kept = kept_channels(&m, &prune_steps(&m, &[("a", &[1, 2])]).1).unwrap();
        assert_eq!(kept["a"].outputs, vec![0, 3]);
        assert_eq!(kept["a"].inputs, vec![0, 1]);
        assert_eq!(kept["b"].inputs, vec![0, 3]);
        assert!(kept["b"].inputs_reduced() && !kept["a"].inputs_reduced());
        assert_eq!(kept["b"].outputs, vec![0, 1, 2]);
        assert!(!kept["c"].inputs_reduced());
    }

    #[test]
    fn steps_compose_to_original_positions() {
        let m = chain();
        // Step 1 removes a's channel 0; step 2 removes position 1 of the three left (= 2).
        let (pruned, p) = prune_steps(&m, &[("a", &[0]), ("a", &[1])]);
        let kept = kept_channels(&m, &p).unwrap();
        assert_eq!(kept["b"].inputs, vec![1, 3]);
        assert_eq!(kept["a"].outputs, vec![1, 3]);
        assert_eq!(kept["b"].in_channels, 4);
        // The pruned b has exactly those channels.
        let g = &pruned.graph;
        let b = g.node_ids().find(|&n| g.node(n).name == "b").unwrap();
        let w = g.init(g.node(b).input(1).unwrap()).unwrap();
        assert_eq!(w.shape(), &[3, 2, 1, 1]);
    }

    #[test]
    fn an_empty_plan_keeps_everything_and_another_model_is_refused() {
        let m = chain();
        let p = PlanFile::new(fingerprint(&m), PlanMeta::default());
        let kept = kept_channels(&m, &p).unwrap();
        assert_eq!(kept.len(), 3);
        assert!(kept.values().all(|k| !k.inputs_reduced()));
        let other = PlanFile::new("fnv1a64:0".into(), PlanMeta::default());
        let e = kept_channels(&m, &other).unwrap_err().to_string();
        assert!(e.contains("another model"), "{e}");
    }
}
