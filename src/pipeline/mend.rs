//! Automatic mending (Su et al. 2022) as a search over small width adjustments around a
//! pre-pruned structure: a candidate is a removal count per channel group of the pre-pruning
//! plan, realised with the pre-pruning ranking (each group loses its lowest-scoring
//! channels), so candidates cost no new scoring. [`search`] is a greedy hill climb with a
//! fixed evaluation budget: each round proposes moves of channels between two groups that
//! keep the budget (MACs within a window around the target), scores the round's proposals as
//! one batch, and moves to the best if it beats the current candidate.
//!
//! Scoring is the caller's [`Evaluator`]: it receives a whole batch of independent
//! candidates, so it may run them on every core (the compress stage does, one thread each)
//! or send them elsewhere (a cluster), as long as each score depends only on its candidate.
//! This module neither prunes nor trains.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::plan::file::{PlanFile, PlanGroup};
use crate::rng::SplitMix64;

/// Removal count per group of the plan's (single) step, in plan order.
pub type Counts = Vec<usize>;

/// How a group may change: removal moves in multiples of `step` up to `max_removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The group's rounding unit (1 for exact widths).
    pub step: usize,
    /// The most channels the group may lose (its protect threshold).
    pub max_removed: usize,
}

/// Settings of the search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MendOptions {
    /// Candidates scored in all, the pre-pruned one included.
    pub evaluations: usize,
    /// Candidates proposed (and scored as one batch) per round.
    pub proposals: usize,
    /// Largest distance of a candidate's MACs ratio from the target.
    pub window: f64,
    /// Seed of the proposals.
    pub seed: u64,
}

impl Default for MendOptions {
    fn default() -> Self {
        MendOptions {
            evaluations: 13,
            proposals: 4,
            window: 0.01,
            seed: 0,
        }
    }
}

/// A candidate's score: higher `top1` is better, then lower `loss`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Accuracy on the scoring samples.
    pub top1: f64,
    /// Mean loss on them.
    pub loss: f64,
}

impl Score {
    /// Whether this score is better than `other`.
    pub fn beats(&self, other: &Score) -> bool {
        self.top1 > other.top1 || (self.top1 == other.top1 && self.loss < other.loss)
    }
}

/// Scores batches of independent candidates (plans of the same model).
pub trait Evaluator {
    /// One score per plan, in order.
    fn score(&mut self, plans: &[PlanFile]) -> Result<Vec<Score>>;
}

/// A candidate scored during the search.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// Round (0: the pre-pruned candidate).
    pub round: usize,
    /// Removal counts per group.
    pub counts: Counts,
    /// MACs kept.
    pub macs: f64,
    /// Its score.
    pub score: Score,
}

/// The removal counts of `plan`'s single step.
pub fn counts_of(plan: &PlanFile) -> Result<Counts> {
    Ok(single_step(plan)?.iter().map(|g| g.removed.len()).collect())
}

fn single_step(plan: &PlanFile) -> Result<&[PlanGroup]> {
    match &plan.steps[..] {
        [s] => Ok(&s.groups),
        _ => Err(Error::Usage(format!(
            "mending adjusts a one-round pre-pruning plan, this one has {} rounds",
            plan.steps.len()
        ))),
    }
}

/// `base` with each group losing its `counts[g]` lowest-scoring channels (ties: lower
/// position first). Groups without recorded scores keep their removal.
pub fn plan_for(base: &PlanFile, counts: &[usize]) -> Result<PlanFile> {
    single_step(base)?;
    let mut plan = base.clone();
    let groups = &mut plan.steps[0].groups;
    for (g, &c) in groups.iter_mut().zip(counts) {
        let Some(scores) = &g.scores else { continue };
        let mut order: Vec<usize> = (0..g.channels).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mut removed: Vec<usize> = order.into_iter().take(c.min(g.channels)).collect();
        removed.sort_unstable();
        g.removed = removed;
    }
    Ok(plan)
}

/// Each group's limits under rounding to `round_to` in groups of at least `round_from`
/// channels (0: every group) and keeping at least `min_keep_fraction` and `min_keep_count`
/// of its channels. Groups without scores are fixed (`max_removed` 0: never moved).
pub fn limits_of(
    plan: &PlanFile,
    round_to: usize,
    round_from: usize,
    min_keep_fraction: f64,
    min_keep_count: usize,
) -> Result<Vec<Limits>> {
    Ok(single_step(plan)?
        .iter()
        .map(|g| {
            if g.scores.is_none() {
                return Limits {
                    step: 1,
                    max_removed: 0,
                };
            }
            let n = g.channels;
            let step = if round_to > 1 && n >= round_from.max(round_to) {
                round_to
            } else {
                1
            };
            let keep = ((min_keep_fraction * n as f64).ceil() as usize)
                .max(min_keep_count)
                .max(1);
            Limits {
                step,
                max_removed: n.saturating_sub(keep),
            }
        })
        .collect())
}

/// Searches around `base` (module docs). `macs` gives a plan's MACs kept (an error marks the
/// plan invalid); `target` is the MACs ratio to stay near. Returns every trial, in order, and
/// the index of the best (its plan: [`plan_for`] with its counts).
pub fn search(
    base: &PlanFile,
    limits: &[Limits],
    macs: &mut dyn FnMut(&PlanFile) -> Result<f64>,
    target: f64,
    evaluator: &mut dyn Evaluator,
    opts: &MendOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Trial>, usize)> {
    let start = counts_of(base)?;
    let base_plan = plan_for(base, &start)?;
    let base_macs = macs(&base_plan)?;
    let first = scores_of(evaluator, std::slice::from_ref(&base_plan))?[0];
    let mut trials = vec![Trial {
        round: 0,
        counts: start.clone(),
        macs: base_macs,
        score: first,
    }];
    let (mut current, mut current_score) = (start, first);
    let (mut best, mut best_score) = (0, first);
    let mut seen: HashSet<Counts> = HashSet::from([current.clone()]);
    let mut rng = SplitMix64(opts.seed ^ 0x3E4D_0000_0000_0001);
    let movable: Vec<usize> = (0..limits.len())
        .filter(|&g| limits[g].max_removed > 0)
        .collect();
    let mut round = 0;
    while trials.len() < opts.evaluations && movable.len() >= 2 {
        round += 1;
        progress(trials.len(), opts.evaluations);
        let want = opts.proposals.min(opts.evaluations - trials.len());
        let mut batch: Vec<(Counts, PlanFile, f64)> = Vec::new();
        let mut attempts = 0;
        while batch.len() < want && attempts < 50 * want {
            attempts += 1;
            let a = movable[rng.below(movable.len())];
            let b = movable[rng.below(movable.len())];
            if a == b {
                continue;
            }
            // `a` loses more channels, `b` fewer, by one or two of their steps.
            let (ka, kb) = (1 + rng.below(2), 1 + rng.below(2));
            let mut c = current.clone();
            let more = c[a] + ka * limits[a].step;
            if more > limits[a].max_removed || c[b] < kb * limits[b].step {
                continue;
            }
            c[a] = more;
            c[b] -= kb * limits[b].step;
            if !seen.insert(c.clone()) {
                continue;
            }
            let plan = plan_for(base, &c)?;
            match macs(&plan) {
                Ok(m) if (m - target).abs() <= opts.window => batch.push((c, plan, m)),
                _ => {}
            }
        }
        if batch.is_empty() {
            break;
        }
        let plans: Vec<PlanFile> = batch.iter().map(|(_, p, _)| p.clone()).collect();
        let scores = scores_of(evaluator, &plans)?;
        let mut round_best: Option<(usize, Score)> = None;
        for (k, ((c, _, m), s)) in batch.into_iter().zip(scores).enumerate() {
            if round_best.is_none_or(|(_, b)| s.beats(&b)) {
                round_best = Some((k, s));
            }
            if s.beats(&best_score) {
                best = trials.len();
                best_score = s;
            }
            trials.push(Trial {
                round,
                counts: c,
                macs: m,
                score: s,
            });
        }
        if let Some((k, s)) = round_best {
            if s.beats(&current_score) {
                let at = trials.len() - plans.len() + k;
                current = trials[at].counts.clone();
                current_score = s;
            }
        }
    }
    progress(trials.len(), opts.evaluations);
    Ok((trials, best))
}

/// `evaluator`'s scores of `plans`, refusing an answer of another length.
fn scores_of(evaluator: &mut dyn Evaluator, plans: &[PlanFile]) -> Result<Vec<Score>> {
    let scores = evaluator.score(plans)?;
    if scores.len() != plans.len() {
        return Err(Error::Usage(format!(
            "mending: the evaluator scored {} of {} candidates",
            scores.len(),
            plans.len()
        )));
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::file::{PlanMeta, PlanStep};

    fn group(id: usize, channels: usize, removed: Vec<usize>) -> PlanGroup {
        PlanGroup {
            id,
            sources: vec![format!("conv{id} (Conv)")],
            channels,
            removed,
            // Scores rise with the position: position 0 is the least important.
            scores: Some((0..channels).map(|p| p as f64).collect()),
        }
    }

    fn base() -> PlanFile {
        let mut p = PlanFile::new("fnv1a64:0".into(), PlanMeta::default());
        p.steps.push(PlanStep {
            groups: vec![
                group(0, 8, vec![0, 1, 2, 3]),
                group(1, 8, vec![0, 1, 2, 3]),
                group(2, 8, vec![0, 1, 2, 3]),
            ],
        });
        p
    }

    /// Scores a candidate by how many channels group 2 keeps (the "true" best: group 2 wide).
    struct PreferGroup2(usize);

    impl Evaluator for PreferGroup2 {
        fn score(&mut self, plans: &[PlanFile]) -> Result<Vec<Score>> {
            self.0 += plans.len();
            Ok(plans
                .iter()
                .map(|p| {
                    let g = &p.steps[0].groups[2];
                    Score {
                        top1: (g.channels - g.removed.len()) as f64 / 8.0,
                        loss: 0.0,
                    }
                })
                .collect())
        }
    }

    #[test]
    fn plans_remove_the_lowest_scores_of_each_group() {
        let p = plan_for(&base(), &[1, 0, 3]).unwrap();
        let removed: Vec<&[usize]> = p.steps[0].groups.iter().map(|g| &g.removed[..]).collect();
        assert_eq!(removed, [&[0][..], &[], &[0, 1, 2]]);
    }

    #[test]
    fn the_search_keeps_the_budget_spends_its_evaluations_and_climbs() {
        let limits = limits_of(&base(), 1, 0, 0.1, 1).unwrap();
        assert_eq!(
            limits[0],
            Limits {
                step: 1,
                max_removed: 7
            }
        );
        // MACs: every group costs the same per channel; the budget is half of 24 channels.
        let mut macs = |p: &PlanFile| -> Result<f64> {
            let kept: usize = p.steps[0]
                .groups
                .iter()
                .map(|g| g.channels - g.removed.len())
                .sum();
            Ok(kept as f64 / 24.0)
        };
        let mut eval = PreferGroup2(0);
        let opts = MendOptions {
            evaluations: 25,
            proposals: 4,
            window: 0.05,
            seed: 7,
        };
        let (trials, won) = search(
            &base(),
            &limits,
            &mut macs,
            0.5,
            &mut eval,
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        let best = plan_for(&base(), &trials[won].counts).unwrap();
        assert_eq!(eval.0, trials.len());
        assert!(trials.len() <= 25 && trials.len() > 10, "{}", trials.len());
        for t in &trials {
            assert!((t.macs - 0.5).abs() <= 0.05 + 1e-12, "{t:?}");
        }
        // Group 2 grew from 4 kept channels.
        let kept2 = 8 - best.steps[0].groups[2].removed.len();
        assert!(kept2 > 5, "group 2 keeps {kept2}");
        // Deterministic.
        let (_, again) = search(
            &base(),
            &limits,
            &mut macs,
            0.5,
            &mut PreferGroup2(0),
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(won, again);
    }
}
