//! Activation statistics on calibration data: per class (removable channel, see
//! [`crate::analysis::channels`]) the mean |activation| and the fraction of exact zeros, the
//! inputs of the data-driven importance criteria ([`ActivationStats`]).
//!
//! What is measured is what the *consumers read*: every tracked slot `(value, axis)` that a
//! node declares [`Link::Consume`] for (the next Conv's input, a Gemm's rows), i.e. the
//! activations after BatchNormalization and ReLU that actually flow on. Those values become
//! extra graph outputs of a copy of the model, which a runtime runs on every batch; each
//! position of each slot is reduced over all other axes (batch, spatial, ...) as the batches
//! stream by, and a class seen at several positions (a residual group read by several convs)
//! gets the mean of its positions. A prunable class that no consumer reads is measured at its
//! producer's output instead. The model itself is never changed, and nothing here ranks or
//! picks channels (see [`crate::analysis::importance`]).

use std::collections::{BTreeMap, HashMap};

use crate::analysis::channels::ChannelGroups;
use crate::analysis::importance::ActivationStats;
use crate::analysis::infer_shapes;
use crate::data::{select, Batches, Dataset, Preprocess, Transform};
use crate::error::{Error, Result};
use crate::ir::{DType, Fact, Model, Tensor, ValueId};
use crate::onnx::proto::ValueInfoProto;
use crate::onnx::SaveOptions;
use crate::ops::channel::{Link, Port};
use crate::runtime::{self, model_inputs, BackendKind, InputSpec, RuntimeOptions};
use crate::temp_dir::TempDir;

/// One calibration batch: the model's runtime inputs by name, as [`runtime::Session::run`]
/// takes them. The batch size is read from the first dim of the first input.
pub type CalibrationBatch = Vec<(String, Tensor)>;

/// Gathers [`ActivationStats`] for `groups` (computed on `model`, the simplified model with
/// BatchNormalization kept) by running `model`, with the measured values as extra outputs, in
/// `backend` over every batch of `batches`.
///
/// Batches are streamed (none is kept); each must give every runtime input of the model with
/// its declared type, rank and fixed dims, else the error names the input. `progress` is
/// called with the samples done after every batch. `samples` counts the first dim of the first
/// input, so padded batches (a fixed batch size) would be counted and measured: see
/// [`calibration_batches`], which never pads. Classes of blocked groups that no measured slot
/// holds get 0 for both statistics. Errors when there are no samples, when a runtime output
/// does not have the analysed channel count, or when an activation is not finite.
pub fn activation_stats(
    model: &Model,
    groups: &ChannelGroups,
    backend: BackendKind,
    opts: &RuntimeOptions,
    batches: &mut dyn Iterator<Item = Result<CalibrationBatch>>,
    progress: &mut dyn FnMut(usize),
) -> Result<ActivationStats> {
    let mut probes = probes(model, groups);
    let inputs = model_inputs(model)?;
    let instrumented = with_outputs(model, &probes)?;
    let dir = TempDir::new("activations")?;
    let path = dir.path().join("activations.onnx");
    instrumented.save(&path, &SaveOptions::default())?;
    let mut session = runtime::load_with(backend, &path, opts)?;
    let mut samples = 0usize;
    for (index, batch) in batches.enumerate() {
        let batch = batch?;
        let n = check_batch(&inputs, &batch)?;
        let outs = session.run(&batch)?;
        let by_name: HashMap<&str, &Tensor> = outs.iter().map(|(k, t)| (k.as_str(), t)).collect();
        for p in &mut probes {
            let t = by_name.get(p.name.as_str()).ok_or_else(|| Error::Runtime {
                backend: backend.name(),
                msg: format!("activation '{}' missing from the outputs", p.name),
            })?;
            p.add(t).map_err(|msg| {
                Error::Usage(format!(
                    "calibration batch {index}: activation '{}': {msg}",
                    p.name
                ))
            })?;
        }
        samples += n;
        progress(samples);
    }
    if samples == 0 {
        return Err(Error::Usage(
            "no calibration samples: activation statistics need at least one batch".into(),
        ));
    }
    finish(groups, &probes, samples)
}

/// Batches of `data` preprocessed by `pre` for the model's single input, as
/// [`activation_stats`] takes them; [`CalibrationBatches::samples`] tells how many samples
/// they hold in all.
///
/// `batch` is the batch size (`None`: 32), `limit` takes that many samples spread evenly over
/// the dataset (see [`select`]). A model that fixes its batch size gets only full batches: the
/// remainder is left out rather than padded (padding would enter the statistics). Errors when
/// the model has not exactly one input, when the samples cannot fit it, when `batch` differs
/// from the model's fixed one, or when not even one batch can be filled. Reading happens on a
/// background thread, a few batches ahead.
pub fn calibration_batches(
    model: &Model,
    data: Box<dyn Dataset>,
    pre: &Preprocess,
    batch: Option<usize>,
    limit: Option<usize>,
) -> Result<CalibrationBatches> {
    let inputs = model_inputs(model)?;
    let [input] = inputs.as_slice() else {
        return Err(Error::Usage(format!(
            "calibration data feeds models with one input, this one has {}",
            inputs.len()
        )));
    };
    let t = Transform::plan(input, data.sample_shape(), data.bytes(), pre)?;
    let size = match (t.fixed_batch(), batch) {
        (Some(f), Some(b)) if f != b => {
            return Err(Error::Usage(format!(
                "the model's input '{}' fixes the batch size at {f}; batch size {b} cannot be used",
                input.name
            )))
        }
        (Some(f), _) => f,
        (None, b) => b.unwrap_or(32).max(1),
    };
    let mut indices = select(data.len(), limit);
    if t.fixed_batch().is_some() {
        indices.truncate(indices.len() / size * size);
    }
    if indices.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no calibration samples (a batch needs {size})",
            data.describe()
        )));
    }
    let samples = indices.len();
    Ok(CalibrationBatches {
        batches: Batches::new(data, t.clone(), indices, size),
        transform: t,
        samples,
    })
}

/// Preprocessed calibration batches of one dataset (see [`calibration_batches`]).
pub struct CalibrationBatches {
    batches: Batches,
    transform: Transform,
    samples: usize,
}

impl CalibrationBatches {
    /// Samples the batches hold in all.
    pub fn samples(&self) -> usize {
        self.samples
    }
}

impl Iterator for CalibrationBatches {
    type Item = Result<CalibrationBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = match self.batches.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let t = &self.transform;
        Some(
            t.tensor(&b.values, b.n)
                .map(|x| vec![(t.input().to_string(), x)]),
        )
    }
}

/// One measured slot: its per-position running sums.
struct Probe {
    value: ValueId,
    name: String,
    axis: usize,
    /// Class at each position.
    classes: Vec<usize>,
    /// Measured only for classes no consumer reads.
    fallback: bool,
    sum_abs: Vec<f64>,
    zeros: Vec<u64>,
    /// Elements seen per position.
    count: u64,
}

impl Probe {
    fn new(model: &Model, groups: &ChannelGroups, key: (ValueId, usize), fallback: bool) -> Probe {
        let classes: Vec<usize> = groups
            .slots
            .get(&key)
            .map(|atoms| atoms.iter().map(|a| groups.class_of[*a]).collect())
            .unwrap_or_default();
        let len = classes.len();
        Probe {
            value: key.0,
            name: model.graph.value(key.0).name.clone(),
            axis: key.1,
            classes,
            fallback,
            sum_abs: vec![0.0; len],
            zeros: vec![0; len],
            count: 0,
        }
    }

    /// Adds one output tensor; the message says what does not fit.
    fn add(&mut self, t: &Tensor) -> std::result::Result<(), String> {
        let shape = t.shape();
        let channels = self.classes.len();
        if shape.get(self.axis) != Some(&channels) {
            return Err(format!(
                "shape {shape:?}, the analysis expects {channels} channels on axis {}",
                self.axis
            ));
        }
        let outer: usize = shape[..self.axis].iter().product();
        let inner: usize = shape[self.axis + 1..].iter().product();
        if inner == 0 || outer == 0 {
            return Ok(());
        }
        let mut add = |i: usize, (sum, zeros): (f64, u64)| {
            let c = i % channels;
            self.sum_abs[c] += sum;
            self.zeros[c] += zeros;
        };
        if t.dtype() == DType::F32 {
            // The common case straight from the bytes, without a decoded copy.
            for (i, run) in t.raw().chunks_exact(4 * inner).enumerate() {
                add(i, run_stats_f32(run));
            }
        } else {
            let values = t
                .to_f64_vec()
                .ok_or_else(|| format!("{} values are not numbers", t.dtype()))?;
            for (i, run) in values.chunks_exact(inner).enumerate() {
                let sum = run.iter().map(|v| v.abs()).sum();
                add(i, (sum, run.iter().filter(|v| **v == 0.0).count() as u64));
            }
        }
        self.count += (outer * inner) as u64;
        Ok(())
    }
}

/// Sum of |v| and count of zeros of little-endian f32 bytes: eight f32 lanes (vectorisable),
/// folded into f64 every 4096 values so that long runs keep their precision.
fn run_stats_f32(bytes: &[u8]) -> (f64, u64) {
    const LANES: usize = 8;
    let (mut sum, mut zeros) = (0f64, 0u64);
    for block in bytes.chunks(4 * 4096) {
        let mut s = [0f32; LANES];
        let mut z = [0u32; LANES];
        let mut it = block.chunks_exact(4 * LANES);
        for c in &mut it {
            for k in 0..LANES {
                let v = f32::from_le_bytes([c[4 * k], c[4 * k + 1], c[4 * k + 2], c[4 * k + 3]]);
                s[k] += v.abs();
                z[k] += u32::from(v == 0.0);
            }
        }
        for c in it.remainder().chunks_exact(4) {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            s[0] += v.abs();
            z[0] += u32::from(v == 0.0);
        }
        sum += s.iter().map(|&x| f64::from(x)).sum::<f64>();
        zeros += z.iter().map(|&x| u64::from(x)).sum::<u64>();
    }
    (sum, zeros)
}

/// The slots to measure, in a stable order: every consumed slot holding a prunable class, then
/// producer outputs for prunable classes that no consumer reads.
fn probes(model: &Model, groups: &ChannelGroups) -> Vec<Probe> {
    let g = &model.graph;
    let prunable = |c: usize| {
        groups
            .group_of_class
            .get(c)
            .and_then(|gid| groups.groups.get(*gid))
            .is_some_and(|grp| grp.prunable())
    };
    let holds_prunable = |key: &(ValueId, usize)| {
        groups
            .slots
            .get(key)
            .is_some_and(|atoms| atoms.iter().any(|a| prunable(groups.class_of[*a])))
    };
    let mut keys: BTreeMap<(ValueId, usize), bool> = BTreeMap::new();
    for (&n, links) in &groups.links {
        let node = g.node(n);
        for l in links {
            let Link::Consume { from } = l else { continue };
            let Port::In(p) = from.port else { continue };
            let Some(v) = node.input(p) else { continue };
            let key = (v, from.axis);
            if holds_prunable(&key) {
                keys.insert(key, false);
            }
        }
    }
    let mut covered = vec![false; groups.class_atoms.len()];
    for key in keys.keys() {
        for a in groups.slots.get(key).into_iter().flatten() {
            covered[groups.class_of[*a]] = true;
        }
    }
    for grp in groups.groups.iter().filter(|grp| grp.prunable()) {
        for s in &grp.sources {
            let Port::Out(p) = s.slot.port else { continue };
            let Some(v) = g.node(s.node).output(p) else {
                continue;
            };
            let missing = s.atoms.iter().any(|a| !covered[groups.class_of[*a]]);
            let key = (v, s.slot.axis);
            if missing && groups.slots.contains_key(&key) {
                keys.entry(key).or_insert(true);
            }
        }
    }
    keys.into_iter()
        .map(|(key, fallback)| Probe::new(model, groups, key, fallback))
        .collect()
}

/// A copy of `model` whose outputs also list the probed values, each declared with its
/// inferred type so that every runtime accepts it.
fn with_outputs(model: &Model, probes: &[Probe]) -> Result<Model> {
    let values: Vec<ValueId> = probes.iter().map(|p| p.value).collect();
    with_value_outputs(model, &values)
}

/// A copy of `model` whose outputs also list `values` (by their names), each declared with
/// its inferred type so that every runtime accepts it.
pub(crate) fn with_value_outputs(model: &Model, values: &[ValueId]) -> Result<Model> {
    let shapes = infer_shapes(model)?;
    let mut out = model.clone();
    let g = &mut out.graph;
    for &v in values {
        if g.outputs.contains(&v) {
            continue;
        }
        let name = g.value(v).name.clone();
        let fact = shapes.get(v);
        let declared = g
            .value(v)
            .decl
            .as_ref()
            .and_then(|d| d.r#type.as_ref())
            .map(Fact::from_type);
        let dtype = fact
            .and_then(|f| f.dtype)
            .or_else(|| declared.as_ref().and_then(|f| f.dtype))
            .ok_or_else(|| {
                Error::Graph(format!(
                    "activation '{name}': no element type known, it cannot be measured"
                ))
            })?;
        let shape = fact.and_then(|f| f.shape.clone());
        let ty = Fact {
            dtype: Some(dtype),
            shape,
            ..Fact::default()
        }
        .to_type();
        g.set_decl(
            v,
            ValueInfoProto {
                name: Some(name),
                r#type: Some(ty),
                ..Default::default()
            },
        );
        g.outputs.push(v);
    }
    Ok(out)
}

/// Checks a batch against the model's inputs; returns its sample count.
fn check_batch(inputs: &[InputSpec], batch: &[(String, Tensor)]) -> Result<usize> {
    let names = || {
        inputs
            .iter()
            .map(|i| format!("'{}' {}", i.name, i.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, t) in batch {
        let Some(spec) = inputs.iter().find(|i| &i.name == name) else {
            return Err(Error::Usage(format!(
                "calibration batch gives '{name}', which is not an input of the model (inputs: {})",
                names()
            )));
        };
        let fits = t.dtype() == spec.dtype
            && t.shape().len() == spec.dims.len()
            && t.shape()
                .iter()
                .zip(&spec.dims)
                .all(|(got, want)| want.is_none_or(|w| w == *got));
        if !fits {
            return Err(Error::Usage(format!(
                "calibration batch: model input '{name}' is {}, the batch gives {} {:?}",
                spec.describe(),
                t.dtype(),
                t.shape()
            )));
        }
    }
    for spec in inputs {
        if !batch.iter().any(|(n, _)| n == &spec.name) {
            return Err(Error::Usage(format!(
                "calibration batch lacks model input '{}' ({})",
                spec.name,
                spec.describe()
            )));
        }
    }
    Ok(batch
        .first()
        .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(1)))
}

/// Per-class means over the probed positions.
fn finish(groups: &ChannelGroups, probes: &[Probe], samples: usize) -> Result<ActivationStats> {
    let n = groups.class_atoms.len();
    // (sum of mean |a|, sum of zero fractions, positions), consumers and fallbacks apart.
    let mut acc = [vec![(0f64, 0f64, 0usize); n], vec![(0f64, 0f64, 0usize); n]];
    for p in probes {
        if p.count == 0 {
            continue;
        }
        let count = p.count as f64;
        for (pos, &c) in p.classes.iter().enumerate() {
            let mean = p.sum_abs[pos] / count;
            if !mean.is_finite() {
                return Err(Error::Usage(format!(
                    "activation '{}' channel {pos} has non-finite values on the calibration data",
                    p.name
                )));
            }
            let slot = &mut acc[usize::from(p.fallback)][c];
            slot.0 += mean;
            slot.1 += p.zeros[pos] as f64 / count;
            slot.2 += 1;
        }
    }
    let [consumers, fallbacks] = acc;
    let mut stats = ActivationStats {
        mean_abs: vec![0.0; n],
        zero_fraction: vec![0.0; n],
        samples,
    };
    for (c, (a, b)) in consumers.iter().zip(&fallbacks).enumerate() {
        let (sum, zeros, k) = if a.2 > 0 { *a } else { *b };
        if k > 0 {
            stats.mean_abs[c] = sum / k as f64;
            stats.zero_fraction[c] = zeros / k as f64;
        }
    }
    Ok(stats)
}
