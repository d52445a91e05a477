//! Masks for masked L1 ([`super::regularize::Regularizer::MaskedL1Gamma`]): which
//! BatchNormalization scale entries belong to the channels a pruning plan removes, from a plan
//! file ([`masks_from_plan`]) or from the pruning pipeline run on a copy of the model
//! ([`masks_from_criterion`]).

use crate::error::{Error, Result};
use crate::ir::Model;

/// Per-scale masks for [`super::regularize::Regularizer::MaskedL1Gamma`]: BatchNormalization scale name → one
/// 0/1 entry per channel.
pub type ScaleMasks = std::collections::BTreeMap<String, Vec<f32>>;

/// Weight masks a train step enforces ([`super::StepOptions::weight_masks`]): parameter name →
/// one 0/1 entry per element, row-major; shared, since training options are cloned often.
pub type WeightMasks = std::sync::Arc<std::collections::BTreeMap<String, Vec<f32>>>;

/// Masks for [`super::regularize::Regularizer::MaskedL1Gamma`] from a plan file made for `model`: entry `c` of a
/// BatchNormalization scale is 1 when the plan removes channel `c` of the model, in any of
/// its steps, else 0; scales losing no channel get no entry. The plan is replayed on a copy of
/// `model` the way `lopper prune --plan` does (simplified with BatchNormalization kept,
/// re-analysed before every step); the channels a later step removes are traced back to the
/// model's own through the earlier steps' removals (which keep the order of the channels
/// left). `model` itself is not changed. Errors when the plan was made for another model or
/// does not fit it, when a scale cannot be followed through a step, or when no scale loses a
/// channel.
pub fn masks_from_plan(model: &Model, plan: &crate::plan::file::PlanFile) -> Result<ScaleMasks> {
    masks_of(model, plan, Masked::Scales)
}

/// What a mask covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masked {
    /// BatchNormalization scales, one entry per channel.
    Scales,
    /// Convolution filter banks (the ops declaring a filter axis), one entry per filter.
    Filters,
}

/// Like [`masks_from_plan`], for the filters of convolution filter banks: entry `f` of a bank
/// (by weight initializer name) is 1 when the plan removes the channel filter `f` produces
/// (for [`super::regularize::Regularizer::MaskedGroupLasso`]).
pub fn filter_masks_from_plan(
    model: &Model,
    plan: &crate::plan::file::PlanFile,
) -> Result<ScaleMasks> {
    masks_of(model, plan, Masked::Filters)
}

fn masks_of(model: &Model, plan: &crate::plan::file::PlanFile, what: Masked) -> Result<ScaleMasks> {
    plan.check_model(model)?;
    let mut m = model.clone();
    let steps = plan.steps.len();
    // Per scale: its current positions → the model's channels, and its mask.
    let mut origin: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut masks = ScaleMasks::new();
    for step in 0..steps {
        let groups = crate::prune::analyse(&mut m)?;
        if step == 0 {
            for (name, len) in tensors(&m, what) {
                origin.insert(name.clone(), (0..len).collect());
                masks.insert(name, vec![0.0; len]);
            }
        }
        let classes = plan.step_classes(step, &groups)?;
        let removed = removed_entries(&m, &groups, &classes, what);
        for (name, flags) in &removed {
            let (Some(orig), Some(mask)) = (origin.get(name), masks.get_mut(name)) else {
                continue;
            };
            for (&o, _) in orig.iter().zip(flags).filter(|(_, r)| **r) {
                if let Some(x) = mask.get_mut(o) {
                    *x = 1.0;
                }
            }
        }
        if step + 1 == steps {
            break;
        }
        let shapes = crate::analysis::infer_shapes(&m)?;
        crate::passes::remove_channels(&mut m, &groups, &shapes, &classes)?;
        let now = tensors(&m, what);
        for (name, orig) in origin.iter_mut() {
            if let Some(flags) = removed.get(name) {
                let kept = orig.iter().zip(flags).filter(|(_, r)| !**r);
                *orig = kept.map(|(o, _)| *o).collect();
            }
            if now.get(name) != Some(&orig.len()) {
                return Err(Error::Usage(format!(
                    "plan step {}: '{name}' cannot be followed through the removal (it is \
                     gone or has an unexpected size)",
                    step + 1
                )));
            }
        }
    }
    masks.retain(|_, m| m.iter().any(|&v| v > 0.0));
    if masks.is_empty() {
        return Err(Error::Usage(format!(
            "the plan removes no channel of any {}: the masked penalty would do nothing",
            match what {
                Masked::Scales => "BatchNormalization scale",
                Masked::Filters => "convolution filter bank",
            }
        )));
    }
    Ok(masks)
}

/// Masks for [`super::regularize::Regularizer::MaskedL1Gamma`] on the channels `lopper prune` would remove with
/// `scored` (criterion, allocation, rounds; see [`crate::prune::Scored::new`] for its
/// defaults): the pruning pipeline runs on a copy of `model`, without the equivalence check,
/// and its plan goes through [`masks_from_plan`]. `model` keeps every channel. Criteria that
/// need calibration data and latency targets are refused: make a plan with `lopper prune
/// --save-plan` for those.
pub fn masks_from_criterion(model: &Model, scored: &crate::prune::Scored) -> Result<ScaleMasks> {
    use crate::plan::allocate::{Amount, Budget};
    if scored.criterion.needs_data() {
        return Err(Error::Usage(format!(
            "masked L1: criterion '{}' needs calibration data; make a plan with `lopper prune \
             --criterion {} --data ... --save-plan PLAN.json` and pass masked-l1=PLAN.json:W",
            scored.criterion, scored.criterion
        )));
    }
    if matches!(scored.allocate.amount, Amount::Target(Budget::Latency(_))) {
        return Err(Error::Usage(
            "masked L1: a latency target needs timing runs; make a plan with `lopper prune \
             --target latency=R --save-plan PLAN.json` and pass masked-l1=PLAN.json:W"
                .into(),
        ));
    }
    let mut copy = model.clone();
    let opts = crate::prune::PruneOptions {
        selection: crate::prune::Selection::Scored(scored.clone()),
        verify_with: Vec::new(),
        tolerance: 0.0,
    };
    let report = crate::prune::prune(&mut copy, &opts)?;
    if report.removed == 0 {
        return Err(Error::Usage(format!(
            "masked L1: criterion '{}' with this amount removes no channel",
            scored.criterion
        )));
    }
    masks_from_plan(model, &report.plan)
}

/// Where node `node`'s masked tensor is: its input port and the axis of the masked entries.
fn masked_input(node: &crate::ir::Node, what: Masked) -> Option<(usize, usize)> {
    match what {
        Masked::Scales => crate::ops::channel_scale_input(node).map(|p| (p, 0)),
        Masked::Filters => {
            let layer = crate::ops::lookup(&node.domain, &node.op_type)?.layer(node)?;
            Some((layer.weight, layer.filter_axis?))
        }
    }
}

/// The filter axis of the filter bank held in initializer `name` (what
/// [`filter_masks_from_plan`] masks along), when a layer reads it as one.
pub fn filter_axis(model: &Model, name: &str) -> Option<usize> {
    let g = &model.graph;
    g.node_ids().find_map(|n| {
        let node = g.node(n);
        let (port, axis) = masked_input(node, Masked::Filters)?;
        let v = node.input(port)?;
        (g.value(v).name == name).then_some(axis)
    })
}

/// Every masked tensor held in an initializer: name → entries (channels or filters).
fn tensors(model: &Model, what: Masked) -> std::collections::BTreeMap<String, usize> {
    let g = &model.graph;
    g.node_ids()
        .filter_map(|n| {
            let node = g.node(n);
            let (port, axis) = masked_input(node, what)?;
            node.input(port).map(|v| (v, axis))
        })
        .filter_map(|(v, axis)| {
            g.init(v)
                .and_then(|t| t.shape().get(axis).copied())
                .map(|n| (g.value(v).name.clone(), n))
        })
        .collect()
}

/// Per BatchNormalization scale (by name), which of its entries belong to the `classes` of
/// `groups` (an analysis of `model`). Scales without such entries are left out.
fn removed_entries(
    model: &Model,
    groups: &crate::analysis::ChannelGroups,
    classes: &[usize],
    what: Masked,
) -> std::collections::BTreeMap<String, Vec<bool>> {
    use crate::ops::channel::{Map, Port};
    let removed: std::collections::HashSet<usize> = classes.iter().copied().collect();
    let g = &model.graph;
    let mut out = std::collections::BTreeMap::new();
    for m in &groups.members {
        let node = g.node(m.node);
        if masked_input(node, what) != Some((m.input, m.axis)) {
            continue;
        }
        let Some(gamma) = node.input(m.input) else {
            continue;
        };
        let Some(len) = g.init(gamma).and_then(|t| t.shape().get(m.axis).copied()) else {
            continue;
        };
        let slot_value = match m.slot.port {
            Port::In(p) => node.input(p),
            Port::Out(p) => node.output(p),
        };
        let Some(atoms) = slot_value.and_then(|v| groups.slots.get(&(v, m.slot.axis))) else {
            continue;
        };
        let flags = out
            .entry(g.value(gamma).name.clone())
            .or_insert_with(|| vec![false; len]);
        for (pos, &atom) in atoms.iter().enumerate() {
            let idx = match &m.map {
                Map::Identity => Some(pos),
                Map::Index(ix) => ix.get(pos).copied().flatten(),
            };
            let class = groups.class_of.get(atom).copied();
            if let (Some(i), Some(c)) = (idx, class) {
                if let (Some(f), true) = (flags.get_mut(i), removed.contains(&c)) {
                    *f = true;
                }
            }
        }
    }
    out.retain(|_, f: &mut Vec<bool>| f.iter().any(|&x| x));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masks of a plan, one round or several, are exactly the scale channels pruning
    /// removes: replaying the plan leaves every scale with its unmasked entries, in order. The
    /// criterion masks are those of the plan `lopper prune` makes with the same selection.
    #[test]
    fn masks_are_the_channels_pruning_removes() {
        use crate::analysis::importance::CriterionKind;
        use crate::plan::allocate::{Amount, Budget};
        use crate::prune::{prune, PruneOptions, Scored, Selection};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/pretrained/resnet20_cifar10.bn.onnx");
        if !path.is_file() {
            eprintln!("NOTICE: skipping: no shared models");
            return;
        }
        let model = Model::load(&path).unwrap();
        let mut three_rounds = Scored::new(CriterionKind::L1, Amount::Ratio(0.5));
        three_rounds.steps = 3;
        let cases = [
            Scored::new(CriterionKind::L1, Amount::Ratio(0.3)),
            three_rounds,
            Scored::new(CriterionKind::BnScale, Amount::Target(Budget::Flops(0.5))),
        ];
        for scored in cases {
            let mut pruned = model.clone();
            let opts = PruneOptions {
                selection: Selection::Scored(scored.clone()),
                verify_with: Vec::new(),
                tolerance: 0.0,
            };
            let report = prune(&mut pruned, &opts).unwrap();
            assert_eq!(report.plan.steps.len(), scored.steps);
            let masks = masks_from_plan(&model, &report.plan).unwrap();
            let value = |m: &Model, name: &str| {
                let v = m.graph.value_by_name(name).unwrap();
                m.graph.init(v).unwrap().to_f64_vec().unwrap()
            };
            let scales = tensors(&pruned, Masked::Scales);
            assert_eq!(scales.len(), 19);
            let mut masked = 0;
            for name in scales.keys() {
                let before = value(&model, name);
                let mask = masks.get(name).cloned().unwrap_or(vec![0.0; before.len()]);
                assert_eq!(mask.len(), before.len(), "{name}");
                masked += mask.iter().filter(|&&m| m > 0.0).count();
                let kept: Vec<f64> = before
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 0.0)
                    .map(|(v, _)| *v)
                    .collect();
                assert_eq!(value(&pruned, name), kept, "{name}, {scored:?}");
            }
            eprintln!(
                "{} {:?}, {} round(s): {masked} scale entries in {} scales masked",
                scored.criterion,
                scored.allocate.amount,
                scored.steps,
                masks.len()
            );
            assert!(masked > 0);
            assert_eq!(masks_from_criterion(&model, &scored).unwrap(), masks);
        }
        // A model without BatchNormalization: nothing to mask, said so.
        let mnist = path.with_file_name("mnist-8.onnx");
        let scored = Scored::new(CriterionKind::L1, Amount::Ratio(0.5));
        let err = masks_from_criterion(&Model::load(&mnist).unwrap(), &scored).unwrap_err();
        assert!(err
            .to_string()
            .contains("no channel of any BatchNormalization"));
    }

    /// Without BatchNormalization the filter masks mark exactly the filters pruning removes:
    /// zeroing them and pruning leaves every bank with its unmasked filters.
    #[test]
    fn filter_masks_are_the_filters_pruning_removes() {
        use crate::analysis::importance::CriterionKind;
        use crate::plan::allocate::{Amount, Budget};
        use crate::prune::{prune, PruneOptions, Scored, Selection};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/pretrained/mnist-8.onnx");
        if !path.is_file() {
            eprintln!("NOTICE: skipping: no shared models");
            return;
        }
        let model = crate::train::init::prepare_model(&Model::load(&path).unwrap()).unwrap();
        let scored = Scored::new(CriterionKind::L2, Amount::Target(Budget::Flops(0.3)));
        let mut pruned = model.clone();
        let opts = PruneOptions {
            selection: Selection::Scored(scored),
            verify_with: Vec::new(),
            tolerance: 0.0,
        };
        let report = prune(&mut pruned, &opts).unwrap();
        let masks = filter_masks_from_plan(&model, &report.plan).unwrap();
        let before = tensors(&model, Masked::Filters);
        let after = tensors(&pruned, Masked::Filters);
        // Removal renames the sliced banks: compare the totals.
        let masked_total: usize = masks
            .values()
            .map(|m| m.iter().filter(|&&v| v > 0.0).count())
            .sum();
        assert_eq!(before.len(), after.len());
        assert_eq!(
            after.values().sum::<usize>(),
            before.values().sum::<usize>() - masked_total
        );
        assert!(masks.keys().all(|k| before.contains_key(k)));
        assert!(masked_total > 0);
        assert!(
            masks_from_plan(&model, &report.plan).is_err(),
            "mnist-8 has no BatchNormalization scale to mask"
        );
    }
}
