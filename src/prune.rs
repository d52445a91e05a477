//! The pruning pipeline as one function: simplify (BN kept) → shapes → channel groups →
//! score → allocate → remove → verify with the equivalence oracle, repeated for `--steps`
//! rounds (re-analysing and re-scoring the pruned model each round). Every round is recorded
//! in a [`PlanFile`], which [`Selection::Plan`] replays exactly. The CLI and tests call this.
//! It does not write files, gather data or time models itself (the caller passes [`Hooks`]
//! for that), and does not fine-tune.

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::importance::{
    self, ActivationStats, CriterionKind, Normalize, Reduce, ScoreCx,
};
use crate::analysis::{channel_groups, costs, infer_shapes, Costs};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::oracle::{self, Comparison};
use crate::passes::{remove_channels, simplify, SimplifyOptions};
use crate::plan::allocate::{allocate, AllocateOptions, Amount, Budget};
use crate::plan::{self, PlanFile, PlanMeta};
use crate::runtime::BackendKind;

/// Channels chosen by a criterion under an allocation rule.
#[derive(Clone, Debug)]
pub struct Scored {
    /// The importance criterion.
    pub criterion: CriterionKind,
    /// How a channel's member scores combine.
    pub reduce: Reduce,
    /// Per-group normalisation of scores.
    pub normalize: Normalize,
    /// Seed of random criteria.
    pub seed: u64,
    /// How much to remove and under which constraints.
    pub allocate: AllocateOptions,
    /// Rounds of prune → re-analyse → re-score (≥ 1).
    pub steps: usize,
}

impl Scored {
    /// `criterion` removing `amount` with `lopper prune`'s defaults: summed member scores,
    /// normalised by each group's largest, seed 0, local scope for a ratio and global
    /// otherwise, every group keeping at least 10% of its channels and at least one, one round.
    pub fn new(criterion: CriterionKind, amount: Amount) -> Scored {
        let scope = match amount {
            Amount::Ratio(_) => crate::plan::allocate::Scope::Local,
            _ => crate::plan::allocate::Scope::Global,
        };
        Scored {
            criterion,
            reduce: Reduce::Sum,
            normalize: Normalize::Max,
            seed: 0,
            allocate: AllocateOptions {
                scope,
                amount,
                constraints: crate::plan::allocate::Constraints {
                    min_keep_fraction: 0.1,
                    ..Default::default()
                },
                ..Default::default()
            },
            steps: 1,
        }
    }
}

/// Which channels to remove.
#[derive(Clone, Debug)]
pub enum Selection {
    /// The lowest-L1 fraction of every prunable group (same as a local `Scored` ratio with L1).
    Ratio(f64),
    /// Channels that contribute nothing or a constant (compensated exactly).
    Dead,
    /// Like `Dead` after setting every BatchNormalization gamma with |gamma| below this to
    /// zero (what sparse training leaves near zero): those channels then output the constant
    /// activation of their beta, which is folded into the consumers. The model changes by at
    /// most the dropped gammas' contribution; the oracle checks the rest.
    DeadBelow(f64),
    /// Exactly these classes (indices of the analysis' classes).
    Classes(Vec<usize>),
    /// Ranked by a criterion, allocated under a rule or budget.
    Scored(Scored),
    /// Replay a recorded plan.
    Plan(PlanFile),
}

/// Options of [`prune`].
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// What to remove.
    pub selection: Selection,
    /// Runtimes for the equivalence oracle (empty: do not verify).
    pub verify_with: Vec<BackendKind>,
    /// Largest relative output error the oracle accepts.
    pub tolerance: f64,
}

/// Gathers activation statistics of a model (its calibration data run through it).
pub type GatherActivations<'a> =
    &'a mut dyn FnMut(&Model, &ChannelGroups) -> Result<ActivationStats>;

/// Times a model: its latency in seconds.
pub type TimeModel<'a> = &'a mut dyn FnMut(&Model) -> Result<f64>;

/// What the pipeline asks of its caller.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Activation statistics of a model (needed by data-driven criteria): the caller runs its
    /// calibration data through it.
    pub activations: Option<GatherActivations<'a>>,
    /// Latency of a model in seconds (needed by latency targets).
    pub latency: Option<TimeModel<'a>>,
    /// Told what the pipeline is doing, one short line per stage.
    pub progress: Option<&'a mut dyn FnMut(&str)>,
}

impl Hooks<'_> {
    fn say(&mut self, msg: &str) {
        if let Some(p) = self.progress.as_mut() {
            p(msg);
        }
    }
}

/// Per-group line of the report (of the first round).
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    /// Group id.
    pub id: usize,
    /// Channels before.
    pub channels: usize,
    /// Channels removed.
    pub removed: usize,
    /// Producers (`node (op)`).
    pub sources: Vec<String>,
    /// Why it is blocked (empty: prunable).
    pub blocked: Vec<String>,
}

/// One round of pruning.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Channels removed in this round.
    pub removed: usize,
    /// MACs after this round.
    pub macs: u64,
    /// Parameters after this round.
    pub params: u64,
    /// Score threshold of a global allocation.
    pub threshold: Option<f64>,
    /// Cost-model evaluations or measurements the allocation made.
    pub evaluations: usize,
    /// Oracle result of this round, when verified.
    pub oracle: Option<Comparison>,
}

/// What a pruning run did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// How channels were chosen (criterion name, `dead`, `plan`, `classes`).
    pub criterion: String,
    /// Groups found (first round).
    pub groups: usize,
    /// Groups blocked (first round).
    pub blocked: usize,
    /// Channels removed in total.
    pub removed: usize,
    /// MACs before and after.
    pub macs: (u64, u64),
    /// Parameters before and after.
    pub params: (u64, u64),
    /// Worst oracle result over the rounds, when verified.
    pub oracle: Option<Comparison>,
    /// Per round.
    pub steps: Vec<StepReport>,
    /// Per group, first round.
    pub per_group: Vec<GroupReport>,
    /// Things the user should know (fallbacks, constraints that bit).
    pub notes: Vec<String>,
    /// The exact removal, replayable with [`Selection::Plan`].
    #[serde(skip)]
    pub plan: PlanFile,
    /// The model as analysed, before any removal (for before/after tables).
    #[serde(skip)]
    pub before: Option<Model>,
}

/// Simplifies `model` (keeping BatchNormalization) and returns its channel groups.
pub fn analyse(model: &mut Model) -> Result<ChannelGroups> {
    simplify(
        model,
        &SimplifyOptions {
            keep_batch_norm: true,
            ..Default::default()
        },
    )?;
    let shapes = infer_shapes(model)?;
    channel_groups(model, &shapes)
}

/// Prunes `model` in place with no hooks (data-driven criteria and latency targets error).
pub fn prune(model: &mut Model, opts: &PruneOptions) -> Result<PruneReport> {
    prune_with(model, opts, &mut Hooks::default())
}

fn meta_of(selection: &Selection) -> PlanMeta {
    let mut meta = PlanMeta::default();
    let mut opt = |k: &str, v: serde_json::Value| {
        meta.options.insert(k.to_string(), v);
    };
    let criterion = match selection {
        Selection::Ratio(r) => {
            opt("ratio", (*r).into());
            opt("scope", "local".into());
            "l1".to_string()
        }
        Selection::Dead => "dead".into(),
        Selection::DeadBelow(t) => {
            opt("gamma_below", (*t).into());
            "dead".into()
        }
        Selection::Classes(_) => "classes".into(),
        Selection::Plan(p) => p.meta.criterion.clone(),
        Selection::Scored(s) => {
            let a = &s.allocate;
            match &a.amount {
                Amount::Ratio(r) => opt("ratio", (*r).into()),
                Amount::Threshold(t) => opt("threshold", (*t).into()),
                Amount::Own => opt("amount", "own".into()),
                Amount::Target(b) => {
                    let (k, v) = match b {
                        Budget::Flops(v) => ("flops", v),
                        Budget::Params(v) => ("params", v),
                        Budget::Latency(v) => ("latency", v),
                    };
                    opt("target", format!("{k}={v}").into());
                }
            }
            opt("scope", format!("{:?}", a.scope).to_lowercase().into());
            opt(
                "allocation",
                format!("{:?}", a.granularity).to_lowercase().into(),
            );
            opt("reduce", format!("{:?}", s.reduce).to_lowercase().into());
            opt(
                "normalize",
                format!("{:?}", s.normalize).to_lowercase().into(),
            );
            opt("steps", s.steps.into());
            opt("seed", s.seed.into());
            let c = &a.constraints;
            opt("min_keep_fraction", c.min_keep_fraction.into());
            opt("min_keep_count", c.min_keep_count.into());
            opt("max_ratio", c.max_ratio.into());
            opt("round_to", c.round_to.into());
            opt("ignore", c.ignore.clone().into());
            s.criterion.to_string()
        }
    };
    meta.criterion = criterion;
    meta
}

/// The amount of round `step` (0-based) of `steps`, relative to the model as it is then.
/// Budgets are spread geometrically: after round i the model keeps `b^(i/steps)` of the
/// original, so the last round lands on `b`.
fn step_amount(amount: &Amount, step: usize, steps: usize, now: (f64, f64)) -> Result<Amount> {
    if steps == 1 {
        return Ok(amount.clone());
    }
    let frac = (step + 1) as f64 / steps as f64;
    Ok(match amount {
        Amount::Ratio(r) => Amount::Ratio(1.0 - (1.0 - *r).powf(1.0 / steps as f64)),
        Amount::Target(Budget::Flops(b)) => {
            Amount::Target(Budget::Flops((b.powf(frac) / now.0).min(1.0)))
        }
        Amount::Target(Budget::Params(b)) => {
            Amount::Target(Budget::Params((b.powf(frac) / now.1).min(1.0)))
        }
        // Measured against the original model: the hook's ratio is absolute.
        Amount::Target(Budget::Latency(b)) => Amount::Target(Budget::Latency(b.powf(frac))),
        Amount::Threshold(_) | Amount::Own => {
            return Err(Error::Usage(
                "--steps > 1 needs a ratio or a target (a threshold or the criterion's own choice is one round)"
                    .into(),
            ))
        }
    })
}

/// Prunes `model` in place. On a model whose groups are all blocked nothing changes (the
/// report says so). Errors when the oracle finds a round not equivalent to the masked model.
pub fn prune_with(
    model: &mut Model,
    opts: &PruneOptions,
    hooks: &mut Hooks,
) -> Result<PruneReport> {
    let fp = plan::fingerprint(model);
    if let Selection::Plan(p) = &opts.selection {
        p.check_model(model)?;
    }
    hooks.say("analysing");
    let mut groups = analyse(model)?;
    let before_model = model.clone();
    let first_costs = costs(model, &infer_shapes(model)?)?;
    let mut record = PlanFile::new(fp, meta_of(&opts.selection));
    let steps = match &opts.selection {
        Selection::Scored(s) => s.steps.max(1),
        Selection::Plan(p) => p.steps.len(),
        _ => 1,
    };
    if let Selection::Scored(s) = &opts.selection {
        s.criterion.check_available()?;
        if s.criterion.needs_data() && hooks.activations.is_none() {
            // Let the criterion say what it needs.
            importance::score(
                &s.criterion,
                &ScoreCx {
                    model,
                    groups: &groups,
                    shapes: &infer_shapes(model)?,
                    reduce: s.reduce,
                    seed: s.seed,
                    activations: None,
                },
                s.normalize,
            )?;
        }
    }
    // Latency of the original, measured once.
    let base_latency = match &opts.selection {
        Selection::Scored(Scored {
            allocate:
                AllocateOptions {
                    amount: Amount::Target(Budget::Latency(_)),
                    ..
                },
            ..
        }) => {
            let Some(lat) = hooks.latency.as_mut() else {
                return Err(Error::Usage(
                    "a latency target needs a runtime to time the model".into(),
                ));
            };
            Some(lat(model)?)
        }
        _ => None,
    };
    let mut notes = Vec::new();
    let mut step_reports = Vec::new();
    let mut per_group = Vec::new();
    let mut worst: Option<Comparison> = None;
    let mut now_costs = first_costs.clone();
    let mut removed_total = 0usize;
    for step in 0..steps {
        if step > 0 {
            hooks.say(&format!("round {}/{steps}: analysing", step + 1));
            groups = analyse(model)?;
        }
        let shapes = infer_shapes(model)?;
        let tag = if steps > 1 {
            format!("round {}/{steps}: ", step + 1)
        } else {
            String::new()
        };
        let (classes, scores, threshold, evaluations) = match &opts.selection {
            Selection::Ratio(r) => {
                let scores = importance::l1_scores(model, &groups);
                (
                    plan::plan_ratio(&groups, &scores, *r)?,
                    Some(scores),
                    None,
                    0,
                )
            }
            Selection::Dead => (plan::plan_dead(model, &groups, &shapes)?, None, None, 0),
            Selection::DeadBelow(t) => {
                let snapped = snap_small_gammas(model, *t);
                if snapped > 0 {
                    notes.push(format!(
                        "{snapped} BatchNormalization gamma(s) with |gamma| < {t:e} set to 0 before removing dead channels"
                    ));
                }
                (plan::plan_dead(model, &groups, &shapes)?, None, None, 0)
            }
            Selection::Classes(c) => (c.clone(), None, None, 0),
            Selection::Plan(p) => (p.step_classes(step, &groups)?, None, None, 0),
            Selection::Scored(s) => {
                let stats = match hooks.activations.as_mut() {
                    Some(f) if s.criterion.needs_data() => {
                        hooks_say(&mut hooks.progress, &format!("{tag}gathering activations"));
                        Some(f(model, &groups)?)
                    }
                    _ => None,
                };
                hooks_say(
                    &mut hooks.progress,
                    &format!("{tag}scoring ({})", s.criterion),
                );
                let scored = importance::score(
                    &s.criterion,
                    &ScoreCx {
                        model,
                        groups: &groups,
                        shapes: &shapes,
                        reduce: s.reduce,
                        seed: s.seed,
                        activations: stats.as_ref(),
                    },
                    s.normalize,
                )?;
                for n in &scored.notes {
                    if !notes.contains(n) {
                        notes.push(n.clone());
                    }
                }
                let ratio_now = (
                    now_costs.macs as f64 / first_costs.macs.max(1) as f64,
                    now_costs.params as f64 / first_costs.params.max(1) as f64,
                );
                let mut a = s.allocate.clone();
                a.amount = step_amount(&s.allocate.amount, step, steps, ratio_now)?;
                hooks_say(&mut hooks.progress, &format!("{tag}allocating"));
                let alloc = match (&a.amount, hooks.latency.as_mut(), base_latency) {
                    (Amount::Target(Budget::Latency(_)), Some(lat), Some(base)) => {
                        let m: &Model = model;
                        let (gr, sh) = (&groups, &shapes);
                        let mut measure = |classes: &[usize]| -> Result<f64> {
                            let mut cand = m.clone();
                            remove_channels(&mut cand, gr, sh, classes)?;
                            Ok(lat(&cand)? / base)
                        };
                        allocate(
                            model,
                            &groups,
                            &shapes,
                            &scored.values,
                            scored.keep.as_deref(),
                            &a,
                            Some(&mut measure),
                        )?
                    }
                    _ => allocate(
                        model,
                        &groups,
                        &shapes,
                        &scored.values,
                        scored.keep.as_deref(),
                        &a,
                        None,
                    )?,
                };
                for n in &alloc.notes {
                    notes.push(format!("{tag}{n}"));
                }
                (
                    alloc.classes,
                    Some(scored.values),
                    alloc.threshold,
                    alloc.evaluations,
                )
            }
        };
        record.push_step(&groups, &classes, scores.as_deref())?;
        if step == 0 {
            per_group = group_reports(&groups, &classes);
        }
        let original = (!opts.verify_with.is_empty() && !classes.is_empty()).then(|| model.clone());
        hooks.say(&format!("{tag}removing {} channels", classes.len()));
        remove_channels(model, &groups, &shapes, &classes)?;
        now_costs = costs(model, &infer_shapes(model)?)?;
        let oracle = match original {
            Some(original) => {
                hooks.say(&format!("{tag}verifying"));
                let cmp = verify(&original, &groups, &classes, model, opts)?;
                if worst
                    .as_ref()
                    .is_none_or(|w| cmp.max_rel_error > w.max_rel_error)
                {
                    worst = Some(cmp.clone());
                }
                Some(cmp)
            }
            None => None,
        };
        removed_total += classes.len();
        step_reports.push(StepReport {
            removed: classes.len(),
            macs: now_costs.macs,
            params: now_costs.params,
            threshold,
            evaluations,
            oracle,
        });
    }
    Ok(PruneReport {
        criterion: record.meta.criterion.clone(),
        groups: per_group.len(),
        blocked: per_group.iter().filter(|g| !g.blocked.is_empty()).count(),
        removed: removed_total,
        macs: (first_costs.macs, now_costs.macs),
        params: (first_costs.params, now_costs.params),
        oracle: worst,
        steps: step_reports,
        per_group,
        notes,
        plan: record,
        before: Some(before_model),
    })
}

/// Sets every BatchNormalization scale element with |γ| < `t` to 0; returns how many.
fn snap_small_gammas(model: &mut Model, t: f64) -> usize {
    let g = &mut model.graph;
    let scales: Vec<_> = g
        .node_ids()
        .filter_map(|n| {
            let node = g.node(n);
            node.input(crate::ops::channel_scale_input(node)?)
        })
        .collect();
    let mut count = 0;
    for v in scales {
        let Some(tensor) = g.init(v) else { continue };
        let Some(mut vals) = tensor.to_f64_vec() else {
            continue;
        };
        let small = vals.iter().filter(|x| x.abs() < t && **x != 0.0).count();
        if small == 0 {
            continue;
        }
        for x in vals.iter_mut().filter(|x| x.abs() < t) {
            *x = 0.0;
        }
        if let Ok(new) =
            crate::ir::Tensor::from_f64_as(tensor.dtype(), tensor.shape().to_vec(), &vals)
        {
            g.set_init(v, new);
            count += small;
        }
    }
    count
}

fn hooks_say(progress: &mut Option<&mut dyn FnMut(&str)>, msg: &str) {
    if let Some(p) = progress.as_mut() {
        p(msg);
    }
}

fn verify(
    original: &Model,
    groups: &ChannelGroups,
    classes: &[usize],
    pruned: &Model,
    opts: &PruneOptions,
) -> Result<Comparison> {
    let masked = oracle::masked_original(original, groups, classes)?;
    let cmp = oracle::compare(&masked, pruned, &opts.verify_with, 2, 7)?;
    if cmp.max_rel_error > opts.tolerance {
        return Err(Error::Graph(format!(
            "equivalence check failed: pruned model differs from the masked original by {:.3e} (tolerance {:.0e}); not written",
            cmp.max_rel_error, opts.tolerance
        )));
    }
    Ok(cmp)
}

fn group_reports(groups: &ChannelGroups, classes: &[usize]) -> Vec<GroupReport> {
    let mut removed_in = vec![0usize; groups.groups.len()];
    for &c in classes {
        if let Some(g) = groups.group_of_class.get(c) {
            removed_in[*g] += 1;
        }
    }
    groups
        .groups
        .iter()
        .map(|g| GroupReport {
            id: g.id,
            channels: g.channels,
            removed: removed_in[g.id],
            sources: g
                .sources
                .iter()
                .filter(|s| !s.constant)
                .map(|s| format!("{} ({})", s.node_name, s.op))
                .collect(),
            blocked: g.blocked.clone(),
        })
        .collect()
}

/// Costs of a model as it is (shapes inferred).
pub fn model_costs(model: &Model) -> Result<Costs> {
    costs(model, &infer_shapes(model)?)
}
