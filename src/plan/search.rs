//! Searching per-group removal counts that meet a budget: bisection on a one-parameter family
//! of allocations (the global threshold, the per-group ratio or the block width multiplier),
//! then a greedy fix-up where channels are too coarse for the bisection alone; and the few-call
//! variant for slow, noisy measurements (latency).
//!
//! A family maps `p ∈ [0, 1]` to per-group counts of [`Space`], removing nothing at 0, the most
//! the constraints allow at 1, and (nearly) monotonically more in between. This module does not
//! know what a count means for the model beyond the ratio its evaluator reports.

use std::collections::HashMap;

use crate::analysis::MaskedCost;
use crate::error::{Error, Result};

use super::allocate::Predict;
use super::space::Space;

/// At most this many fix-up evaluations (each one cost-model estimate).
const FIX_UP_EVALUATIONS: usize = 4000;

/// What a ratio is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metric {
    /// MACs.
    Macs,
    /// Parameters.
    Params,
}

/// Estimated ratio (after / before) of per-group counts, memoised by counts.
pub(crate) struct Evaluator<'a, 'm> {
    space: &'a Space,
    cost: &'a MaskedCost<'m>,
    metric: Metric,
    /// Predicts the ratio instead of the cost model (latency tables).
    predict: Option<Predict<'a>>,
    memo: HashMap<Vec<usize>, f64>,
    /// Estimates computed (memo hits not counted).
    pub evaluations: usize,
}

impl<'a, 'm> Evaluator<'a, 'm> {
    /// An evaluator of `metric`; errors when the model has none of it (nothing to reduce).
    pub fn new(space: &'a Space, cost: &'a MaskedCost<'m>, metric: Metric) -> Result<Self> {
        let (macs, params) = cost.original();
        let base = if metric == Metric::Macs { macs } else { params };
        if base == 0 {
            let (has, budget) = match metric {
                Metric::Macs => ("MACs", "FLOPs"),
                Metric::Params => ("parameters", "parameter"),
            };
            return Err(Error::Usage(format!(
                "the model has no {has}: a {budget} budget cannot be met"
            )));
        }
        Ok(Evaluator {
            space,
            cost,
            metric,
            predict: None,
            memo: HashMap::new(),
            evaluations: 0,
        })
    }

    /// An evaluator of `predict`'s ratio.
    pub fn predicted(space: &'a Space, cost: &'a MaskedCost<'m>, predict: Predict<'a>) -> Self {
        Evaluator {
            space,
            cost,
            metric: Metric::Macs,
            predict: Some(predict),
            memo: HashMap::new(),
            evaluations: 0,
        }
    }

    /// The estimated ratio of `counts`.
    pub fn ratio(&mut self, counts: &[usize]) -> f64 {
        if let Some(r) = self.memo.get(counts) {
            return *r;
        }
        self.evaluations += 1;
        if let Some(predict) = self.predict {
            let mut removed = vec![false; self.cost.classes()];
            for c in self.space.select(counts) {
                if let Some(r) = removed.get_mut(c) {
                    *r = true;
                }
            }
            let r = predict(&removed);
            self.memo.insert(counts.to_vec(), r);
            return r;
        }
        let (macs, params) = self.cost.estimate_classes(&self.space.select(counts));
        let (m0, p0) = self.cost.original();
        let r = match self.metric {
            Metric::Macs => macs as f64 / m0 as f64,
            Metric::Params => params as f64 / p0 as f64,
        };
        self.memo.insert(counts.to_vec(), r);
        r
    }
}

/// The outcome of a search.
pub(crate) struct Found {
    /// Per-group counts.
    pub counts: Vec<usize>,
    /// Their ratio (estimated or measured).
    pub ratio: f64,
    /// Family parameter of the bisection's final bracket end that was kept or fixed up.
    pub p: f64,
    /// Fix-up moves applied (0: the bisection alone met the target).
    pub moves: usize,
    /// Whether the ratio is within the tolerance.
    pub met: bool,
}

/// What the error of a target the constraints cannot reach says (see [`bisect`]).
pub(crate) const UNREACHABLE: &str = "cannot be reached under the constraints";

/// Bisection of `family` for `target ± tol` with the cost model, then the fix-up (walking by
/// channel score, or by `group_priority` when given: block importance). Errors when
/// even the largest removal the constraints allow stays above `target + tol`, naming the
/// smallest ratio reachable.
pub(crate) fn bisect(
    space: &Space,
    eval: &mut Evaluator,
    family: &dyn Fn(f64) -> Vec<usize>,
    group_priority: Option<&[f64]>,
    target: f64,
    tol: f64,
    what: &str,
) -> Result<Found> {
    let top = family(1.0);
    let r_top = eval.ratio(&top);
    if r_top > target + tol {
        return Err(Error::Usage(format!(
            "{what} target {target} {UNREACHABLE}: the smallest ratio reachable is {r_top:.4}"
        )));
    }
    let zero = family(0.0);
    let r_zero = eval.ratio(&zero);
    if r_zero <= target + tol {
        return Ok(Found {
            counts: zero,
            ratio: r_zero,
            p: 0.0,
            moves: 0,
            met: r_zero >= target - tol,
        });
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let (mut c_lo, mut r_lo, mut c_hi, mut r_hi) = (zero, r_zero, top, r_top);
    while hi - lo > 1e-12 {
        let mid = 0.5 * (lo + hi);
        let c = family(mid);
        if c == c_lo {
            lo = mid;
            continue;
        }
        if c == c_hi {
            hi = mid;
            continue;
        }
        let r = eval.ratio(&c);
        if r >= target {
            (lo, c_lo, r_lo) = (mid, c, r);
        } else {
            (hi, c_hi, r_hi) = (mid, c, r);
        }
    }
    let inside = |r: f64| (r - target).abs() <= tol;
    let ends = [(&c_lo, r_lo, lo), (&c_hi, r_hi, hi)];
    if let Some(b) = closer_inside(ends, target, tol) {
        return Ok(b);
    }
    // Fix-up: from above (remove more), then from below (restore some).
    let (c, r, moves) = walk(
        space,
        eval,
        group_priority,
        c_lo.clone(),
        r_lo,
        target,
        tol,
        true,
    );
    if inside(r) {
        return Ok(Found {
            counts: c,
            ratio: r,
            p: lo,
            moves,
            met: true,
        });
    }
    let (c2, r2, moves2) = walk(
        space,
        eval,
        group_priority,
        c_hi.clone(),
        r_hi,
        target,
        tol,
        false,
    );
    if inside(r2) {
        return Ok(Found {
            counts: c2,
            ratio: r2,
            p: hi,
            moves: moves2,
            met: true,
        });
    }
    // Neither walk lands inside: search the neighbourhood of both.
    let (p, start) = if (r - target).abs() <= (r2 - target).abs() {
        (lo, [(c2, r2), (c, r)])
    } else {
        (hi, [(c, r), (c2, r2)])
    };
    let (counts, ratio, steps) = neighbourhood(space, eval, start, target, tol);
    Ok(Found {
        counts,
        ratio,
        p,
        moves: moves + moves2 + steps,
        met: inside(ratio),
    })
}

/// Of the bisection's two bracket ends (counts, ratio, parameter), the one within
/// `target ± tol` that is closer to the target (the lower end on a tie); `None` when neither is.
fn closer_inside(ends: [(&Vec<usize>, f64, f64); 2], target: f64, tol: f64) -> Option<Found> {
    let mut best: Option<Found> = None;
    for (c, r, p) in ends {
        if (r - target).abs() <= tol {
            keep_nearer(&mut best, c, r, p, target, tol);
        }
    }
    best
}

/// Puts `counts` (ratio `r`, family parameter `p`, no fix-up moves) in `best` when `best` is
/// empty or `r` is strictly nearer `target`; `met` says whether `r` is within `target ± tol`.
fn keep_nearer(best: &mut Option<Found>, counts: &[usize], r: f64, p: f64, target: f64, tol: f64) {
    if best
        .as_ref()
        .is_none_or(|b| (r - target).abs() < (b.ratio - target).abs())
    {
        *best = Some(Found {
            counts: counts.to_vec(),
            ratio: r,
            p,
            moves: 0,
            met: (r - target).abs() <= tol,
        });
    }
}

/// Best-first search over allocations one allowed step (up or down, in any group) apart,
/// nearest ratio to the target first (ties: the smaller counts vector), from `start` (the
/// second is kept when both are equally near), until
/// one is within `target ± tol` or [`FIX_UP_EVALUATIONS`] estimates were made. Returns the
/// nearest allocation seen, its ratio and the number of allocations expanded. This finds the
/// exchanges the one-directional walks cannot (remove three channels here, restore two there).
fn neighbourhood(
    space: &Space,
    eval: &mut Evaluator,
    start: [(Vec<usize>, f64); 2],
    target: f64,
    tol: f64,
) -> (Vec<usize>, f64, usize) {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashSet};
    let key = |r: f64| (r - target).abs().to_bits();
    let mut heap: BinaryHeap<Reverse<(u64, Vec<usize>)>> = BinaryHeap::new();
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut best = start[1].clone();
    for (c, r) in start {
        if (r - target).abs() < (best.1 - target).abs() {
            best = (c.clone(), r);
        }
        if seen.insert(c.clone()) {
            heap.push(Reverse((key(r), c)));
        }
    }
    let budget_end = eval.evaluations + FIX_UP_EVALUATIONS;
    let mut expanded = 0;
    while let Some(Reverse((_, state))) = heap.pop() {
        if (best.1 - target).abs() <= tol || eval.evaluations >= budget_end {
            break;
        }
        expanded += 1;
        for i in 0..state.len() {
            let Some(step) = space.step_of(i, state[i]) else {
                continue;
            };
            let up = space.valid[i].get(step + 1).copied();
            let down = step.checked_sub(1).map(|s| space.valid[i][s]);
            for next in [up, down].into_iter().flatten() {
                let mut cand = state.clone();
                cand[i] = next;
                if !seen.insert(cand.clone()) {
                    continue;
                }
                let rc = eval.ratio(&cand);
                if (rc - target).abs() < (best.1 - target).abs() {
                    best = (cand.clone(), rc);
                }
                heap.push(Reverse((key(rc), cand)));
            }
        }
    }
    (best.0, best.1, expanded)
}

/// The greedy fix-up. From above (`remove`): repeatedly take the group whose next channel to
/// go scores lowest (or whose `group_priority` is lowest) and remove its next allowed step if
/// the ratio stays ≥ `target − tol`; a group whose step would overshoot is closed. From below:
/// restore the highest-scoring removed step while the ratio stays ≤ `target + tol`. Ties go to
/// the lower group. Stops inside the window or when no group is open. Returns the counts,
/// their ratio and the moves applied.
#[allow(clippy::too_many_arguments)]
fn walk(
    space: &Space,
    eval: &mut Evaluator,
    group_priority: Option<&[f64]>,
    mut state: Vec<usize>,
    mut r: f64,
    target: f64,
    tol: f64,
    remove: bool,
) -> (Vec<usize>, f64, usize) {
    let mut open = vec![true; state.len()];
    let mut moves = 0;
    let start = eval.evaluations;
    loop {
        let done = if remove {
            r <= target + tol
        } else {
            r >= target - tol
        };
        if done || eval.evaluations - start > FIX_UP_EVALUATIONS {
            break;
        }
        // (priority, group, new count)
        let mut pick: Option<(f64, usize, usize)> = None;
        for (i, &count) in state.iter().enumerate() {
            if !open[i] {
                continue;
            }
            let Some(step) = space.step_of(i, count) else {
                continue;
            };
            let next = if remove {
                space.valid[i].get(step + 1).copied()
            } else {
                step.checked_sub(1).map(|s| space.valid[i][s])
            };
            let Some(next) = next else { continue };
            // Removing: the first channel that would go; restoring: the last one removed.
            let idx = if remove {
                count
            } else {
                count.saturating_sub(1)
            };
            let score = match group_priority {
                Some(p) => p.get(i).copied().unwrap_or(0.0),
                None => space.scores[i].get(idx).copied().unwrap_or(0.0),
            };
            let better = match pick {
                None => true,
                Some((s, _, _)) if remove => score < s,
                Some((s, _, _)) => score > s,
            };
            if better {
                pick = Some((score, i, next));
            }
        }
        let Some((_, i, next)) = pick else { break };
        let mut cand = state.clone();
        cand[i] = next;
        let rc = eval.ratio(&cand);
        let ok = if remove {
            rc >= target - tol
        } else {
            rc <= target + tol
        };
        if ok {
            state = cand;
            r = rc;
            moves += 1;
        } else {
            open[i] = false;
        }
    }
    (state, r, moves)
}

/// The tolerance of a measured search is at least this: two timings of the same model differ
/// by about 1% (the latency evaluator's precision), so a tighter window spends calls on noise.
pub const MEASURED_TOLERANCE: f64 = 0.02;

/// The few-call search for a measured ratio (latency): starts at `p0` (the cost model's
/// answer for the same target), then bisects on the family parameter with the measurements,
/// at most `max_calls` of them, stopping as soon as one is within `target ± tol` (`tol` at
/// least [`MEASURED_TOLERANCE`]). Returns, of the measured points at or under `target + tol`,
/// the one that removes least (a noisy, flat latency curve otherwise lets the search land on a
/// point that removes far more than the budget needs); when none is, the point closest to the
/// target (`met` false). No fix-up (measurements are too noisy for single-channel steps).
pub(crate) fn bisect_measured(
    space: &Space,
    family: &dyn Fn(f64) -> Vec<usize>,
    measure: &mut dyn FnMut(&[usize]) -> Result<f64>,
    p0: f64,
    target: f64,
    tol: f64,
    max_calls: usize,
) -> Result<(Found, usize)> {
    let tol = tol.max(MEASURED_TOLERANCE);
    let mut c_lo = family(0.0);
    if target + tol >= 1.0 {
        // Removing nothing keeps everything: no measurement needed.
        return Ok((
            Found {
                counts: c_lo,
                ratio: 1.0,
                p: 0.0,
                moves: 0,
                met: true,
            },
            0,
        ));
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut p = p0.clamp(0.0, 1.0);
    let mut c_hi: Option<Vec<usize>> = None;
    let mut seen: HashMap<Vec<usize>, f64> = HashMap::new();
    let mut best: Option<Found> = None;
    // The measured point at or under `target + tol` with the smallest parameter (removing least).
    let mut fit: Option<Found> = None;
    let mut calls = 0;
    while calls < max_calls && hi - lo > 1e-12 {
        let c = family(p);
        if c == c_lo {
            lo = p;
            p = 0.5 * (lo + hi);
            continue;
        }
        if c_hi.as_ref() == Some(&c) {
            hi = p;
            p = 0.5 * (lo + hi);
            continue;
        }
        let r = match seen.get(&c) {
            Some(r) => *r,
            None => {
                calls += 1;
                let r = measure(&space.select(&c))?;
                if !r.is_finite() {
                    return Err(Error::Usage(format!(
                        "the measurement returned {r} for a candidate allocation"
                    )));
                }
                seen.insert(c.clone(), r);
                r
            }
        };
        keep_nearer(&mut best, &c, r, p, target, tol);
        if r <= target + tol && fit.as_ref().is_none_or(|f| p < f.p) {
            fit = Some(Found {
                counts: c.clone(),
                ratio: r,
                p,
                moves: 0,
                met: (r - target).abs() <= tol,
            });
        }
        if (r - target).abs() <= tol {
            break;
        }
        if r > target {
            lo = p;
            c_lo = c;
        } else {
            hi = p;
            c_hi = Some(c);
        }
        p = 0.5 * (lo + hi);
    }
    match fit.or(best) {
        Some(b) => Ok((b, calls)),
        None => Err(Error::Usage(
            "no measurement was made (max calls is 0)".into(),
        )),
    }
}
