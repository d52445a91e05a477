//! The lower stage: rewrites of the model about to be written that make it faster on the
//! runtimes without changing what it computes — today the subsampling shortcuts
//! ([`crate::passes::lower_shortcuts`]) — checked by the equivalence oracle against the model
//! as it was. It runs on the written model only (`lopper prune`, the end of `lopper
//! compress`), never before training (the rewritten shortcut would become a trainable
//! convolution); a latency target's candidates are timed in this form
//! ([`super::LatencyEvaluator::with_lowering`]). It does not prune.

use crate::error::{Error, Result};
use crate::ir::Model;
use crate::oracle::compare;
use crate::passes::lower_shortcuts;

use super::PruneOptions;

/// Lowers `model`, the result of a run with `opts`, in place; checks it against its previous
/// form on the runs' oracle runtimes (none: not checked) within their tolerance. Returns a
/// note saying what changed, or `None` when nothing did.
pub fn lower(model: &mut Model, opts: &PruneOptions) -> Result<Option<String>> {
    let (backends, tolerance) = (&opts.verify_with, opts.tolerance);
    let before = (!backends.is_empty()).then(|| model.clone());
    let macs = super::model_costs(model)?.macs;
    let done = lower_shortcuts(model)?;
    if done.count == 0 {
        return Ok(None);
    }
    let mut note = format!(
        "{} subsampling shortcut(s) (strided Slice, zero-channel Pad) written as 1x1 strided \
         convolutions, which ONNX Runtime runs in its blocked layout (+{:.2} M MACs, x{:.4})",
        done.count,
        done.added_macs as f64 / 1e6,
        (macs + done.added_macs) as f64 / macs.max(1) as f64
    );
    if let Some(before) = before {
        let cmp = compare(&before, model, backends, 2, 7)?;
        if cmp.max_rel_error > tolerance {
            return Err(Error::Graph(format!(
                "lowering the shortcuts changed the outputs (relative error {:.1e}): {:?}",
                cmp.max_rel_error, cmp.errors
            )));
        }
        note.push_str(&format!(
            " (checked: max relative error {:.1e})",
            cmp.max_rel_error
        ));
    }
    Ok(Some(note))
}
