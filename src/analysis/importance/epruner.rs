//! `epruner`: affinity propagation over each prunable group's filter vectors (see
//! [`super::filters`]; a class's vector concatenates all its producer slices). Similarity is
//! −‖x_i − x_k‖², every class's preference is the median of the off-diagonal similarities,
//! damping 0.7, at most 200 iterations, stopping once the exemplar set has not changed for 15
//! iterations. Each cluster's exemplar is then refined to its medoid (the member with the
//! largest summed similarity to the cluster), as scikit-learn does. Exemplars are the
//! channels to keep: [`Scores::keep`] marks them.
//!
//! Scores rank every exemplar above every non-exemplar: with `l` the class's L1 filter norm
//! divided by the group's largest, an exemplar scores `1 + l` (in [1, 2]) and a non-exemplar
//! `l / 2` (in [0, 0.5]); [`super::score`] then max-normalises per group as usual, which keeps
//! that order. Deterministic: ties are broken by a fixed tiny perturbation of the
//! similarities (not by the context's seed).
//!
//! Cost: O(n²·d) for the distances and O(n²) per iteration with 3·n² f64 of memory (96 MiB
//! at n = 2048). Groups of more than 4096 classes are not clustered: all their classes are
//! kept, ranked by L1, and a note says so; blocked groups are not clustered either (their
//! channels are kept). A note also counts groups that did not converge (their last exemplar
//! set is used).

use super::filters::{Filters, Norm};
use super::random::SplitMix64;
use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

/// Groups larger than this are not clustered.
const MAX_CLASSES: usize = 4096;
/// Iteration cap.
const MAX_ITER: usize = 200;
/// Iterations without a change of the exemplar set that count as converged.
const CONVERGED_AFTER: usize = 15;
/// Weight of the previous message in each update.
const DAMPING: f64 = 0.7;

/// The affinity-propagation (EPruner) criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epruner;

impl Criterion for Epruner {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let filters = Filters::new(cx.model, cx.groups);
        let l1 = filters.class_norms(Norm::L1, cx.reduce);
        let n_classes = cx.groups.class_atoms.len();
        let mut values = vec![0f64; n_classes];
        let mut keep = vec![true; n_classes];
        let (mut too_big, mut unconverged) = (0usize, 0usize);
        for grp in &cx.groups.groups {
            let classes = &grp.classes;
            let max = classes.iter().map(|&c| l1[c]).fold(0f64, f64::max);
            let rel = |c: usize| if max > 0.0 { l1[c] / max } else { 0.0 };
            let exemplars = if !grp.prunable() {
                vec![true; classes.len()]
            } else if classes.len() > MAX_CLASSES {
                too_big += 1;
                vec![true; classes.len()]
            } else {
                let (ex, converged) = exemplars(similarities(&filters, classes), classes.len());
                if !converged {
                    unconverged += 1;
                }
                ex
            };
            for (&c, &e) in classes.iter().zip(&exemplars) {
                keep[c] = e;
                values[c] = if e { 1.0 + rel(c) } else { rel(c) / 2.0 };
            }
        }
        let mut notes = Vec::new();
        if too_big > 0 {
            notes.push(format!(
                "epruner: {too_big} group(s) of more than {MAX_CLASSES} channels were not clustered (all kept, ranked by L1)"
            ));
        }
        if unconverged > 0 {
            notes.push(format!(
                "epruner: affinity propagation did not converge in {MAX_ITER} iterations for {unconverged} group(s); their last exemplars are used"
            ));
        }
        Ok(Scores {
            values,
            keep: Some(keep),
            notes,
        })
    }
}

/// Row-major `n × n` similarities −‖x_i − x_k‖² of the filter vectors of `classes`.
fn similarities(filters: &Filters, classes: &[usize]) -> Vec<f64> {
    let gram = filters.gram(classes);
    let n = classes.len();
    let diag: Vec<f64> = (0..n).map(|i| gram[[i, i]]).collect();
    let mut s = vec![0f64; n * n];
    for (i, row) in s.chunks_exact_mut(n.max(1)).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            if k != i {
                *v = -(diag[i] + diag[k] - 2.0 * gram[[i, k]]).max(0.0);
            }
        }
    }
    s
}

/// Affinity propagation on row-major similarities `s` (`n × n`, diagonal ignored; reused
/// as the working matrix): which
/// points are exemplars, and whether the iteration converged.
pub(crate) fn exemplars(mut s: Vec<f64>, n: usize) -> (Vec<bool>, bool) {
    if n <= 1 {
        return (vec![true; n], true);
    }
    let mut off: Vec<f64> = (0..n * n)
        .filter(|i| i / n != i % n)
        .map(|i| s[i])
        .collect();
    let (lo, hi) = off
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo == hi {
        // All points equally similar: as scikit-learn, every point is its own exemplar when
        // the preference (here equal to that similarity) is not below it.
        return (vec![true; n], true);
    }
    let pref = median(&mut off);
    // A fixed tiny perturbation breaks exact ties (identical filters) deterministically.
    let mut rng = SplitMix64::new(0x5EED);
    let scale = (hi - lo).abs().max(f64::MIN_POSITIVE);
    for (i, v) in s.iter_mut().enumerate() {
        if i / n == i % n {
            *v = pref;
        }
        *v += (rng.next_f64() - 0.5) * 1e-12 * scale;
    }
    let mut r = vec![0f64; n * n];
    let mut a = vec![0f64; n * n];
    // Column sums of the responsibilities as the availability update reads them:
    // r(k,k) + Σ_{i ≠ k} max(0, r(i,k)).
    let mut colsum = vec![0f64; n];
    let mut next = vec![0f64; n];
    let mut v = vec![0f64; n];
    let mut is_ex = vec![false; n];
    let mut stable = 0usize;
    let mut converged = false;
    let (keep, take) = (DAMPING, 1.0 - DAMPING);
    // One fused sweep per iteration, row by row: the availabilities of row i from the
    // previous responsibilities (via `colsum`), the exemplar test, then the responsibilities
    // of row i from those availabilities (they only need row i), accumulating the next
    // `colsum`. This is the usual R-then-A order, shifted by half an iteration. The inner
    // loops are branch-free; the diagonal and the row's best entry are fixed up afterwards.
    for it in 0..=MAX_ITER {
        next.fill(0.0);
        let mut changed = false;
        for i in 0..n {
            let row = i * n..(i + 1) * n;
            let (srow, rrow, arow) = (&s[row.clone()], &mut r[row.clone()], &mut a[row]);
            if it > 0 {
                // a(i,k) = min(0, r(k,k) + Σ_{i' ∉ {i,k}} max(0, r(i',k))),
                // a(k,k) = Σ_{i' ≠ k} max(0, r(i',k)).
                let a_ii = arow[i];
                for (((av, &rv), &cs), (vk, &sk)) in arow
                    .iter_mut()
                    .zip(rrow.iter())
                    .zip(&colsum)
                    .zip(v.iter_mut().zip(srow))
                {
                    *av = keep * *av + take * neg(cs - pos(rv));
                    *vk = *av + sk;
                }
                arow[i] = keep * a_ii + take * (colsum[i] - rrow[i]);
                v[i] = arow[i] + srow[i];
                let now = arow[i] + rrow[i] > 0.0;
                changed |= now != is_ex[i];
                is_ex[i] = now;
            } else {
                v.copy_from_slice(srow);
            }
            if it == MAX_ITER {
                continue;
            }
            // r(i,k) = s(i,k) − max_{k' ≠ k} (a(i,k') + s(i,k')).
            let (arg, best) = argmax(&v);
            let hold = v[arg];
            v[arg] = f64::NEG_INFINITY;
            let second = argmax(&v).1;
            v[arg] = hold;
            let r_arg = rrow[arg];
            for ((rv, &sk), nk) in rrow.iter_mut().zip(srow).zip(next.iter_mut()) {
                *rv = keep * *rv + take * (sk - best);
                *nk += pos(*rv);
            }
            // The best entry's competitor is the second best.
            next[arg] -= pos(rrow[arg]);
            rrow[arg] = keep * r_arg + take * (srow[arg] - second);
            next[arg] += pos(rrow[arg]);
            // The diagonal enters the column sum as is.
            next[i] += rrow[i] - pos(rrow[i]);
        }
        std::mem::swap(&mut colsum, &mut next);
        if it > 0 {
            stable = if changed { 0 } else { stable + 1 };
            if stable >= CONVERGED_AFTER && is_ex.iter().any(|&e| e) {
                converged = true;
                break;
            }
        }
    }
    if !is_ex.iter().any(|&e| e) {
        // No exemplar emerged: keep the single most self-responsible point.
        let best = (0..n)
            .max_by(|&x, &y| {
                (a[x * n + x] + r[x * n + x]).total_cmp(&(a[y * n + y] + r[y * n + y]))
            })
            .unwrap_or(0);
        is_ex[best] = true;
    }
    (refine(&s, n, &is_ex), converged)
}

/// Assigns every point to its most similar exemplar, then moves each cluster's exemplar to
/// the member with the largest summed similarity to the other members.
fn refine(s: &[f64], n: usize, is_ex: &[bool]) -> Vec<bool> {
    let ex: Vec<usize> = (0..n).filter(|&k| is_ex[k]).collect();
    let label: Vec<usize> = (0..n)
        .map(|i| {
            if is_ex[i] {
                return i;
            }
            ex.iter()
                .copied()
                .max_by(|&x, &y| s[i * n + x].total_cmp(&s[i * n + y]).then(y.cmp(&x)))
                .unwrap_or(i)
        })
        .collect();
    let mut out = vec![false; n];
    for &e in &ex {
        let members: Vec<usize> = (0..n).filter(|&i| label[i] == e).collect();
        let total = |j: usize| -> f64 {
            members
                .iter()
                .filter(|&&i| i != j)
                .map(|&i| s[i * n + j])
                .sum()
        };
        let best = members
            .iter()
            .copied()
            .map(|j| (j, total(j)))
            .fold(None, |acc: Option<(usize, f64)>, (j, t)| match acc {
                Some((_, bt)) if bt >= t => acc,
                _ => Some((j, t)),
            })
            .map_or(e, |b| b.0);
        out[best] = true;
    }
    out
}

/// `max(x, 0)` as a plain comparison (vectorises; NaN maps to 0).
#[inline]
fn pos(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// `min(x, 0)` as a plain comparison (vectorises; NaN maps to 0).
#[inline]
fn neg(x: f64) -> f64 {
    if x < 0.0 {
        x
    } else {
        0.0
    }
}

/// Index and value of the largest entry of `v` (the first on ties; `v` not empty).
fn argmax(v: &[f64]) -> (usize, f64) {
    let mut lanes = [f64::NEG_INFINITY; 4];
    let chunks = v.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    let best = tail
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let arg = v.iter().position(|&x| x == best).unwrap_or(0);
    (arg, best)
}

/// Median of `v` (mean of the two middle values for an even count); reorders `v`.
fn median(v: &mut [f64]) -> f64 {
    let (len, m) = (v.len(), v.len() / 2);
    let (lower, mid, _) = v.select_nth_unstable_by(m, f64::total_cmp);
    let mid = *mid;
    if len % 2 == 1 {
        return mid;
    }
    let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (below + mid) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Similarities −‖p_i − p_k‖² of points on a line.
    fn line(points: &[f64]) -> Vec<f64> {
        let n = points.len();
        (0..n * n)
            .map(|x| -(points[x / n] - points[x % n]).powi(2))
            .collect()
    }

    #[test]
    fn small_and_degenerate_inputs() {
        assert_eq!(exemplars(vec![], 0), (vec![], true));
        assert_eq!(exemplars(vec![0.0], 1), (vec![true], true));
        // Two points, or all points equally similar: everyone is an exemplar.
        assert_eq!(exemplars(line(&[0.0, 1.0]), 2).0, vec![true, true]);
        assert_eq!(exemplars(line(&[3.0; 4]), 4).0, vec![true; 4]);
    }

    #[test]
    fn clusters_on_a_line_get_their_medoids() {
        // Three tight clusters; each medoid is the middle point.
        let pts = [0.0, 0.1, 0.2, 10.0, 10.1, 10.2, 20.0, 20.1, 20.2];
        let (ex, converged) = exemplars(line(&pts), pts.len());
        assert!(converged);
        let kept: Vec<usize> = (0..pts.len()).filter(|&i| ex[i]).collect();
        assert_eq!(kept, [1, 4, 7]);
    }

    #[test]
    fn median_and_argmax() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(argmax(&[1.0, 5.0, 2.0, 5.0, 0.0, -1.0]), (1, 5.0));
        assert_eq!(argmax(&[-2.0]), (0, -2.0));
    }
}
