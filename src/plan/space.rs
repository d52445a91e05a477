//! The search space of an allocation: the groups that may lose channels, each with its
//! removal order (lowest score first, ties by class index) and the removal counts its
//! constraints allow; turning per-group counts into classes without emptying any tensor.
//!
//! This module does not choose counts ([`super::allocate`] and [`super::search`] do) and does
//! not estimate costs.

use std::collections::HashMap;

use crate::analysis::channels::ChannelGroups;
use crate::error::{Error, Result};
use crate::ir::{Model, NodeId};
use crate::ops::channel::{Link, Port};

use super::allocate::Constraints;

/// The eligible groups of one model under one set of constraints.
pub(crate) struct Space {
    /// Group ids that may lose channels, ascending.
    pub eligible: Vec<usize>,
    /// Per eligible group: its classes in removal order.
    pub order: Vec<Vec<usize>>,
    /// Per eligible group: the removal counts allowed, ascending (always starts with 0).
    pub valid: Vec<Vec<usize>>,
    /// Per eligible group: score of each class in `order`.
    pub scores: Vec<Vec<f64>>,
    /// Per eligible group: the multiple its kept counts round to (1: exact).
    multiple: Vec<usize>,
    /// Lengths of the tracked tensors (`slots`), and per class the tensors it sits in.
    slot_len: Vec<usize>,
    class_slots: Vec<Vec<(usize, usize)>>,
    /// What the user should know about the constraints (groups left alone, ignored).
    pub notes: Vec<String>,
}

impl Space {
    /// Builds the space: prunable groups minus ignored ones; per group the removal order by
    /// `scores` and the counts `constraints` allow. With `keep`, classes marked `false` come
    /// first in every group's order (then by score).
    pub fn new(
        model: &Model,
        groups: &ChannelGroups,
        scores: &[f64],
        keep: Option<&[bool]>,
        constraints: &Constraints,
    ) -> Result<Space> {
        let n_classes = groups.class_atoms.len();
        if scores.len() != n_classes {
            return Err(Error::Usage(format!(
                "{} scores for {n_classes} channel classes",
                scores.len()
            )));
        }
        if scores.iter().any(|s| s.is_nan()) {
            return Err(Error::Usage("channel scores must not be NaN".into()));
        }
        constraints.validate()?;
        let names = group_node_names(model, groups);
        let mut space = Space {
            eligible: Vec::new(),
            order: Vec::new(),
            valid: Vec::new(),
            scores: Vec::new(),
            multiple: Vec::new(),
            slot_len: Vec::new(),
            class_slots: vec![Vec::new(); n_classes],
            notes: Vec::new(),
        };
        let mut ignored = Vec::new();
        let mut too_small = Vec::new();
        let widths = groups.group_widths();
        for grp in groups.groups.iter().filter(|g| g.prunable()) {
            if let Some(pat) = constraints
                .ignore
                .iter()
                .find(|p| names[grp.id].iter().any(|n| glob_match(p, n)))
            {
                ignored.push(format!("{} ('{pat}')", grp.id));
                continue;
            }
            let n = grp.classes.len();
            let width = widths[grp.id];
            let valid = allowed_counts(n, width, constraints);
            if valid.len() < 2 {
                let k = constraints.multiple(n, width);
                if k > 1 && n < k {
                    too_small.push(grp.id);
                }
                continue;
            }
            let mut order = grp.classes.clone();
            let kept = |c: usize| keep.is_some_and(|k| k.get(c).copied().unwrap_or(true));
            order.sort_by(|a, b| {
                kept(*a)
                    .cmp(&kept(*b))
                    .then(scores[*a].total_cmp(&scores[*b]))
                    .then(a.cmp(b))
            });
            space
                .scores
                .push(order.iter().map(|c| scores[*c]).collect());
            space.order.push(order);
            space.valid.push(valid);
            space.multiple.push(constraints.multiple(n, width));
            space.eligible.push(grp.id);
        }
        if !ignored.is_empty() {
            space.notes.push(format!(
                "{} group(s) left intact by --ignore: {}",
                ignored.len(),
                ignored.join(", ")
            ));
        }
        if !too_small.is_empty() {
            space.notes.push(format!(
                "{} group(s) with fewer channels than the rounding multiple {} left intact: {:?}",
                too_small.len(),
                constraints.round_to,
                too_small
            ));
        }
        let mut keys: Vec<_> = groups.slots.keys().copied().collect();
        keys.sort();
        for (s, key) in keys.iter().enumerate() {
            let atoms = &groups.slots[key];
            space.slot_len.push(atoms.len());
            let mut per: HashMap<usize, usize> = HashMap::new();
            for a in atoms {
                *per.entry(groups.class_of[*a]).or_default() += 1;
            }
            for (c, k) in per {
                if let Some(v) = space.class_slots.get_mut(c) {
                    v.push((s, k));
                }
            }
        }
        Ok(space)
    }

    /// The allowed count of eligible group `i` nearest to `raw` (ties: the smaller removal).
    pub fn fit(&self, i: usize, raw: usize) -> usize {
        let v = &self.valid[i];
        match v.binary_search(&raw) {
            Ok(_) => raw,
            Err(0) => v[0],
            Err(j) if j >= v.len() => v[v.len() - 1],
            Err(j) => {
                let (lo, hi) = (v[j - 1], v[j]);
                if raw - lo <= hi - raw {
                    lo
                } else {
                    hi
                }
            }
        }
    }

    /// Position of `count` among group `i`'s allowed counts.
    pub fn step_of(&self, i: usize, count: usize) -> Option<usize> {
        self.valid[i].binary_search(&count).ok()
    }

    /// Total channels of the eligible groups.
    pub fn channels(&self) -> usize {
        self.order.iter().map(Vec::len).sum()
    }

    /// The classes removed when eligible group `i` loses `counts[i]` channels: its lowest
    /// ones, skipping any whose removal would leave a tracked tensor without channels (the
    /// next one is taken instead). Groups are visited in id order; the result is sorted.
    ///
    /// A rounded group whose channels sit in tensors of different widths (a residual stream
    /// that option-A shortcuts widen stage by stage) loses whole multiples from each set of
    /// channels sharing the same tensors ([`Space::chunks`]), so that every tensor's width
    /// stays a multiple, not just the group's count.
    pub fn select(&self, counts: &[usize]) -> Vec<usize> {
        let mut kept = self.slot_len.clone();
        let mut out = Vec::new();
        for (i, order) in self.order.iter().enumerate() {
            let want = counts.get(i).copied().unwrap_or(0);
            let mut taken = 0;
            if want > 0 {
                for chunk in self.chunks(i, want) {
                    let fits = chunk.iter().all(|&c| {
                        self.class_slots[c].iter().all(|&(s, k)| {
                            let same: usize = chunk
                                .iter()
                                .flat_map(|&d| &self.class_slots[d])
                                .filter(|(t, _)| *t == s)
                                .map(|(_, k)| k)
                                .sum();
                            kept[s] > same.max(k)
                        })
                    });
                    if !fits || taken + chunk.len() > want {
                        continue;
                    }
                    for &c in &chunk {
                        for &(s, k) in &self.class_slots[c] {
                            kept[s] -= k;
                        }
                        out.push(c);
                    }
                    taken += chunk.len();
                }
            }
            let chosen: std::collections::HashSet<usize> = out.iter().copied().collect();
            for &c in order {
                if chosen.contains(&c) {
                    continue;
                }
                if taken == want {
                    break;
                }
                let hits = &self.class_slots[c];
                if hits.iter().all(|&(s, k)| kept[s] > k) {
                    for &(s, k) in hits {
                        kept[s] -= k;
                    }
                    out.push(c);
                    taken += 1;
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Group `i`'s removal in whole multiples per tensor set, lowest first: its classes split
    /// by the tensors they sit in (their signature); each cell's classes, in removal order,
    /// cut into chunks of the group's multiple; chunks taken by the score of their last
    /// (highest) class until `want` channels. Empty when the group is exact, has one
    /// signature (its count alone decides its widths) or no chunks fit; [`Space::select`]
    /// then takes classes one by one.
    fn chunks(&self, i: usize, want: usize) -> Vec<Vec<usize>> {
        let k = self.multiple[i];
        if k <= 1 {
            return Vec::new();
        }
        let mut cells: Vec<(Signature, Vec<usize>)> = Vec::new();
        for &c in &self.order[i] {
            let mut sig = self.class_slots[c].clone();
            sig.sort_unstable();
            match cells.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, v)) => v.push(c),
                None => cells.push((sig, vec![c])),
            }
        }
        if cells.len() < 2 {
            return Vec::new();
        }
        let score: std::collections::HashMap<usize, f64> = self.order[i]
            .iter()
            .zip(&self.scores[i])
            .map(|(c, s)| (*c, *s))
            .collect();
        let mut all: Vec<(f64, usize, usize)> = Vec::new();
        for (j, (_, v)) in cells.iter().enumerate() {
            for (q, chunk) in v.chunks_exact(k).enumerate() {
                all.push((score[&chunk[k - 1]], j, q));
            }
        }
        // Within a cell chunk q+1 never precedes chunk q: its last score is not lower.
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut out = Vec::new();
        let mut n = 0;
        for (_, j, q) in all {
            if n + k > want {
                break;
            }
            out.push(cells[j].1[q * k..(q + 1) * k].to_vec());
            n += k;
        }
        out
    }
}

/// The tracked tensors a class sits in, with how many of its positions each holds.
type Signature = Vec<(usize, usize)>;

/// Removal counts allowed for a group of `n` classes of `width` channels each: keep at least
/// `max(ceil(min_keep_fraction·n), min_keep_count, 1)`, remove at most `floor(max_ratio·n)`,
/// and keep a multiple of [`Constraints::multiple`] (0 = leave the group alone is always
/// allowed; a group with fewer classes than that allows nothing else).
pub(crate) fn allowed_counts(n: usize, width: usize, c: &Constraints) -> Vec<usize> {
    let min_keep = ((c.min_keep_fraction * n as f64).ceil() as usize)
        .max(c.min_keep_count)
        .max(1);
    let max_remove =
        ((c.max_ratio * n as f64 + 1e-9).floor() as usize).min(n.saturating_sub(min_keep));
    let k = c.multiple(n, width);
    let mut out = vec![0];
    if k > 1 && n < k {
        return out;
    }
    for r in 1..=max_remove {
        if (n - r).is_multiple_of(k) {
            out.push(r);
        }
    }
    out
}

/// Node names touching each group: producers, consumers and members' nodes.
fn group_node_names(model: &Model, groups: &ChannelGroups) -> Vec<Vec<String>> {
    let g = &model.graph;
    let mut out: Vec<Vec<String>> = vec![Vec::new(); groups.groups.len()];
    let mut add = |gid: usize, n: NodeId| {
        let name = &g.node(n).name;
        if let Some(v) = out.get_mut(gid) {
            if !v.contains(name) {
                v.push(name.clone());
            }
        }
    };
    for grp in &groups.groups {
        for s in &grp.sources {
            add(grp.id, s.node);
        }
    }
    let slot_groups = |n: NodeId, port: Port, axis: usize| -> Vec<usize> {
        let node = g.node(n);
        let v = match port {
            Port::In(p) => node.input(p),
            Port::Out(p) => node.output(p),
        };
        let mut gs: Vec<usize> = v
            .and_then(|v| groups.slots.get(&(v, axis)))
            .map(|atoms| {
                atoms
                    .iter()
                    .map(|a| groups.group_of_class[groups.class_of[*a]])
                    .collect()
            })
            .unwrap_or_default();
        gs.sort_unstable();
        gs.dedup();
        gs
    };
    for (&n, links) in &groups.links {
        for l in links {
            if let Link::Consume { from } = l {
                for gid in slot_groups(n, from.port, from.axis) {
                    add(gid, n);
                }
            }
        }
    }
    for m in &groups.members {
        for gid in slot_groups(m.node, m.slot.port, m.slot.axis) {
            add(gid, m.node);
        }
    }
    out
}

/// Whether `text` matches the glob `pattern` (`*`: any run of characters, `?`: one
/// character; everything else literal; the whole text must match).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_star_and_question_mark() {
        assert!(glob_match("layer1.*", "layer1.0.conv1"));
        assert!(glob_match("*conv?", "/stage/conv2"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("conv?", "conv12"));
        assert!(!glob_match("layer1.*", "layer2.0"));
        assert!(glob_match("exact", "exact"));
    }

    fn c(min_frac: f64, min_count: usize, max_ratio: f64, round_to: usize) -> Constraints {
        Constraints {
            min_keep_fraction: min_frac,
            min_keep_count: min_count,
            max_ratio,
            round_to,
            round_from: 0,
            ignore: Vec::new(),
            relax_rounding: false,
        }
    }

    #[test]
    fn allowed_counts_follow_the_constraints() {
        assert_eq!(allowed_counts(4, 1, &c(0.0, 1, 1.0, 1)), vec![0, 1, 2, 3]);
        // Keep ≥ 50 %: remove at most 2 of 4; at most 25 %: 1.
        assert_eq!(allowed_counts(4, 1, &c(0.5, 1, 1.0, 1)), vec![0, 1, 2]);
        assert_eq!(allowed_counts(4, 1, &c(0.0, 1, 0.25, 1)), vec![0, 1]);
        assert_eq!(allowed_counts(4, 1, &c(0.0, 3, 1.0, 1)), vec![0, 1]);
        // Multiples of 8 kept out of 20: 16 or 8.
        assert_eq!(allowed_counts(20, 1, &c(0.0, 1, 1.0, 8)), vec![0, 4, 12]);
        // Fewer channels than the multiple: left alone.
        assert_eq!(allowed_counts(6, 1, &c(0.0, 1, 1.0, 8)), vec![0]);
        // Rounding from 32 channels (what `auto` derived before format 2): a 16-channel group
        // keeps exact widths, 40 rounds.
        let auto = Constraints {
            round_from: 32,
            ..c(0.0, 1, 1.0, 8)
        };
        assert_eq!(allowed_counts(16, 1, &auto), (0..16).collect::<Vec<_>>());
        assert_eq!(allowed_counts(40, 1, &auto), vec![0, 8, 16, 24, 32]);
        // Whole convolution groups of 16 channels (regnet_x_400mf): any number of them is
        // whole blocks of 16; of 8, an even number; of 4, whole blocks of 8 from 32 channels.
        let sixteen = c(0.0, 1, 1.0, 16);
        assert_eq!(allowed_counts(4, 16, &sixteen), vec![0, 1, 2, 3]);
        assert_eq!(allowed_counts(6, 8, &sixteen), vec![0, 2, 4]);
        assert_eq!(allowed_counts(12, 4, &auto), vec![0, 2, 4, 6, 8, 10]);
        assert_eq!(allowed_counts(6, 4, &auto), (0..6).collect::<Vec<_>>());
    }
}
