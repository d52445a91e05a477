//! What a pruning run reports ([`PruneReport`]: totals, rounds, groups, notes, the replayable
//! plan) and the [`Tally`] that collects it round by round. Nothing here runs a stage.

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::importance::Scores;
use crate::analysis::Costs;
use crate::error::Result;
use crate::ir::Model;
use crate::oracle::Comparison;
use crate::plan::{Choice, PlanFile};

use super::options::Selection;
use super::Progress;

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
    /// A latency target's predicted latency of the last round's choice, as a fraction of the
    /// original's (the prediction as the search ended: a pinned latency table gives the same).
    pub predicted_latency: Option<f64>,
    /// Whether that prediction came from a pinned latency table, so that the search timed no
    /// candidate ([`super::prune_with`] then times the model it returns).
    pub pinned_latency: bool,
    /// How many residual branches the drop stage could have removed (`None`: no drop stage).
    pub removable_branches: Option<usize>,
    /// The exact removal, replayable with [`Selection::Plan`].
    #[serde(skip)]
    pub plan: PlanFile,
    /// The model as analysed, before any removal (for before/after tables).
    #[serde(skip)]
    pub before: Option<Model>,
}

/// A run's report as it is being collected.
pub struct Tally {
    record: PlanFile,
    before: Model,
    first: Costs,
    now: Costs,
    notes: Vec<String>,
    steps: Vec<StepReport>,
    per_group: Vec<GroupReport>,
    worst: Option<Comparison>,
}

impl Tally {
    /// A tally for `before` (the analysed model, with its costs `first`) under `selection`;
    /// `fingerprint` is the original model's, for the plan file.
    pub fn new(fingerprint: String, selection: &Selection, before: Model, first: Costs) -> Tally {
        let notes = if first.unknown_from.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "MACs and parameters are incomplete: {} node(s) have outputs of unknown shape, \
                 from {} on (an op lopper cannot infer), so budgets count only the rest",
                first.unknown_nodes,
                first.unknown_from.join(", ")
            )]
        };
        Tally {
            record: PlanFile::new(fingerprint, selection.meta()),
            before,
            now: first.clone(),
            first,
            notes,
            steps: Vec::new(),
            per_group: Vec::new(),
            worst: None,
        }
    }

    /// MACs and parameters now, as fractions of the original's.
    pub fn kept(&self) -> (f64, f64) {
        (
            self.now.macs as f64 / self.first.macs.max(1) as f64,
            self.now.params as f64 / self.first.params.max(1) as f64,
        )
    }

    /// Adds a note.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Where round `step` of `steps` starts.
    pub fn progress(&self, step: usize, steps: usize) -> Progress {
        Progress {
            step,
            steps,
            kept: self.kept(),
        }
    }

    /// Records round `at`'s choice on `groups` in the plan (with the scores, if any), the
    /// criterion's notes (once each) and the choice's notes (prefixed with the round's tag).
    pub fn choose(
        &mut self,
        at: &Progress,
        groups: &ChannelGroups,
        scores: Option<&Scores>,
        choice: &Choice,
    ) -> Result<()> {
        let tag = at.tag();
        for n in scores.iter().flat_map(|s| &s.notes) {
            if !self.notes.contains(n) {
                self.notes.push(n.clone());
            }
        }
        for n in &choice.notes {
            self.notes.push(format!("{tag}{n}"));
        }
        self.record
            .push_step(groups, &choice.classes, scores.map(|s| &s.values[..]))?;
        if at.step == 0 {
            self.per_group = group_reports(groups, &choice.classes);
        }
        Ok(())
    }

    /// Ends a round: `choice` was removed, leaving a model costing `now`, checked as `oracle`.
    pub fn removed(&mut self, choice: &Choice, now: Costs, oracle: Option<Comparison>) {
        if let Some(cmp) = &oracle {
            if self
                .worst
                .as_ref()
                .is_none_or(|w| cmp.max_rel_error > w.max_rel_error)
            {
                self.worst = Some(cmp.clone());
            }
        }
        self.steps.push(StepReport {
            removed: choice.classes.len(),
            macs: now.macs,
            params: now.params,
            threshold: choice.threshold,
            evaluations: choice.evaluations,
            oracle,
        });
        self.now = now;
    }

    /// The report.
    pub fn finish(self) -> PruneReport {
        PruneReport {
            criterion: self.record.meta.criterion.clone(),
            groups: self.per_group.len(),
            blocked: self
                .per_group
                .iter()
                .filter(|g| !g.blocked.is_empty())
                .count(),
            removed: self.steps.iter().map(|s| s.removed).sum(),
            macs: (self.first.macs, self.now.macs),
            params: (self.first.params, self.now.params),
            oracle: self.worst,
            steps: self.steps,
            per_group: self.per_group,
            notes: self.notes,
            predicted_latency: None,
            pinned_latency: false,
            removable_branches: None,
            plan: self.record,
            before: Some(self.before),
        }
    }
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
