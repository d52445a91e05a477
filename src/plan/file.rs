//! Plan files: the channels a pruning run removed, as versioned JSON (`"format":
//! "lopper-plan/1"`), so that the same run can be replayed on the same model.
//!
//! A plan has one *step* per round of analysis (iterative pruning re-analyses the model after
//! each round). A step lists groups by id, with their sources and channel count as seen when
//! the plan was made, the positions (within the group's class list) of the removed channels,
//! and optionally every class's score. Replaying checks the model's structural
//! [`fingerprint`] and each group against a fresh analysis, and errors naming the group when
//! anything differs. This module reads and writes plans; it neither chooses channels (see
//! [`crate::plan`]) nor removes them (see [`crate::passes::remove_channels()`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::analysis::channels::{ChannelGroups, Group};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::onnx::save::write_atomic;

/// The format tag this version of lopper writes and reads.
pub const PLAN_FORMAT: &str = "lopper-plan/1";

/// How the plan was made: free-form metadata, recorded but not used when replaying.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanMeta {
    /// The importance criterion (e.g. `l1`), or how channels were chosen (e.g. `dead`).
    #[serde(default)]
    pub criterion: String,
    /// Options of the run (ratio, budget, reduction, ...), by name; keys are written sorted.
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// One group of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanGroup {
    /// Group id in the analysis of that step.
    pub id: usize,
    /// The group's producers, `node (op)`, in analysis order.
    pub sources: Vec<String>,
    /// Number of channels (classes) of the group.
    pub channels: usize,
    /// Positions, within the group's class list, of the removed channels (ascending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<usize>,
    /// Score of every channel of the group, by position (informational; non-finite scores are
    /// written as `null` and read back as NaN).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_scores",
        deserialize_with = "de_scores"
    )]
    pub scores: Option<Vec<f64>>,
}

/// One round of pruning: the groups it touched.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// Groups losing channels, and (when scores were given) every prunable group.
    pub groups: Vec<PlanGroup>,
}

/// A plan file. Serialises deterministically: fields in declaration order, option keys
/// sorted, floats in their shortest exact form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// Always [`PLAN_FORMAT`].
    pub format: String,
    /// [`fingerprint`] of the model the plan was made for (as loaded, before any step).
    pub model: String,
    /// How the plan was made.
    pub meta: PlanMeta,
    /// The rounds, in order.
    pub steps: Vec<PlanStep>,
}

fn ser_scores<S: Serializer>(v: &Option<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
    let v: Option<Vec<Option<f64>>> = v
        .as_ref()
        .map(|v| v.iter().map(|x| x.is_finite().then_some(*x)).collect());
    v.serialize(s)
}

fn de_scores<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    let v: Option<Vec<Option<f64>>> = Option::deserialize(d)?;
    Ok(v.map(|v| v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect()))
}

/// `node (op)` of every source of a group, as plan files record them.
fn source_labels(g: &Group) -> Vec<String> {
    g.sources
        .iter()
        .map(|s| format!("{} ({})", s.node_name, s.op))
        .collect()
}

impl PlanFile {
    /// An empty plan (no steps) for the model with this [`fingerprint`].
    pub fn new(fingerprint: String, meta: PlanMeta) -> Self {
        PlanFile {
            format: PLAN_FORMAT.to_string(),
            model: fingerprint,
            meta,
            steps: Vec::new(),
        }
    }

    /// Appends a step removing `removed_classes` (class indices of `groups`, any order) with
    /// optional per-class `scores` (indexed like the classes). Records every group that loses
    /// channels, and every prunable group when scores are given. Errors on a class index or a
    /// score count that does not fit `groups`; it does not check that the removal is valid.
    pub fn push_step(
        &mut self,
        groups: &ChannelGroups,
        removed_classes: &[usize],
        scores: Option<&[f64]>,
    ) -> Result<()> {
        let n_classes = groups.group_of_class.len();
        if let Some(s) = scores {
            if s.len() != n_classes {
                return Err(Error::Usage(format!(
                    "plan step {}: {} scores for {} channels",
                    self.steps.len(),
                    s.len(),
                    n_classes
                )));
            }
        }
        let position: HashMap<usize, usize> = groups
            .groups
            .iter()
            .flat_map(|g| g.classes.iter().enumerate().map(|(p, &c)| (c, p)))
            .collect();
        let mut removed: Vec<Vec<usize>> = vec![Vec::new(); groups.groups.len()];
        for &c in removed_classes {
            let (Some(&g), Some(&p)) = (groups.group_of_class.get(c), position.get(&c)) else {
                return Err(Error::Usage(format!(
                    "plan step {}: channel class {c} out of range ({n_classes} classes)",
                    self.steps.len()
                )));
            };
            if let Some(r) = removed.get_mut(g) {
                r.push(p);
            }
        }
        let mut step = PlanStep::default();
        for (g, mut rem) in groups.groups.iter().zip(removed) {
            if rem.is_empty() && (scores.is_none() || !g.prunable()) {
                continue;
            }
            rem.sort_unstable();
            rem.dedup();
            step.groups.push(PlanGroup {
                id: g.id,
                sources: source_labels(g),
                channels: g.channels,
                removed: rem,
                scores: scores.map(|s| g.classes.iter().map(|&c| s[c]).collect()),
            });
        }
        self.steps.push(step);
        Ok(())
    }

    /// The class indices (ascending) that step `step` removes, mapped onto `groups`, a fresh
    /// analysis of the model as it is before that step. Errors, naming the group and what
    /// differs, when a recorded group is missing or has other sources or channel counts, or
    /// when its positions are out of range, repeated or would remove every channel.
    pub fn step_classes(&self, step: usize, groups: &ChannelGroups) -> Result<Vec<usize>> {
        let s = self.steps.get(step).ok_or_else(|| {
            Error::Usage(format!(
                "the plan has {} step(s); there is no step {}",
                self.steps.len(),
                step + 1
            ))
        })?;
        let here = |msg: String| Error::Usage(format!("plan step {}: {msg}", step + 1));
        let mut out = Vec::new();
        for pg in &s.groups {
            let name = format!(
                "group {} ({})",
                pg.id,
                pg.sources.first().map_or("no sources", String::as_str)
            );
            let Some(g) = groups.groups.get(pg.id).filter(|g| g.id == pg.id) else {
                return Err(here(format!(
                    "{name} is not in this model, which has {} groups",
                    groups.groups.len()
                )));
            };
            let actual = source_labels(g);
            if actual != pg.sources {
                return Err(here(format!(
                    "{name}: sources differ: the plan has [{}], the model has [{}]",
                    pg.sources.join(", "),
                    actual.join(", ")
                )));
            }
            if g.channels != pg.channels || g.classes.len() != pg.channels {
                return Err(here(format!(
                    "{name}: the plan says {} channels, the model has {}",
                    pg.channels,
                    g.classes.len()
                )));
            }
            if let Some(sc) = &pg.scores {
                if sc.len() != pg.channels {
                    return Err(here(format!(
                        "{name}: {} scores for {} channels",
                        sc.len(),
                        pg.channels
                    )));
                }
            }
            let mut seen = vec![false; pg.channels];
            for &p in &pg.removed {
                match seen.get_mut(p) {
                    None => {
                        return Err(here(format!(
                            "{name}: removed position {p} out of range (it has {} channels)",
                            pg.channels
                        )))
                    }
                    Some(true) => {
                        return Err(here(format!("{name}: position {p} removed twice")));
                    }
                    Some(x) => *x = true,
                }
                out.push(g.classes[p]);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Errors unless `model` has the fingerprint the plan was made for.
    pub fn check_model(&self, model: &Model) -> Result<()> {
        let fp = fingerprint(model);
        if fp == self.model {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "the plan was made for another model (fingerprint {}, this model has {fp})",
                self.model
            )))
        }
    }

    /// The plan as pretty-printed JSON (deterministic, ends with a newline).
    pub fn to_json(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Usage(format!("cannot serialise the plan: {e}")))?;
        s.push('\n');
        Ok(s)
    }

    /// Parses a plan from JSON text; `place` names it in errors. Errors when the text is not
    /// JSON, has no or another `format`, or does not fit the format.
    pub fn from_json(text: &str, place: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::data(place, format!("not a JSON file: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(PLAN_FORMAT) => {}
            Some(other) => {
                return Err(Error::data(
                    place,
                    format!("unknown plan format '{other}' (this lopper reads '{PLAN_FORMAT}')"),
                ))
            }
            None => {
                return Err(Error::data(
                    place,
                    format!("not a lopper plan (no \"format\": \"{PLAN_FORMAT}\" field)"),
                ))
            }
        }
        serde_json::from_value(value)
            .map_err(|e| Error::data(place, format!("invalid {PLAN_FORMAT} plan: {e}")))
    }

    /// Writes the plan to `path` atomically (temporary file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json()?.as_bytes())
    }

    /// Reads a plan written by [`PlanFile::save`]. Errors name the file: unreadable, not JSON,
    /// unknown format or invalid contents.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// A length-prefixed string, so that concatenations cannot collide.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

/// A structural fingerprint of `model`, `fnv1a64:<16 hex digits>`: FNV-1a over the opset,
/// graph input and output names, every node's name, domain, op type and input/output names,
/// and every initializer's name, type and shape, in graph order. It reads no weight bytes, so
/// it is fast on large models and does not tell apart models that differ only in weights.
pub fn fingerprint(model: &Model) -> String {
    let g = &model.graph;
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.u64(model.opset() as u64);
    let name = |v: crate::ir::ValueId| g.value(v).name.as_str();
    for list in [&g.inputs, &g.outputs] {
        h.u64(list.len() as u64);
        for &v in list.iter() {
            h.str(name(v));
        }
    }
    for n in g.node_ids() {
        let node = g.node(n);
        h.str(&node.name);
        h.str(&node.domain);
        h.str(&node.op_type);
        for (tag, vals) in [(b'i', &node.inputs), (b'o', &node.outputs)] {
            h.bytes(&[tag]);
            h.u64(vals.len() as u64);
            for v in vals.iter() {
                h.str(v.map_or("", name));
            }
        }
    }
    h.u64(g.initializers.len() as u64);
    for &v in &g.initializers {
        h.str(name(v));
        if let Some(t) = g.init(v) {
            h.str(&t.dtype().to_string());
            h.u64(t.shape().len() as u64);
            for &d in t.shape() {
                h.u64(d as u64);
            }
        }
    }
    let mut out = String::from("fnv1a64:");
    let _ = write!(out, "{:016x}", h.0);
    out
}

/// The replay selector: round `i` removes what step `i` of the plan recorded
/// ([`PlanFile::step_classes`]).
#[derive(Clone, Copy, Debug)]
pub struct Replay<'a>(pub &'a PlanFile);

impl super::Selector for Replay<'_> {
    fn select(&mut self, round: super::Round) -> Result<super::Choice> {
        Ok(super::Choice::classes(
            self.0.step_classes(round.step, round.groups)?,
        ))
    }
}
