//! The flags that say what to remove (amount, criterion, allocation), shared by `lopper
//! prune` and `lopper compress`, and their translation into a [`Selection`].

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::analysis::importance::{CriterionKind, Normalize, Reduce};
use crate::pipeline::{LatencyOptions, LatencySearch, Scored, Selection};
use crate::plan::allocate::{AllocateOptions, Amount, Budget, Constraints, Granularity, Scope};
use crate::plan::PlanFile;

/// `--scope`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ScopeArg {
    /// The same ratio in every group.
    Local,
    /// One threshold over all normalised scores.
    Global,
}

/// `--allocation`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AllocationArg {
    /// Channels ranked individually.
    Channel,
    /// AdaPruner: each group (block) keeps channels in proportion to its mean BN gamma.
    Block,
}

/// What to remove, by which criterion, allocated how.
#[derive(clap::Args, Debug)]
pub struct SelectionArgs {
    /// Remove this fraction of channels: of every group (--scope local, the default here) or
    /// of all prunable channels by one threshold (--scope global).
    #[arg(long, help_heading = "What to remove")]
    pub ratio: Option<f64>,
    /// Meet a budget: flops=R (MACs kept), params=R or latency=R (measured with --backend on
    /// --device), found by bisection, within --target-tolerance for flops/params.
    #[arg(long, value_parser = parse_target, help_heading = "What to remove")]
    pub target: Option<Budget>,
    /// Remove every channel whose (normalised) score is below this.
    #[arg(long, help_heading = "What to remove")]
    threshold: Option<f64>,
    /// Remove exactly the channels that contribute nothing or a constant (all-zero filters,
    /// BatchNormalization gamma = 0), compensating constants in the consumers' biases.
    #[arg(long, help_heading = "What to remove")]
    remove_dead: bool,
    /// With --remove-dead: first set BatchNormalization gammas with |gamma| below this to 0
    /// (after sparse training), so those channels are removed with their constant folded in.
    #[arg(long, requires = "remove_dead", help_heading = "What to remove")]
    gamma_below: Option<f64>,
    /// Replay a plan written by --save-plan (same model ⇒ byte-identical output).
    #[arg(long, help_heading = "What to remove")]
    pub plan: Option<PathBuf>,
    /// Importance criterion: l1, l2, bn-scale, fpgm, lamp, random, activation, apoz, taylor,
    /// epruner (alone: keeps its exemplars), or multi:l1=0.5,bn-scale=0.5.
    #[arg(long, default_value = "l1", value_parser = |s: &str| CriterionKind::parse(s), help_heading = "Criterion")]
    pub criterion: CriterionKind,
    /// How a channel's scores over several producers combine.
    #[arg(long, default_value = "sum", value_parser = |s: &str| Reduce::parse(s), help_heading = "Criterion")]
    reduce: Reduce,
    /// Use raw scores instead of scores divided by each group's largest.
    #[arg(long, help_heading = "Criterion")]
    raw_scores: bool,
    /// Seed of the random criterion; in `compress` also of every training stage (shuffling,
    /// augmentation, Dropout noise).
    #[arg(long, default_value_t = 0, help_heading = "Criterion")]
    pub seed: u64,
    /// Same ratio per group (local) or one threshold over all groups (global)
    /// [default: local for --ratio, global otherwise].
    #[arg(long, value_enum, help_heading = "Allocation")]
    scope: Option<ScopeArg>,
    /// Rank channels, or size whole groups by their BN importance (AdaPruner).
    #[arg(
        long,
        value_enum,
        default_value = "channel",
        help_heading = "Allocation"
    )]
    allocation: AllocationArg,
    /// Protect threshold per group: a fraction (0.1), a count (4), or both (0.1,4).
    #[arg(long, default_value = "0.1", value_parser = parse_min_keep, help_heading = "Allocation")]
    min_keep: (f64, usize),
    /// Largest fraction of any group removed.
    #[arg(long, default_value_t = 1.0, help_heading = "Allocation")]
    max_ratio: f64,
    /// Kept widths are multiples of K (hardware-friendly); groups narrower than K are left
    /// alone. `auto`: the multiple the runtime's convolutions run fastest at, measured once
    /// per runtime (a 3×3 convolution timed at widths 40 to 72: ONNX Runtime's CPU kernels
    /// work in blocks of 8 or 16 channels) and cached (see --width-table), applied in groups
    /// of one multiple or more (a convolution group is then kept whole or cut by blocks),
    /// exact widths in narrower groups and where no block shows; `1`: exact widths
    /// everywhere.
    #[arg(long, default_value = "auto", value_parser = parse_round_to, value_name = "auto|K", help_heading = "Allocation")]
    round_to: RoundTo,
    /// The file `--round-to auto` reads its measured multiple from (when it exists: pin one
    /// machine's choice for all) or writes it to [default: $LOPPER_WIDTH_TABLE, else a file
    /// per runtime under $LOPPER_CACHE_DIR, $XDG_CACHE_HOME/lopper or ~/.cache/lopper].
    #[arg(long, value_name = "FILE", help_heading = "Allocation")]
    width_table: Option<PathBuf>,
    /// Depth pruning: the share (0 to 1) of a `--target` removal taken by dropping whole
    /// residual branches, the weakest first (by what each adds to its residual sum, measured
    /// on seeded random inputs), before channels are removed from the rest (for
    /// `latency=R`: a share of 1 − R of the MACs; when not given, a latency target searches
    /// with 0.75 and with 1, and with shares between when 1 is predicted under the target,
    /// and keeps whichever keeps more MACs without being under it). A dropped branch takes its
    /// layers' fixed per-layer time too, which narrower layers keep. 0: none
    /// [default: 0.75 in `prune` and `compress --method plain`, 0 for the other methods].
    #[arg(long, value_parser = parse_share, value_name = "SHARE", help_heading = "Allocation")]
    pub drop_blocks: Option<f64>,
    /// Leave groups touching nodes whose name matches this glob intact (repeatable).
    #[arg(long, help_heading = "Allocation")]
    ignore: Vec<String>,
    /// Prune in N rounds, re-analysing and re-scoring the model between rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Allocation")]
    steps: u32,
    /// Accepted distance of the reached flops/params/latency ratio from the target.
    #[arg(long, default_value_t = 0.005, help_heading = "Allocation")]
    target_tolerance: f64,
    /// How `--target latency=R` judges candidates: `table` predicts them from each layer
    /// timed alone at sampled widths, in `--latency-order`, and confirms the choice by timing
    /// (1 to 4; a table being built learns from them); `curve` removes channels in the FLOPs
    /// target's order and predicts a candidate's latency from its MACs through the
    /// whole-model timings made so far (1 to 4; no layer timed: faster, and as good where
    /// time follows MACs); `measured` bisects on whole-model timings (at most 10). `table` and
    /// `curve` keep what they timed in `--latency-table`: the same file, the same choice
    /// [default: `table` at `--latency-batch 1`, `curve` at larger batches, where timing
    /// every layer alone takes minutes].
    #[arg(long, value_enum, help_heading = "Allocation")]
    latency_search: Option<LatencySearchArg>,
    /// The latency table's JSON file: read when it exists, extended (atomically) when the
    /// model has layers it lacks. The same table gives the same choice.
    #[arg(long, value_name = "FILE", help_heading = "Allocation")]
    latency_table: Option<std::path::PathBuf>,
    /// Under `--target latency=R` with `--latency-search table`: `knapsack` orders channels by score over
    /// what their group's MACs cost in time, so that slow MACs go first and the target keeps
    /// more of them; `score` by score alone (like a FLOPs target).
    #[arg(
        long,
        value_enum,
        default_value = "knapsack",
        help_heading = "Allocation"
    )]
    latency_order: LatencyOrderArg,
    /// Images per timed run under `--target latency=R`: 1 times one request; a serving batch
    /// (e.g. 32) times throughput-bound inference. Tables are per batch size.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Allocation"
    )]
    latency_batch: u32,
}

/// `--latency-order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LatencyOrderArg {
    /// Score over the latency cost of the group's MACs.
    Knapsack,
    /// Score alone.
    Score,
}

/// `--latency-search`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LatencySearchArg {
    /// Predict with a per-layer latency table.
    Table,
    /// Predict from MACs and whole-model timings.
    Curve,
    /// Measure whole models.
    Measured,
}

fn parse_target(s: &str) -> std::result::Result<Budget, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected flops=R, params=R or latency=R"))?;
    let v: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a number"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "the target fraction to keep must be in (0, 1], got {v}"
        ));
    }
    match k.trim() {
        "flops" | "macs" => Ok(Budget::Flops(v)),
        "params" => Ok(Budget::Params(v)),
        "latency" => Ok(Budget::Latency(v)),
        k => Err(format!(
            "unknown target '{k}' (expected flops, params or latency)"
        )),
    }
}

/// What `auto` rounds to, and the narrowest group it rounds, until
/// [`SelectionArgs::resolve_round_to`] measures the runtime (and where nothing is measured:
/// plans, dead channels).
pub const AUTO_ROUND_TO: (usize, usize) = (8, 32);

/// `--round-to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundTo {
    /// Measured per runtime.
    Auto,
    /// Multiples of this in every group.
    Multiple(usize),
}

/// `--round-to`: `auto` or a multiple.
fn parse_round_to(s: &str) -> std::result::Result<RoundTo, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(RoundTo::Auto);
    }
    match s.parse::<usize>() {
        Ok(k) if (1..=1024).contains(&k) => Ok(RoundTo::Multiple(k)),
        _ => Err(format!("'{s}' is not 'auto' or a multiple from 1 to 1024")),
    }
}

/// `--drop-blocks` when not given: the share of a target's removal taken by whole branches
/// in `lopper prune` and `compress --method plain` (the other methods prune by width unless
/// asked).
pub const DEFAULT_DROP_BLOCKS: f64 = 0.75;

fn parse_share(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a share from 0 to 1, got '{s}'")),
    }
}

fn parse_min_keep(s: &str) -> std::result::Result<(f64, usize), String> {
    let (mut frac, mut count) = (0.0, 1);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('.') {
            frac = part
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("'{part}': a fraction in [0, 1] expected"))?;
        } else {
            count = part
                .parse::<usize>()
                .map_err(|_| format!("'{part}': a channel count expected"))?
                .max(1);
        }
    }
    Ok((frac, count))
}

impl SelectionArgs {
    /// `(multiple, narrowest group rounded)` of `--round-to` before any measurement.
    /// `--latency-search`, or its default for `--latency-batch`: the per-layer table at
    /// batch 1; at larger batches the curve (mobilenet_v2 at batch 32, ×0.5: the table took
    /// 283 to 333 s a run and landed 2 runs of 3 within ±5%, keeping 56% of the FLOPs; the
    /// curve 54 to 98 s and 3 of 3, keeping 53%).
    fn latency_search(&self) -> LatencySearchArg {
        self.latency_search.unwrap_or(if self.latency_batch > 1 {
            LatencySearchArg::Curve
        } else {
            LatencySearchArg::Table
        })
    }

    fn round_to_pair(&self) -> (usize, usize) {
        match self.round_to {
            RoundTo::Auto => AUTO_ROUND_TO,
            RoundTo::Multiple(k) => (k, 0),
        }
    }

    /// Resolves `--round-to auto` of a scored `selection` for the runtime `backend`/`runtime`:
    /// the measured multiple ([`crate::pipeline::width_steps`], timed on the first run and
    /// cached) replaces the placeholder. Returns the line that says what was chosen; `None`
    /// when nothing is rounded automatically (an explicit multiple, a plan, dead channels).
    /// A cache that cannot be written is said in that line, not fatal.
    pub fn resolve_round_to(
        &self,
        selection: &mut Selection,
        backend: crate::runtime::BackendKind,
        runtime: &crate::runtime::RuntimeOptions,
    ) -> crate::Result<Option<String>> {
        let Selection::Scored(scored) = selection else {
            return Ok(None);
        };
        if self.round_to != RoundTo::Auto {
            return Ok(None);
        }
        let pinned = self.width_table.clone().or_else(|| {
            std::env::var_os("LOPPER_WIDTH_TABLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let found = crate::pipeline::width_steps::find(backend, runtime, pinned.as_deref())?;
        let w = &found.steps;
        let c = &mut scored.allocate.constraints;
        (c.round_to, c.round_from) = (w.multiple, w.from);
        let rule = if w.multiple > 1 {
            format!(
                "multiples of {} in groups of {} channels or more",
                w.multiple, w.from
            )
        } else {
            "exact widths (no channel block measured)".to_string()
        };
        let how = if found.measured {
            "measured now"
        } else {
            "measured before"
        };
        let file = match &found.not_stored {
            Some(e) => format!("not cached: {e}"),
            None => found.file.display().to_string(),
        };
        Ok(Some(format!(
            "--round-to auto: {rule} ({how} on {}; {file})",
            w.runtime
        )))
    }

    /// The selection these flags describe (errors on contradicting or missing flags).
    pub fn selection(&self) -> Result<Selection> {
        self.selection_with(false)
    }

    /// [`SelectionArgs::selection`]; without an amount, `own_ok` gives the criterion's own
    /// choice instead of an error (for runs that may not remove channels at all).
    pub fn selection_with(&self, own_ok: bool) -> Result<Selection> {
        self.criterion.check_available()?;
        let amounts = [
            self.ratio.is_some(),
            self.target.is_some(),
            self.threshold.is_some(),
            self.remove_dead,
            self.plan.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if amounts > 1 {
            bail!("give one of --ratio, --target, --threshold, --remove-dead, --plan");
        }
        if self.remove_dead {
            return Ok(match self.gamma_below {
                Some(t) if t.is_finite() && t > 0.0 => Selection::DeadBelow(t),
                Some(t) => bail!("--gamma-below must be a positive number, got {t}"),
                None => Selection::Dead,
            });
        }
        if let Some(p) = &self.plan {
            return Ok(Selection::Plan(PlanFile::load(p)?));
        }
        let amount = match (self.ratio, self.target, self.threshold) {
            (Some(r), _, _) => {
                if !(0.0..1.0).contains(&r) {
                    bail!("--ratio must be in [0, 1), got {r}");
                }
                Amount::Ratio(r)
            }
            (_, Some(b), _) => Amount::Target(b),
            (_, _, Some(t)) => Amount::Threshold(t),
            _ if own_ok || self.criterion == CriterionKind::Epruner => Amount::Own,
            _ => bail!(
                "say what to remove: --ratio R, --target flops=R|params=R|latency=R, --threshold T, --remove-dead or --plan FILE"
            ),
        };
        if self.drop_blocks.is_some_and(|d| d > 0.0) && !matches!(amount, Amount::Target(_)) {
            bail!("--drop-blocks needs --target flops=R, params=R or latency=R");
        }
        let scope = match (self.scope, &amount) {
            (Some(ScopeArg::Local), _) => Scope::Local,
            (Some(ScopeArg::Global), _) => Scope::Global,
            (None, Amount::Ratio(_)) => Scope::Local,
            (None, _) => Scope::Global,
        };
        Ok(Selection::Scored(Scored {
            criterion: self.criterion.clone(),
            reduce: self.reduce,
            normalize: if self.raw_scores {
                Normalize::None
            } else {
                Normalize::Max
            },
            seed: self.seed,
            allocate: AllocateOptions {
                scope,
                granularity: match self.allocation {
                    AllocationArg::Channel => Granularity::Channel,
                    AllocationArg::Block => Granularity::Block,
                },
                amount,
                constraints: Constraints {
                    min_keep_fraction: self.min_keep.0,
                    min_keep_count: self.min_keep.1,
                    max_ratio: self.max_ratio,
                    round_to: self.round_to_pair().0,
                    round_from: self.round_to_pair().1,
                    ignore: self.ignore.clone(),
                    relax_rounding: self.round_to == RoundTo::Auto,
                },
                tolerance: self.target_tolerance,
                latency_knapsack: self.latency_order == LatencyOrderArg::Knapsack
                    && self.latency_search() == LatencySearchArg::Table,
                ..Default::default()
            },
            steps: self.steps as usize,
            drop_blocks: self.drop_blocks.unwrap_or(DEFAULT_DROP_BLOCKS),
            drop_search: self.drop_blocks.is_none(),
            latency: LatencyOptions {
                search: match self.latency_search() {
                    LatencySearchArg::Curve => LatencySearch::Curve,
                    LatencySearchArg::Table => LatencySearch::Table,
                    LatencySearchArg::Measured => LatencySearch::Measured,
                },
                table: self.latency_table.clone(),
                batch: self.latency_batch as usize,
            },
        }))
    }
}
