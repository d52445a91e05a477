//! Neural Network Panning's search, at weight granularity: masks chosen at initialisation
//! from a weighted mix of saliency indices ([`crate::train::saliency`]) over several rounds,
//! and an agent that picks the mix and the number of rounds.
//!
//! * [`masks_for`]: per round `k` of `K`, the kept fraction is `d^{k/K}` (`d` the final
//!   density); each index's scores over the still-kept weights become ranks in `[0, 1]`, the
//!   arm's weighted mean of the ranks orders them and the lowest are masked (masks only
//!   grow). Rescoring each round on the masked network is what the iterative indices need.
//! * [`Bandit`]: the agent is a **UCB1 bandit** over a fixed list of arms (index mix ×
//!   rounds), where the paper trains a reinforcement-learning policy; a pull is one brief
//!   training of the arm's masked network with a fresh seed, its reward the top-1 on held-out
//!   training samples; the arm with the best mean reward wins.
//!
//! Not done here: running the training that scores an arm (the caller's evaluator), and
//! pruning channels.

use crate::error::{Error, Result};
use crate::train::saliency::{Index, Scorer, WeightMap};

/// One arm: how the indices are mixed (weights > 0) and over how many rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    /// Index and weight of its rank in the mix.
    pub mix: Vec<(Index, f64)>,
    /// Rounds of masking (1: one shot).
    pub rounds: usize,
}

impl Arm {
    /// `snip+synflow×5`-style name (weights shown when unequal).
    pub fn name(&self) -> String {
        let equal = self.mix.windows(2).all(|w| w[0].1 == w[1].1);
        let parts: Vec<String> = self
            .mix
            .iter()
            .map(|(i, w)| {
                if equal {
                    i.name().to_string()
                } else {
                    format!("{}={w}", i.name())
                }
            })
            .collect();
        format!("{}×{}", parts.join("+"), self.rounds)
    }

    /// One index alone, in `rounds` rounds.
    pub fn single(index: Index, rounds: usize) -> Arm {
        Arm {
            mix: vec![(index, 1.0)],
            rounds,
        }
    }
}

/// The agent's default arms: each of magnitude, SNIP, GraSP and SynFlow alone and their
/// equal mix, in one round and in five.
pub fn default_arms() -> Vec<Arm> {
    let singles = [Index::Magnitude, Index::Snip, Index::Grasp, Index::Synflow];
    let mut arms = Vec::new();
    for rounds in [1, 5] {
        for i in singles {
            arms.push(Arm::single(i, rounds));
        }
        arms.push(Arm {
            mix: singles.iter().map(|&i| (i, 1.0)).collect(),
            rounds,
        });
    }
    arms
}

/// Masks keeping `density` of every maskable weight of `scorer`'s model (globally, across
/// banks) by `arm`'s mix over its rounds, and the last round's mixed rank of every weight
/// kept (0 where masked). Errors on a density outside `(0, 1]` or an empty mix.
pub fn masks_for(scorer: &mut Scorer, arm: &Arm, density: f64) -> Result<(WeightMap, WeightMap)> {
    if density.is_nan() || density <= 0.0 || density > 1.0 {
        return Err(Error::Usage(format!(
            "the kept weight fraction must be in (0, 1], got {density}"
        )));
    }
    if arm.mix.is_empty() || arm.rounds == 0 || arm.mix.iter().any(|(_, w)| w.is_nan() || *w <= 0.0)
    {
        return Err(Error::Usage(format!(
            "arm '{}': needs at least one index with a weight > 0 and one round",
            arm.name()
        )));
    }
    let mut masks: WeightMap = scorer
        .values()
        .iter()
        .map(|(k, v)| (k.clone(), vec![1.0; v.len()]))
        .collect();
    let total: usize = masks.values().map(Vec::len).sum();
    let mut mixed = vec![0f64; total];
    for k in 1..=arm.rounds {
        let keep =
            ((density.powf(k as f64 / arm.rounds as f64) * total as f64).round() as usize).max(1);
        mixed.iter_mut().for_each(|m| *m = 0.0);
        let wsum: f64 = arm.mix.iter().map(|(_, w)| w).sum();
        for &(index, w) in &arm.mix {
            let scores = scorer.score(index, &masks)?;
            for (m, r) in mixed.iter_mut().zip(ranks(&scores, &masks)) {
                *m += w / wsum * r;
            }
        }
        keep_top(&mut masks, &mixed, keep);
    }
    let mut at = 0;
    let scores = masks
        .iter()
        .map(|(k, m)| {
            let s = m
                .iter()
                .map(|&m| {
                    at += 1;
                    if m != 0.0 {
                        mixed[at - 1].max(0.0) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            (k.clone(), s)
        })
        .collect();
    Ok((masks, scores))
}

/// Each kept entry's rank among the kept entries, scaled to `[0, 1]` (ties broken by
/// position), flattened bank after bank; masked entries get −1.
fn ranks(scores: &WeightMap, masks: &WeightMap) -> Vec<f64> {
    let flat: Vec<(f32, bool)> = scores
        .iter()
        .flat_map(|(k, s)| s.iter().zip(&masks[k]).map(|(s, m)| (*s, *m != 0.0)))
        .collect();
    let mut alive: Vec<usize> = (0..flat.len()).filter(|&i| flat[i].1).collect();
    alive.sort_by(|&a, &b| flat[a].0.total_cmp(&flat[b].0).then(a.cmp(&b)));
    let mut out = vec![-1.0; flat.len()];
    let n = alive.len().saturating_sub(1).max(1) as f64;
    for (r, &i) in alive.iter().enumerate() {
        out[i] = r as f64 / n;
    }
    out
}

/// Masks every kept entry outside the `keep` highest of `mixed` (flattened as [`ranks`]).
fn keep_top(masks: &mut WeightMap, mixed: &[f64], keep: usize) {
    let mut order: Vec<usize> = (0..mixed.len()).filter(|&i| mixed[i] >= 0.0).collect();
    order.sort_by(|&a, &b| mixed[b].total_cmp(&mixed[a]).then(a.cmp(&b)));
    let mut kept = vec![false; mixed.len()];
    for &i in order.iter().take(keep) {
        kept[i] = true;
    }
    let mut at = 0;
    for m in masks.values_mut() {
        for x in m.iter_mut() {
            if !kept[at] {
                *x = 0.0;
            }
            at += 1;
        }
    }
}

/// The UCB1 agent (see the module docs): arm `a`'s index is its mean reward plus
/// `exploration · √(2 ln t / n_a)`; every arm is pulled once first, in order.
#[derive(Clone, Debug)]
pub struct Bandit {
    /// Rewards of each arm's pulls.
    pub rewards: Vec<Vec<f64>>,
    /// Weight of the exploration bonus (rewards are accuracies a few points apart, so well
    /// below UCB1's 1).
    pub exploration: f64,
}

impl Bandit {
    /// An agent over `arms` arms.
    pub fn new(arms: usize, exploration: f64) -> Bandit {
        Bandit {
            rewards: vec![Vec::new(); arms],
            exploration,
        }
    }

    /// The arm to pull next.
    pub fn next(&self) -> usize {
        if let Some(a) = self.rewards.iter().position(Vec::is_empty) {
            return a;
        }
        let t: usize = self.rewards.iter().map(Vec::len).sum();
        let ucb = |r: &Vec<f64>| {
            mean(r) + self.exploration * (2.0 * (t as f64).ln() / r.len() as f64).sqrt()
        };
        argmax(self.rewards.iter().map(ucb))
    }

    /// Records a pull of `arm`.
    pub fn record(&mut self, arm: usize, reward: f64) {
        self.rewards[arm].push(reward);
    }

    /// The arm with the best mean reward among those pulled (the first on ties).
    pub fn best(&self) -> Option<usize> {
        let pulled = self.rewards.iter().any(|r| !r.is_empty());
        pulled.then(|| {
            argmax(self.rewards.iter().map(|r| {
                if r.is_empty() {
                    f64::NEG_INFINITY
                } else {
                    mean(r)
                }
            }))
        })
    }
}

fn mean(r: &[f64]) -> f64 {
    r.iter().sum::<f64>() / r.len().max(1) as f64
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Runs `budget` pulls of `bandit`; `pull(arm, k)` trains arm `arm` briefly for the `k`-th
/// pull and returns its reward. Returns the best arm.
pub fn search(
    bandit: &mut Bandit,
    budget: usize,
    pull: &mut dyn FnMut(usize, usize) -> Result<f64>,
) -> Result<usize> {
    for k in 0..budget {
        let arm = bandit.next();
        let reward = pull(arm, k)?;
        bandit.record(arm, reward);
    }
    bandit
        .best()
        .ok_or_else(|| Error::Usage("the agent's evaluation budget is 0".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandit_pulls_every_arm_then_exploits() {
        // Arm 2 pays most: after one pull each, the agent keeps pulling it.
        let pay = [0.5, 0.6, 0.9, 0.4];
        let mut b = Bandit::new(4, 0.1);
        let mut order = Vec::new();
        let best = search(&mut b, 10, &mut |a, _| {
            order.push(a);
            Ok(pay[a])
        })
        .unwrap();
        assert_eq!(&order[..4], &[0, 1, 2, 3]);
        assert_eq!(best, 2);
        assert!(
            order[4..].iter().filter(|&&a| a == 2).count() >= 5,
            "{order:?}"
        );
        // A large bonus explores: every arm gets pulled again.
        let mut b = Bandit::new(4, 10.0);
        search(&mut b, 12, &mut |a, _| Ok(pay[a])).unwrap();
        assert!(b.rewards.iter().all(|r| r.len() >= 2), "{:?}", b.rewards);
        assert!(search(&mut Bandit::new(3, 0.1), 0, &mut |_, _| Ok(0.0)).is_err());
    }

    #[test]
    fn ranks_and_keep_top() {
        let mut masks = WeightMap::new();
        masks.insert("a".into(), vec![1.0, 1.0, 0.0]);
        masks.insert("b".into(), vec![1.0, 1.0]);
        let mut scores = WeightMap::new();
        scores.insert("a".into(), vec![5.0, 1.0, 99.0]);
        scores.insert("b".into(), vec![3.0, 2.0]);
        let r = ranks(&scores, &masks);
        assert_eq!(r, vec![1.0, 0.0, -1.0, 2.0 / 3.0, 1.0 / 3.0]);
        keep_top(&mut masks, &r, 2);
        assert_eq!(masks["a"], vec![1.0, 0.0, 0.0]);
        assert_eq!(masks["b"], vec![1.0, 0.0]);
    }
}
