//! Channel importance: a score for every class (removable channel, see
//! [`crate::analysis::channels`]) of the dependency groups, from one [`Criterion`] per file.
//!
//! A criterion computes *raw* per-class scores (higher = more important), reducing over the
//! class's members with [`Reduce`]; [`score`] then normalises them per group ([`Normalize`])
//! so that one global threshold ranks channels of different layers fairly. Criteria read
//! weights (and, for data-driven ones, activation statistics gathered beforehand); they never
//! change the model and they do not choose what to remove (see [`crate::plan`]).

use std::fmt;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::Shapes;
use crate::error::{Error, Result};
use crate::ir::Model;

pub mod activation;
pub mod apoz;
pub mod bn_scale;
pub mod epruner;
pub mod filters;
pub mod fpgm;
pub mod l1;
pub mod l2;
pub mod lamp;
pub mod multi;
pub mod random;
pub mod taylor;

pub use l1::l1_scores;

/// How a class's scores over several members (e.g. the producers of a residual group) are
/// combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduce {
    /// Sum over members.
    #[default]
    Sum,
    /// Mean over members.
    Mean,
    /// Largest member.
    Max,
}

impl Reduce {
    /// Parses `sum`, `mean` or `max`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(Reduce::Sum),
            "mean" => Ok(Reduce::Mean),
            "max" => Ok(Reduce::Max),
            _ => Err(Error::Usage(format!(
                "unknown reduction '{s}' (expected sum, mean or max)"
            ))),
        }
    }

    /// Combines `values` (an empty slice gives 0).
    pub fn apply(self, values: &[f64]) -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        match self {
            Reduce::Sum => values.iter().sum(),
            Reduce::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Reduce::Max => values.iter().copied().fold(f64::MIN, f64::max),
        }
    }
}

/// Per-group normalisation applied by [`score`] after the criterion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Normalize {
    /// Divide by the group's largest score (so every group's best channel scores 1).
    #[default]
    Max,
    /// Keep raw scores (e.g. network slimming's global threshold on |gamma|).
    None,
}

/// Per-channel activation statistics from calibration batches (see
/// [`activation`](self) criteria), indexed like the classes.
#[derive(Clone, Debug, Default)]
pub struct ActivationStats {
    /// Mean |activation| of every class over the calibration data (over the tensors its
    /// consumers read).
    pub mean_abs: Vec<f64>,
    /// Fraction of zero activations of every class (APoZ).
    pub zero_fraction: Vec<f64>,
    /// Images the statistics were gathered over.
    pub samples: usize,
}

/// What a criterion sees.
pub struct ScoreCx<'a> {
    /// The model (simplified, BatchNormalization kept).
    pub model: &'a Model,
    /// Its channel groups.
    pub groups: &'a ChannelGroups,
    /// Its shapes.
    pub shapes: &'a Shapes,
    /// How member scores combine.
    pub reduce: Reduce,
    /// Seed of random criteria.
    pub seed: u64,
    /// Activation statistics, when calibration data was given.
    pub activations: Option<&'a ActivationStats>,
}

/// A criterion's result.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    /// One score per class (higher = more important). Classes of blocked groups may score
    /// anything; they are never removed.
    pub values: Vec<f64>,
    /// Channels the criterion itself would keep (`true`) when no budget is given (EPruner's
    /// exemplars); `None` for criteria that only rank.
    pub keep: Option<Vec<bool>>,
    /// Things the user should know (e.g. a fallback taken), one line each.
    pub notes: Vec<String>,
}

/// One importance criterion.
pub trait Criterion {
    /// Raw per-class scores.
    fn score(&self, cx: &ScoreCx) -> Result<Scores>;
}

/// The criteria, as parsed from the command line (`--criterion`).
#[derive(Clone, Debug, PartialEq)]
pub enum CriterionKind {
    /// L1 norm of the producer filters.
    L1,
    /// L2 norm of the producer filters.
    L2,
    /// |gamma| of the BatchNormalization members (network slimming).
    BnScale,
    /// Distance to the other filters of the layer (filter pruning via geometric median).
    Fpgm,
    /// Layer-adaptive magnitude score.
    Lamp,
    /// Uniform random scores (a baseline), seeded.
    Random,
    /// Mean |activation| on calibration data.
    Activation,
    /// 1 − average percentage of zeros on calibration data.
    Apoz,
    /// First-order Taylor |g·a| (needs the training compiler).
    Taylor,
    /// Affinity propagation exemplars.
    Epruner,
    /// Weighted sum of several normalised criteria.
    Multi(Vec<(CriterionKind, f64)>),
}

impl CriterionKind {
    /// Parses a name, or `multi:l1=0.5,bn-scale=0.5` for a weighted combination.
    pub fn parse(s: &str) -> Result<Self> {
        let single = |name: &str| -> Result<Self> {
            Ok(match name {
                "l1" => CriterionKind::L1,
                "l2" => CriterionKind::L2,
                "bn-scale" => CriterionKind::BnScale,
                "fpgm" => CriterionKind::Fpgm,
                "lamp" => CriterionKind::Lamp,
                "random" => CriterionKind::Random,
                "activation" => CriterionKind::Activation,
                "apoz" => CriterionKind::Apoz,
                "taylor" => CriterionKind::Taylor,
                "epruner" => CriterionKind::Epruner,
                _ => {
                    return Err(Error::Usage(format!(
                        "unknown criterion '{name}' (expected l1, l2, bn-scale, fpgm, lamp, random, activation, apoz, taylor, epruner or multi:NAME=W,...)"
                    )))
                }
            })
        };
        let Some(rest) = s.strip_prefix("multi:") else {
            return single(s);
        };
        let mut parts = Vec::new();
        for item in rest.split(',').filter(|p| !p.is_empty()) {
            let (name, w) = item.split_once('=').ok_or_else(|| {
                Error::Usage(format!("multi criterion part '{item}' must be NAME=WEIGHT"))
            })?;
            let w: f64 = w.trim().parse().map_err(|_| {
                Error::Usage(format!("multi criterion weight '{w}' is not a number"))
            })?;
            if !w.is_finite() || w < 0.0 {
                return Err(Error::Usage(format!(
                    "multi criterion weight for '{name}' must be finite and ≥ 0, got {w}"
                )));
            }
            parts.push((single(name.trim())?, w));
        }
        if parts.is_empty() || parts.iter().all(|(_, w)| *w == 0.0) {
            return Err(Error::Usage(
                "multi criterion needs at least one part with a positive weight".into(),
            ));
        }
        Ok(CriterionKind::Multi(parts))
    }

    /// Errors for criteria this build cannot compute (before any data is read).
    pub fn check_available(&self) -> Result<()> {
        match self {
            CriterionKind::Taylor => Err(Error::Usage(taylor::UNAVAILABLE.into())),
            CriterionKind::Multi(parts) => parts.iter().try_for_each(|(k, _)| k.check_available()),
            _ => Ok(()),
        }
    }

    /// Whether scoring needs activation statistics (`--data`).
    pub fn needs_data(&self) -> bool {
        match self {
            CriterionKind::Activation | CriterionKind::Apoz | CriterionKind::Taylor => true,
            CriterionKind::Multi(parts) => parts.iter().any(|(k, _)| k.needs_data()),
            _ => false,
        }
    }
}

impl fmt::Display for CriterionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            CriterionKind::L1 => "l1",
            CriterionKind::L2 => "l2",
            CriterionKind::BnScale => "bn-scale",
            CriterionKind::Fpgm => "fpgm",
            CriterionKind::Lamp => "lamp",
            CriterionKind::Random => "random",
            CriterionKind::Activation => "activation",
            CriterionKind::Apoz => "apoz",
            CriterionKind::Taylor => "taylor",
            CriterionKind::Epruner => "epruner",
            CriterionKind::Multi(parts) => {
                let p: Vec<String> = parts.iter().map(|(k, w)| format!("{k}={w}")).collect();
                return write!(f, "multi:{}", p.join(","));
            }
        };
        f.write_str(s)
    }
}

/// Divides every prunable group's scores by the group's largest (when positive), then
/// spreads the scores of groups whose classes bundle several channels of a tensor
/// ([`spread_bundles`]).
pub fn normalize(groups: &ChannelGroups, values: &mut [f64], how: Normalize) {
    if how == Normalize::None {
        return;
    }
    for grp in &groups.groups {
        let max = grp
            .classes
            .iter()
            .filter_map(|c| values.get(*c))
            .copied()
            .fold(0f64, f64::max);
        if max > 0.0 {
            for &c in &grp.classes {
                if let Some(v) = values.get_mut(c) {
                    *v /= max;
                }
            }
        }
    }
    spread_bundles(groups, values);
}

/// Maps the normalised scores of every prunable group whose classes bundle several channels
/// of a tensor (a grouped convolution losing whole groups: 16 channels a class in
/// regnet_x_400mf) by rank onto the spread of the plain channels' scores: its `r`-th weakest
/// of `n` classes scores the `(r + ½)/n` quantile of every plain channel's score. A bundle's
/// score sums or averages its channels', so its group's scores sit close together near the
/// group's best (0.8–1 where plain channels spread over 0–1), and one global threshold would
/// take every plain channel before any bundle; mapped, a threshold takes about the same share
/// of a bundle group's classes as of the plain channels. Order within a group is kept; a
/// score of 0 stays 0. Without plain channels nothing changes.
fn spread_bundles(groups: &ChannelGroups, values: &mut [f64]) {
    let widths = groups.class_widths();
    let prunable = || groups.groups.iter().filter(|g| g.prunable());
    let mut plain: Vec<f64> = prunable()
        .flat_map(|g| g.classes.iter())
        .filter(|c| widths.get(**c) == Some(&1))
        .filter_map(|c| values.get(*c).copied())
        .filter(|v| v.is_finite())
        .collect();
    if plain.is_empty() {
        return;
    }
    plain.sort_by(f64::total_cmp);
    for grp in prunable() {
        if grp.classes.iter().all(|c| widths.get(*c) == Some(&1)) {
            continue;
        }
        let mut order: Vec<usize> = grp
            .classes
            .iter()
            .copied()
            .filter(|c| *c < values.len())
            .collect();
        order.sort_by(|a, b| values[*a].total_cmp(&values[*b]).then(a.cmp(b)));
        let n = order.len();
        for (r, c) in order.into_iter().enumerate() {
            if values[c] > 0.0 {
                let q = (r as f64 + 0.5) / n as f64;
                let at = ((q * plain.len() as f64) as usize).min(plain.len() - 1);
                values[c] = plain[at];
            }
        }
    }
}

/// The criterion `kind` names, ready to run.
pub fn criterion(kind: &CriterionKind) -> Box<dyn Criterion> {
    match kind {
        CriterionKind::L1 => Box::new(l1::L1),
        CriterionKind::L2 => Box::new(l2::L2),
        CriterionKind::BnScale => Box::new(bn_scale::BnScale),
        CriterionKind::Fpgm => Box::new(fpgm::Fpgm),
        CriterionKind::Lamp => Box::new(lamp::Lamp),
        CriterionKind::Random => Box::new(random::Random),
        CriterionKind::Activation => Box::new(activation::Activation),
        CriterionKind::Apoz => Box::new(apoz::Apoz),
        CriterionKind::Taylor => Box::new(taylor::Taylor),
        CriterionKind::Epruner => Box::new(epruner::Epruner),
        CriterionKind::Multi(parts) => Box::new(multi::Multi {
            parts: parts.clone(),
        }),
    }
}

/// Runs criterion `kind` and normalises its scores per group with `how`, except LAMP, whose
/// scores are already comparable across groups (each group's best scores 1) and are returned
/// as computed. Errors when the criterion does (e.g. missing calibration data) or returns a
/// score count other than the number of classes. It does not choose channels.
pub fn score(kind: &CriterionKind, cx: &ScoreCx, how: Normalize) -> Result<Scores> {
    let mut scores = criterion(kind).score(cx)?;
    let n = cx.groups.class_atoms.len();
    if scores.values.len() != n {
        return Err(Error::Graph(format!(
            "criterion '{kind}' returned {} scores for {n} channels",
            scores.values.len()
        )));
    }
    if *kind != CriterionKind::Lamp {
        normalize(cx.groups, &mut scores.values, how);
    }
    Ok(scores)
}
