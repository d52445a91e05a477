//! The prune stage: the run's selection, or the masked sparse stage's choice replayed after
//! its scales are set to zero (their constants folded into the consumers).

use crate::error::Result;
use crate::ir::Model;
use crate::pipeline::PruneOptions;

use super::{prune_by, Context, Observer};

/// The prune stage: `opts.prune` (or the masked sparse stage's choice, replayed); the plan
/// goes to the work folder. Returns the stage's line and the pruning pipeline's notes.
pub(super) fn prune_stage(
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<String>)> {
    let masked = ctx.mask_plan.exists();
    let mut snapped = String::new();
    let prune = if masked {
        let plan = crate::plan::PlanFile::load(&ctx.mask_plan)?;
        let (n, largest) = zero_masked(model, &plan)?;
        snapped = format!(
            "; {n} masked scales or filters (largest norm {largest:.1e}) set to 0 first, their \
             constant outputs folded into the consumers"
        );
        PruneOptions {
            selection: crate::pipeline::Selection::Plan(plan),
            ..ctx.opts.prune.clone()
        }
    } else {
        ctx.opts.prune.clone()
    };
    let r = prune_by(model, &prune, ctx, observer)?;
    r.plan.save(&ctx.plan)?;
    if masked {
        // The exact compensation (verified by the oracle above) adds a per-pixel map and an
        // Add after every consumer: slower than the pruned model should be. Collapse them.
        let n = crate::passes::collapse_compensation(model)?;
        if n > 0 {
            snapped.push_str(&format!(
                "; {n} compensation maps collapsed into biases (exact away from the border)"
            ));
        }
    }
    let oracle = r.oracle.as_ref().map(oracle_note).unwrap_or_default();
    let line = format!(
        "{} channels removed ({}{}){oracle}{snapped}",
        r.removed,
        r.criterion,
        if masked {
            ": the sparse stage's mask"
        } else {
            ""
        }
    );
    Ok((line, r.notes))
}

/// The oracle's verdict for the stage's line: its largest error, and when the outputs did not
/// vary with the random inputs, what carried the check (the values inside) or that nothing did.
fn oracle_note(o: &crate::oracle::Comparison) -> String {
    let how = match &o.inside {
        _ if o.outputs_vary() => String::new(),
        Some(i) if o.exercised() => format!(
            " over {} values inside, {} varying: the outputs do not vary with the input",
            i.compared, i.varying
        ),
        _ => " (not verified: nothing varies with the input)".into(),
    };
    format!(", oracle {:.1e}{how}", o.max_rel_error)
}

/// Sets to zero what masked sparse training drove towards zero for the channels `plan`
/// removes: their BatchNormalization scales or, in a network without, their filters. Removing
/// those channels then keeps their constant output (`act(beta)`, or the bias), which
/// [`crate::passes::remove_channels()`] folds into the consumers, instead of dropping it.
/// Returns how many scales or filters were set and the largest |γ| or filter norm among them.
fn zero_masked(model: &mut Model, plan: &crate::plan::PlanFile) -> Result<(usize, f64)> {
    use crate::train::masks::{filter_masks_from_plan, masks_from_plan};
    let scales = crate::pipeline::recalibrate::has_running_statistics(model);
    let masks = if scales {
        masks_from_plan(model, plan)?
    } else {
        filter_masks_from_plan(model, plan)?
    };
    let (mut n, mut largest) = (0, 0f64);
    for (name, mask) in &masks {
        // Scales: one entry per channel (axis 0); filter banks: along their filter axis.
        let axis = if scales {
            Some(0)
        } else {
            crate::train::masks::filter_axis(model, name)
        };
        let g = &mut model.graph;
        let (Some(axis), Some(v)) = (axis, g.value_by_name(name)) else {
            continue;
        };
        let Some(t) = g.init(v).filter(|t| t.dtype() == crate::ir::DType::F32) else {
            continue;
        };
        let shape = t.shape().to_vec();
        let (Some(mut values), Some(&dim)) = (t.to_f64_vec(), shape.get(axis)) else {
            continue;
        };
        if dim != mask.len() {
            continue;
        }
        let stride: usize = shape[axis + 1..].iter().product();
        let mut norms = vec![0f64; dim];
        for (i, x) in values.iter_mut().enumerate() {
            let f = (i / stride.max(1)) % dim;
            if mask[f] > 0.0 {
                norms[f] += *x * *x;
                *x = 0.0;
            }
        }
        for (f, m) in mask.iter().enumerate() {
            if *m > 0.0 {
                largest = largest.max(norms[f].sqrt());
                n += 1;
            }
        }
        let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        g.set_init(v, crate::ir::Tensor::from_f32(shape, &values));
    }
    Ok((n, largest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{Comparison, Inside};

    fn comparison(variation: f64, inside: Option<(usize, usize)>) -> Comparison {
        Comparison {
            errors: vec![("tract".into(), 2e-7)],
            max_rel_error: 2e-7,
            skipped: Vec::new(),
            variation: Some(variation),
            reduced: None,
            inside: inside.map(|(compared, varying)| Inside {
                compared,
                varying,
                max_rel_error: 1e-7,
                deepest_varying: None,
                errors: Vec::new(),
            }),
        }
    }

    #[test]
    fn the_stage_line_says_what_carried_the_check() {
        assert_eq!(
            oracle_note(&comparison(0.3, Some((9, 9)))),
            ", oracle 2.0e-7"
        );
        assert_eq!(
            oracle_note(&comparison(1e-7, Some((88, 47)))),
            ", oracle 2.0e-7 over 88 values inside, 47 varying: the outputs do not vary with the input"
        );
        for inside in [None, Some((5, 0))] {
            assert!(oracle_note(&comparison(1e-7, inside))
                .ends_with("(not verified: nothing varies with the input)"));
        }
    }
}
