//! The pruning pipeline as one function: simplify (BN kept) → shapes → channel groups →
//! select channels → remove → verify with the equivalence oracle. The CLI and tests call this.
//! It does not write files and does not fine-tune.

use serde::Serialize;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::{channel_groups, costs, importance, infer_shapes};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::oracle::{self, Comparison};
use crate::passes::{remove_channels, simplify, SimplifyOptions};
use crate::plan;
use crate::runtime::BackendKind;

/// Which channels to remove.
#[derive(Clone, Debug)]
pub enum Selection {
    /// The lowest-L1 fraction of every prunable group.
    Ratio(f64),
    /// Channels that contribute nothing or a constant (compensated exactly).
    Dead,
    /// Exactly these classes (indices of the analysis' classes).
    Classes(Vec<usize>),
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

/// Per-group line of the report.
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

/// What a pruning run did.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// Groups found.
    pub groups: usize,
    /// Groups blocked.
    pub blocked: usize,
    /// Channels removed in total.
    pub removed: usize,
    /// MACs before and after.
    pub macs: (u64, u64),
    /// Parameters before and after.
    pub params: (u64, u64),
    /// Oracle result, when verified.
    pub oracle: Option<Comparison>,
    /// Per group.
    pub per_group: Vec<GroupReport>,
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

/// Prunes `model` in place. On a model whose groups are all blocked nothing changes (the
/// report says so). Errors when the oracle finds the pruned model not equivalent.
pub fn prune(model: &mut Model, opts: &PruneOptions) -> Result<PruneReport> {
    let groups = analyse(model)?;
    let shapes = infer_shapes(model)?;
    let before = costs(model, &shapes)?;
    let classes = match &opts.selection {
        Selection::Ratio(r) => {
            plan::plan_ratio(&groups, &importance::l1_scores(model, &groups), *r)?
        }
        Selection::Dead => plan::plan_dead(model, &groups, &shapes)?,
        Selection::Classes(c) => c.clone(),
    };
    let original = model.clone();
    remove_channels(model, &groups, &shapes, &classes)?;
    let after = costs(model, &infer_shapes(model)?)?;
    let oracle = if opts.verify_with.is_empty() || classes.is_empty() {
        None
    } else {
        let masked = oracle::masked_original(&original, &groups, &classes)?;
        let cmp = oracle::compare(&masked, model, &opts.verify_with, 2, 7)?;
        if cmp.max_rel_error > opts.tolerance {
            return Err(Error::Graph(format!(
                "equivalence check failed: pruned model differs from the masked original by {:.3e} (tolerance {:.0e}); not written",
                cmp.max_rel_error, opts.tolerance
            )));
        }
        Some(cmp)
    };
    let mut removed_in = vec![0usize; groups.groups.len()];
    for &c in &classes {
        if let Some(g) = groups.group_of_class.get(c) {
            removed_in[*g] += 1;
        }
    }
    let per_group: Vec<GroupReport> = groups
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
        .collect();
    Ok(PruneReport {
        groups: groups.groups.len(),
        blocked: groups
            .groups
            .iter()
            .filter(|g| !g.blocked.is_empty())
            .count(),
        removed: classes.len(),
        macs: (before.macs, after.macs),
        params: (before.params, after.params),
        oracle,
        per_group,
    })
}
