//! Neural Network Panning's stage (pan): pruning before training. The model is
//! re-initialised (seeded), every agent pull masks it by one arm's saliency mix
//! ([`crate::pipeline::pan`]) and trains it briefly with the masks enforced; the best arm's
//! masks are the stage's. At weight granularity the stage's model is the initialised network
//! with the masked weights zeroed and the masks go to [`MASK_FILE`] in the work folder, which
//! every later training stage enforces; at channel granularity each filter's summed
//! saliency ranks its channel, the structured pipeline removes channels to the run's budget
//! (plan made on a copy carrying the scores, replayed on the initialised network and checked
//! by the oracle) and no mask remains.
//!
//! Not done here: training to convergence (the recovery stages do), keeping the given
//! weights (pruning at initialisation discards them by design).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{Model, Tensor};
use crate::pipeline::pan::{masks_for, search, Arm, Bandit};
use crate::pipeline::{PruneOptions, Selection};
use crate::train::masks::WeightMasks;
use crate::train::saliency::{Scorer, WeightMap};

use super::inherit::{brief_recovery, Brief, Scratch};
use super::{prune_by, quiet, Context, Observer};

/// The weight-mask file in the work folder (and, beside the output, `NAME.masks.npz`).
pub const MASK_FILE: &str = "weight-masks.npz";

/// What the masks apply to.
#[derive(Clone, Debug, PartialEq)]
pub enum Granularity {
    /// Single weights: keep `density` of the filter banks' weights (global), zeros in the
    /// shipped model and a mask file beside it.
    Weight {
        /// Fraction of the maskable weights kept, in `(0, 1]`.
        density: f64,
    },
    /// Whole channels, to the run's pruning budget: a smaller dense model.
    Channel,
}

/// The pan stage's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Panning {
    /// Weight or channel masks.
    pub granularity: Granularity,
    /// The agent's arms (one arm: no search, that arm's masks).
    pub arms: Vec<Arm>,
    /// Agent pulls in all.
    pub evaluations: usize,
    /// Training steps of each pull's brief training.
    pub steps: usize,
    /// Training samples held out to score each pull.
    pub holdout: usize,
    /// Batches of the training split the gradient indices average over.
    pub scoring_batches: usize,
}

/// Exploration weight of the agent's bonus ([`Bandit::exploration`]).
const EXPLORATION: f64 = 0.05;

/// The pan stage (module docs): `model` becomes the masked (or channel-pruned) initialised
/// network. Returns the note and each arm's mean reward.
pub(super) fn pan_stage(
    p: &Panning,
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<(String, f64)>)> {
    let opts = ctx.opts;
    observer.stage("pan: initialising and scoring");
    let mut init = crate::train::init::prepare_model(model)?;
    crate::train::init::reinitialize(&mut init, opts.train.seed)?;
    let batches = scoring_batches(&init, ctx, p)?;
    let mut scorer = Scorer::new(&init, batches, quiet(&opts.train.runtime), opts.train.seed)?;
    let density = match p.granularity {
        Granularity::Weight { density } => density,
        Granularity::Channel => channel_density(ctx),
    };
    let lr = crate::train::options::Recipe::Train.lr_for(&opts.train.optimizer, &init);
    let dir = Scratch::new(ctx, "pan")?;
    let mut cache: Vec<Option<(WeightMap, WeightMap)>> = vec![None; p.arms.len()];
    let mut bandit = Bandit::new(p.arms.len(), EXPLORATION);
    let best = if p.arms.len() == 1 {
        0
    } else {
        search(&mut bandit, p.evaluations, &mut |a, k| {
            let arm = &p.arms[a];
            observer.stage(&format!(
                "pan: pull {}/{} ({})",
                k + 1,
                p.evaluations,
                arm.name()
            ));
            let (masks, scores) = match &mut cache[a] {
                Some(m) => &*m,
                slot => slot.insert(masks_for(&mut scorer, arm, density)?),
            };
            let (mut cand, wm) = candidate(&init, masks, scores, p, ctx, observer)?;
            let brief = Brief {
                steps: p.steps,
                holdout: p.holdout,
                lr,
                runtime: opts.train.runtime,
                weight_masks: wm,
                seed: opts.train.seed.wrapping_add(k as u64),
            };
            let file = dir.0.join(format!("{k:02}.onnx"));
            Ok(brief_recovery(&mut cand, &brief, ctx, &file, observer)?.top1)
        })?
    };
    let (masks, scores) = match cache[best].take() {
        Some(m) => m,
        None => masks_for(&mut scorer, &p.arms[best], density)?,
    };
    let (m, wm) = candidate(&init, &masks, &scores, p, ctx, observer)?;
    *model = m;
    let rewards: Vec<(String, f64)> = p
        .arms
        .iter()
        .zip(&bandit.rewards)
        .filter(|(_, r)| !r.is_empty())
        .map(|(a, r)| (a.name(), r.iter().sum::<f64>() / r.len() as f64))
        .collect();
    let agent = if p.arms.len() == 1 {
        format!("{} (no search)", p.arms[0].name())
    } else {
        format!(
            "{} by the UCB1 agent ({} pulls of {} steps; mean held-out top-1 per arm: {})",
            p.arms[best].name(),
            p.evaluations,
            p.steps,
            rewards
                .iter()
                .map(|(n, r)| format!("{n} {:.2}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let what = if wm.is_empty() {
        "channels pruned to the budget".to_string()
    } else {
        save_masks(&init, &wm, &mask_path(ctx))?;
        let kept: usize = wm.values().flatten().filter(|&&m| m != 0.0).count();
        let total: usize = wm.values().map(Vec::len).sum();
        format!(
            "{kept} of {total} filter-bank weights kept ({:.2}%)",
            100.0 * kept as f64 / total.max(1) as f64
        )
    };
    Ok((format!("re-initialised; {what}; masks {agent}"), rewards))
}

/// The mask file's path in the work folder.
pub(super) fn mask_path(ctx: &Context) -> std::path::PathBuf {
    ctx.plan.with_file_name(MASK_FILE)
}

/// Batches of the training split (outside the held-out part) for the gradient indices.
fn scoring_batches(model: &Model, ctx: &Context, p: &Panning) -> Result<Vec<(Tensor, Tensor)>> {
    use crate::data::subset::Subset;
    let batch = ctx.opts.train.batch;
    let (_, rest) = Subset::split(ctx.data.train, p.holdout)?;
    let input = crate::runtime::model_inputs(model)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Usage("the model has no data input".into()))?;
    let none = crate::train::options::Augment {
        crop: false,
        flip: false,
        grayscale: false,
    };
    let n = p.scoring_batches.max(1) * batch;
    let set = crate::train::samples::TrainSet::load(
        &input,
        Box::new(rest),
        &ctx.data.preprocess,
        Some(n),
        none,
    )?;
    let mut rng = crate::rng::SplitMix64(ctx.opts.train.seed);
    let full = set.len() / batch;
    if full == 0 {
        return Err(Error::Usage(format!(
            "{} training samples do not fill one scoring batch of {batch}",
            set.len()
        )));
    }
    (0..full)
        .map(|b| {
            let idx: Vec<usize> = (b * batch..(b + 1) * batch).collect();
            set.batch(&idx, &mut rng)
        })
        .collect()
}

/// The kept fraction of weights the channel variant's masks are drawn at: the run's FLOPs or
/// parameter budget, else a half.
fn channel_density(ctx: &Context) -> f64 {
    use crate::plan::allocate::{Amount, Budget};
    match ctx.scored("channel panning").map(|s| &s.allocate.amount) {
        Ok(Amount::Target(Budget::Flops(r) | Budget::Params(r))) => *r,
        Ok(Amount::Ratio(r)) => 1.0 - r,
        _ => 0.5,
    }
    .clamp(0.01, 1.0)
}

/// The network one arm gives: weight granularity, `init` with the masked weights zeroed and
/// the masks to enforce; channel granularity, `init` pruned to the budget by each filter's
/// summed `scores`, and no masks.
fn candidate(
    init: &Model,
    masks: &WeightMap,
    scores: &WeightMap,
    p: &Panning,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(Model, WeightMasks)> {
    match p.granularity {
        Granularity::Weight { .. } => {
            let mut m = init.clone();
            apply(&mut m, masks, |w, m| w * m)?;
            Ok((m, std::sync::Arc::new(masks.clone())))
        }
        Granularity::Channel => {
            let mut copy = init.clone();
            apply(&mut copy, scores, |_, s| s)?;
            let scored = ctx.scored("channel panning")?;
            let by_scores = PruneOptions {
                selection: Selection::Scored(crate::pipeline::Scored {
                    criterion: crate::analysis::importance::CriterionKind::L1,
                    ..scored.clone()
                }),
                verify_with: Vec::new(),
                ..ctx.opts.prune.clone()
            };
            let r = prune_by(&mut copy, &by_scores, ctx, observer)?;
            let mut m = init.clone();
            let replay = PruneOptions {
                selection: Selection::Plan(r.plan.clone()),
                ..ctx.opts.prune.clone()
            };
            let r = prune_by(&mut m, &replay, ctx, observer)?;
            r.plan.save(&ctx.plan)?;
            Ok((m, Default::default()))
        }
    }
}

/// Replaces every bank of `by` in `m` by `f(weight, value)` element-wise.
fn apply(m: &mut Model, by: &WeightMap, f: impl Fn(f32, f32) -> f32) -> Result<()> {
    let g = &mut m.graph;
    for (name, v) in by {
        let id = g
            .value_by_name(name)
            .ok_or_else(|| Error::tensor(name, "is not in the model"))?;
        let t = g
            .init(id)
            .ok_or_else(|| Error::tensor(name, "is not an initializer"))?;
        let w = t
            .to_f32_vec()
            .ok_or_else(|| Error::tensor(name, "is not float32"))?;
        if w.len() != v.len() {
            return Err(Error::tensor(name, "mask size differs from the weight's"));
        }
        let out: Vec<f32> = w.iter().zip(v).map(|(w, v)| f(*w, *v)).collect();
        let t = Tensor::from_f32(t.shape().to_vec(), &out);
        g.set_init(id, t);
    }
    Ok(())
}

/// Writes `masks` (banks of `model`) as a mask file.
fn save_masks(model: &Model, masks: &WeightMasks, path: &Path) -> Result<()> {
    let g = &model.graph;
    let mut arrays = BTreeMap::new();
    for (name, m) in masks.iter() {
        let shape = g
            .value_by_name(name)
            .and_then(|v| g.init(v))
            .map(|t| t.shape().to_vec())
            .ok_or_else(|| Error::tensor(name, "is not an initializer"))?;
        arrays.insert(name.clone(), (shape, m.clone()));
    }
    crate::train::mask_file::save(path, &arrays)
}

/// The masks of the mask file in the work folder, when the run made one.
pub(super) fn load_masks(path: &Path) -> Result<WeightMasks> {
    if !path.exists() {
        return Ok(Default::default());
    }
    let arrays = crate::train::mask_file::load(path)?;
    Ok(std::sync::Arc::new(
        arrays.into_iter().map(|(k, (_, m))| (k, m)).collect(),
    ))
}

/// Errors unless every masked weight of `model` is exactly zero; returns the zeros checked.
pub(super) fn check_masked(model: &Model, masks: &WeightMasks) -> Result<usize> {
    let g = &model.graph;
    let mut zeros = 0;
    for (name, m) in masks.iter() {
        let w = g
            .value_by_name(name)
            .and_then(|v| g.init(v))
            .and_then(Tensor::to_f32_vec)
            .ok_or_else(|| Error::tensor(name, "masked weight missing from the model"))?;
        if w.len() != m.len() {
            return Err(Error::tensor(name, "mask size differs from the weight's"));
        }
        for (i, (w, m)) in w.iter().zip(m).enumerate() {
            if *m == 0.0 {
                if *w != 0.0 {
                    return Err(Error::tensor(
                        name,
                        format!("masked entry {i} is {w}, not 0: the mask was not enforced"),
                    ));
                }
                zeros += 1;
            }
        }
    }
    Ok(zeros)
}
