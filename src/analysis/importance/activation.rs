//! `activation`: the mean |activation| of each class over calibration data, as gathered
//! beforehand into [`ActivationStats::mean_abs`](super::ActivationStats). This file only
//! reads the statistics; it neither runs the model nor gathers them, and it errors (Usage)
//! when no statistics were given.

use super::{ActivationStats, Criterion, ScoreCx, Scores};
use crate::error::{Error, Result};

/// The mean-|activation| criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Activation;

impl Criterion for Activation {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let stats = stats(cx, "activation")?;
        let values = per_class(cx, "activation", "mean_abs", &stats.mean_abs)?;
        Ok(Scores {
            values: values.to_vec(),
            ..Default::default()
        })
    }
}

/// The statistics of `cx`, or the Usage error naming criterion `name`.
pub(crate) fn stats<'a>(cx: &ScoreCx<'a>, name: &str) -> Result<&'a ActivationStats> {
    cx.activations.ok_or_else(|| {
        Error::Usage(format!(
            "criterion '{name}' needs calibration data: pass --data ..."
        ))
    })
}

/// `values` when it has one entry per class of `cx`, else a Usage error.
pub(crate) fn per_class<'v>(
    cx: &ScoreCx,
    name: &str,
    field: &str,
    values: &'v [f64],
) -> Result<&'v [f64]> {
    let n = cx.groups.class_atoms.len();
    if values.len() != n {
        return Err(Error::Usage(format!(
            "criterion '{name}': activation statistics ({field}) cover {} channels, the analysis has {n}",
            values.len()
        )));
    }
    Ok(values)
}
