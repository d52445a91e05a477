//! Where a train step first goes non-finite. When a step's loss or one of its parameter
//! updates is NaN or infinite, the runner re-runs that step (the same carried values and
//! batch) with every intermediate float value as an extra output, in ONNX Runtime, and walks
//! the nodes in topological order to the first one whose output is not finite. The answer
//! says which part of the step it is in (forward, loss, backward, update), which tells
//! divergence (lower the learning rate) from a broken rule (lowering it cannot help).
//!
//! It does not re-run on the step's device (always the CPU) and does not explain *why* the
//! node overflowed; a re-run in which every value is finite is reported as such (then the
//! runtime's optimised graph computed what the plain one does not).

use std::fmt;

use crate::error::Result;
use crate::ir::{DType, Model, Tensor};
use crate::runtime::{self, BackendKind, RuntimeOptions};

/// The part of a train step a node belongs to (from the name prefixes the compiler gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The model's own forward pass (BatchNormalization in training mode included).
    Forward,
    /// The loss and accuracy.
    Loss,
    /// The backward pass (gradients) and regularizer terms.
    Backward,
    /// The optimizer update.
    Update,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Forward => "forward pass",
            Phase::Loss => "loss",
            Phase::Backward => "backward pass",
            Phase::Update => "optimizer update",
        })
    }
}

/// The first node whose output is not finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Node name.
    pub node: String,
    /// Its op type.
    pub op: String,
    /// The part of the step.
    pub phase: Phase,
    /// The non-finite output's name.
    pub output: String,
    /// Non-finite elements of that output, and its size.
    pub bad: (usize, usize),
}

/// The phase of a step node, by the prefixes [`super::step`] and its passes give names.
pub fn phase_of(node_name: &str) -> Phase {
    let first = node_name.split('/').next().unwrap_or("");
    match first {
        "grad" | "grad_total" | "reg" => Phase::Backward,
        "optim" | "update_check" | "out" => Phase::Update,
        "loss" | "accuracy" => Phase::Loss,
        _ => Phase::Forward,
    }
}

/// Re-runs `step` (a compiled train-step model) on `feed` (every input: carried values,
/// batch, labels, scalars) with every float intermediate as an output and returns the first
/// node, in topological order, with a non-finite output; `None` when all are finite.
pub fn first_non_finite(
    step: &Model,
    feed: &[(String, Tensor)],
    runtime: &RuntimeOptions,
) -> Result<Option<Finding>> {
    let mut m = step.clone();
    let order = m.graph.topo_order()?;
    let shapes = crate::analysis::infer_shapes(&m).ok();
    let g = &mut m.graph;
    let mut watched = Vec::new();
    for &n in &order {
        let outs: Vec<_> = g.node(n).outputs.iter().flatten().copied().collect();
        for o in outs {
            let is_float = shapes
                .as_ref()
                .and_then(|s| s.get(o))
                .and_then(|f| f.dtype)
                .is_none_or(|d| matches!(d, DType::F32 | DType::F64 | DType::F16));
            if is_float && !g.outputs.contains(&o) {
                g.outputs.push(o);
            }
            if is_float {
                watched.push((n, o));
            }
        }
    }
    let dir = crate::temp_dir::TempDir::new("lopper-diagnose")?;
    let path = dir.path().join("step.onnx");
    m.save(&path, &Default::default())?;
    let mut s = runtime::load_with(
        BackendKind::Ort,
        &path,
        &RuntimeOptions {
            device: Default::default(),
            ..*runtime
        },
    )?;
    let outs = s.run(feed)?;
    let g = &m.graph;
    for (n, o) in watched {
        let name = &g.value(o).name;
        let Some((_, t)) = outs.iter().find(|(k, _)| k == name) else {
            continue;
        };
        let Some(v) = t.to_f64_vec() else { continue };
        let bad = v.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            let node = g.node(n);
            return Ok(Some(Finding {
                node: node.name.clone(),
                op: node.op_type.clone(),
                phase: phase_of(&node.name),
                output: name.clone(),
                bad: (bad, v.len()),
            }));
        }
    }
    Ok(None)
}

/// The one-line error for a non-finite step: what went non-finite, where, and the advice
/// that fits: a lower learning rate for an overflow in the forward pass or the update, a
/// report for a gradient that overflows at the first step while the forward pass is finite.
pub fn message(what: &str, epoch: usize, step: usize, finding: Option<&Finding>) -> String {
    let at = format!("{what} at epoch {epoch}, step {step}");
    let Some(f) = finding else {
        return format!(
            "{at}: re-run with every intermediate value exposed, the step is finite: ONNX \
             Runtime's optimised step computes what the plain graph does not (not the \
             learning rate); please report it with the model"
        );
    };
    let advice = match f.phase {
        Phase::Forward | Phase::Loss => "the weights diverged; lower --lr".to_string(),
        Phase::Update => "the update overflowed; lower --lr".to_string(),
        Phase::Backward if step <= 1 => "a gradient overflowed at the first step while the \
            forward pass is finite: a faulty backward rule, not the learning rate; please \
            report it with the model"
            .to_string(),
        Phase::Backward => "a gradient overflowed while the forward pass is finite; lower --lr \
            (if it persists, please report it with the model)"
            .to_string(),
    };
    format!(
        "{at}: first non-finite value in the {}: {} ({}) output '{}' ({} of {} elements): {advice}",
        f.phase, f.node, f.op, f.output, f.bad.0, f.bad.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_compiler_prefixes() {
        assert_eq!(phase_of("/layer1/conv/Conv"), Phase::Forward);
        assert_eq!(phase_of("train_bn//bn1/BatchNormalization"), Phase::Forward);
        assert_eq!(phase_of("grad//layer1/conv/Conv/MatMul"), Phase::Backward);
        assert_eq!(phase_of("optim/conv1.weight/Sub"), Phase::Update);
        assert!(message("the loss is NaN", 1, 2, None).contains("not the learning rate"));
    }

    #[test]
    fn advice_depends_on_where_and_when() {
        let f = |phase| Finding {
            node: "n".into(),
            op: "Conv".into(),
            phase,
            output: "y".into(),
            bad: (1, 4),
        };
        let at = |phase, step| message("the loss is NaN", 1, step, Some(&f(phase)));
        assert!(at(Phase::Forward, 5).ends_with("lower --lr"));
        assert!(at(Phase::Update, 1).ends_with("lower --lr"));
        assert!(at(Phase::Backward, 1).contains("not the learning rate"));
        assert!(at(Phase::Backward, 9).contains("lower --lr"));
        assert!(at(Phase::Forward, 5).contains("n (Conv) output 'y' (1 of 4 elements)"));
    }
}
