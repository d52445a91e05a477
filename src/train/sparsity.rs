//! The `--sparsity` mini-language of `lopper train`: which sparsity regularizers a run gets
//! and how their strength evolves.
//!
//! ```text
//! l1-bn=W                    L1 on every BatchNormalization scale, weight W
//! l1-bn-augmented=W          the same, strength growing linearly from 0
//! group-lasso=W              group lasso on convolution filters
//! masked-l1=PLAN.json:W      L1 on the scales of the channels a `lopper prune --save-plan`
//!                            plan removes (any number of steps)
//! masked-l1=CRITERION@AMOUNT:W
//!                            ... of the channels `lopper prune --criterion CRITERION` would
//!                            remove (AMOUNT: a ratio like 0.5, flops=R, params=R or
//!                            threshold=T; data-free criteria only)
//! ```
//!
//! `W` is a number above 0. An existing file is read as a plan even when its name has an `@`.
//! The masks come from [`super::masks`].

use std::path::Path;

use crate::analysis::importance::CriterionKind;
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::plan::allocate::{Amount, Budget};
use crate::plan::file::PlanFile;
use crate::prune::Scored;

use super::masks::{masks_from_criterion, masks_from_plan};
use super::options::LambdaSchedule;
use super::regularize::Regularizer;

/// A parsed `--sparsity` spec.
#[derive(Clone, Debug, Default)]
pub struct Sparsity {
    /// The regularizers.
    pub regularizers: Vec<Regularizer>,
    /// Their strength over time.
    pub lambda: LambdaSchedule,
    /// For masked L1: where the masks came from (the spec's plan file or criterion and amount).
    pub mask_source: Option<String>,
}

impl Sparsity {
    /// For masked L1, a line saying how many channels of how many scales are masked and
    /// where that came from; `None` otherwise.
    pub fn summary(&self) -> Option<String> {
        let source = self.mask_source.as_deref()?;
        let masks = self.regularizers.iter().find_map(|r| match r {
            Regularizer::MaskedL1Gamma { masks, .. } => Some(masks),
            _ => None,
        })?;
        let channels: usize = masks
            .values()
            .map(|m| m.iter().filter(|&&v| v > 0.0).count())
            .sum();
        Some(format!(
            "masked L1 ({source}): {channels} channels of {} BatchNormalization scales",
            masks.len()
        ))
    }
}

/// Parses a `--sparsity` spec (see the module docs); `model` is the model to train, on which
/// masked L1 builds its masks.
pub fn parse_sparsity(spec: &str, model: &Model) -> Result<Sparsity> {
    let bad = || {
        Error::Usage(format!(
            "bad --sparsity '{spec}': expected l1-bn=W, l1-bn-augmented=W, group-lasso=W, \
             masked-l1=PLAN.json:W or masked-l1=CRITERION@AMOUNT:W (W a number > 0)"
        ))
    };
    let (kind, value) = spec.split_once('=').ok_or_else(bad)?;
    let weight = |s: &str| -> Result<f32> {
        let w: f32 = s.trim().parse().map_err(|_| bad())?;
        if !(w.is_finite() && w > 0.0) {
            return Err(bad());
        }
        Ok(w)
    };
    let one = |r: Regularizer, lambda: LambdaSchedule| Sparsity {
        regularizers: vec![r],
        lambda,
        mask_source: None,
    };
    Ok(match kind {
        "l1-bn" => one(
            Regularizer::L1Gamma {
                weight: weight(value)?,
            },
            LambdaSchedule::Constant,
        ),
        "l1-bn-augmented" => one(
            Regularizer::L1Gamma {
                weight: weight(value)?,
            },
            LambdaSchedule::Augmented,
        ),
        "group-lasso" => one(
            Regularizer::GroupLasso {
                weight: weight(value)?,
                eps: 1e-8,
            },
            LambdaSchedule::Constant,
        ),
        "masked-l1" => {
            let (source, w) = value.rsplit_once(':').ok_or_else(bad)?;
            let w = weight(w)?;
            let masks = match source.rsplit_once('@') {
                Some((criterion, amount)) if !Path::new(source).is_file() => {
                    let scored = Scored::new(
                        CriterionKind::parse(criterion.trim())?,
                        parse_mask_amount(amount)?,
                    );
                    masks_from_criterion(model, &scored)?
                }
                _ => masks_from_plan(model, &PlanFile::load(source)?)?,
            };
            Sparsity {
                regularizers: vec![Regularizer::MaskedL1Gamma { weight: w, masks }],
                lambda: LambdaSchedule::Constant,
                mask_source: Some(source.to_string()),
            }
        }
        _ => return Err(bad()),
    })
}

/// The AMOUNT of `masked-l1=CRITERION@AMOUNT:W`: a ratio of channels per group (`0.5`), a
/// fraction of FLOPs or parameters kept (`flops=R`, `params=R`), or a score threshold
/// (`threshold=T`).
fn parse_mask_amount(s: &str) -> Result<Amount> {
    let s = s.trim();
    let usage = |m: String| Error::Usage(m);
    let number = |v: &str| -> Result<f64> {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| usage(format!("masked-l1: '{v}' in amount '{s}' is not a number")))
    };
    let Some((kind, v)) = s.split_once('=') else {
        let r = number(s)?;
        if !(r > 0.0 && r < 1.0) {
            return Err(usage(format!(
                "masked-l1: the ratio must be in (0, 1), got {r}"
            )));
        }
        return Ok(Amount::Ratio(r));
    };
    let v = number(v)?;
    let fraction = || {
        if v > 0.0 && v <= 1.0 {
            Ok(v)
        } else {
            Err(usage(format!(
                "masked-l1: the fraction to keep must be in (0, 1], got {v}"
            )))
        }
    };
    Ok(match kind.trim() {
        "flops" | "macs" => Amount::Target(Budget::Flops(fraction()?)),
        "params" => Amount::Target(Budget::Params(fraction()?)),
        "threshold" => Amount::Threshold(v),
        "latency" => {
            return Err(usage(
                "masked-l1: a latency target needs timing runs; make a plan with `lopper prune \
                 --target latency=R --save-plan PLAN.json` and pass masked-l1=PLAN.json:W"
                    .into(),
            ))
        }
        k => {
            return Err(usage(format!(
                "masked-l1: unknown amount '{k}=' (expected a ratio like 0.5, flops=R, params=R \
                 or threshold=T)"
            )))
        }
    })
}
