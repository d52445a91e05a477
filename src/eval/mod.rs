//! Evaluation of a classifier on a dataset: top-1/top-5 accuracy, mean cross-entropy and
//! throughput, and optionally the agreement of its outputs with a reference model's on the
//! same inputs (the everyday check of a pruned model against its original).
//!
//! The first graph output is taken as class scores `[N, K]` (trailing dims flattened): logits,
//! or probabilities when every row of the first batch is a distribution. Models with a fixed
//! batch size get padded last batches (the padding's outputs are dropped).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::data::{select, Batches, Dataset, Preprocess, Transform};
use crate::error::{Error, Result};
use crate::ir::{Model, Tensor};
use crate::runtime::{self, model_inputs, model_outputs, BackendKind, InputSpec, RuntimeOptions};

pub mod metrics;

pub use metrics::{Accuracy, AccuracyReport, Agreement, AgreementReport};

/// How to run an evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The runtime.
    pub backend: BackendKind,
    /// Its device and threads.
    pub runtime: RuntimeOptions,
    /// Samples per run (`None`: 32, or the model's fixed batch size).
    pub batch: Option<usize>,
    /// Evaluate only this many samples, spread evenly over the dataset.
    pub limit: Option<usize>,
}

/// The outcome of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The model.
    pub model: String,
    /// What was read.
    pub data: String,
    /// The backend that ran it.
    pub backend: &'static str,
    /// The device.
    pub device: &'static str,
    /// Samples per run.
    pub batch_size: usize,
    /// Samples evaluated.
    pub samples: usize,
    /// Classes the model outputs.
    pub classes: usize,
    /// Whether the outputs were taken as probabilities (else logits, softmax applied).
    pub outputs_are_probabilities: bool,
    /// Accuracy and loss (`None` without labels).
    pub accuracy: Option<AccuracyReport>,
    /// Seconds inside the model's runs.
    pub model_seconds: f64,
    /// Samples per second of model time.
    pub throughput: f64,
    /// Wall-clock seconds of the whole loop (data loading overlapped).
    pub wall_seconds: f64,
    /// The reference model's results, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceReport>,
}

/// The reference model's side of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct ReferenceReport {
    /// The reference model.
    pub model: String,
    /// Its accuracy on the same samples (`None` without labels).
    pub accuracy: Option<AccuracyReport>,
    /// Samples per second of its model time.
    pub throughput: f64,
    /// How its outputs compare with the evaluated model's.
    pub agreement: AgreementReport,
}

/// A loaded model with its interface.
struct Loaded {
    path: String,
    session: Box<dyn runtime::Session>,
    input: InputSpec,
    /// Declared class count of the first output, when static.
    classes: Option<usize>,
    seconds: f64,
    accuracy: Accuracy,
}

fn load(path: &Path, opts: &EvalOptions) -> Result<Loaded> {
    let model = Model::load(path)?;
    crate::ir::verify_ops(&model)?;
    let inputs = model_inputs(&model)?;
    let shown = path.display().to_string();
    let input = match inputs.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(Error::Usage(format!(
                "{shown}: eval needs a model with one input, this one has {}",
                inputs.len()
            )))
        }
    };
    let classes = model_outputs(&model).first().and_then(|o| {
        o.dims
            .get(1..)
            .and_then(|d| d.iter().try_fold(1usize, |a, d| d.map(|d| a * d)))
    });
    // The data loader shares the cores: idle runtime threads must not busy-wait.
    let ropts = RuntimeOptions {
        spinning: Some(false),
        ..opts.runtime
    };
    let session = runtime::load_with(opts.backend, path, &ropts)?;
    Ok(Loaded {
        path: shown,
        session,
        input,
        classes,
        seconds: 0.0,
        accuracy: Accuracy::default(),
    })
}

/// Checks that labels fit the model's class count.
fn check_classes(
    m: &Loaded,
    classes: usize,
    max_label: Option<i64>,
    names: Option<usize>,
) -> Result<()> {
    if let Some(n) = names.filter(|&n| n > classes) {
        return Err(Error::Usage(format!(
            "{}: the dataset has {n} classes, the model outputs {classes} scores",
            m.path
        )));
    }
    if let Some(l) = max_label.filter(|&l| l as usize >= classes) {
        return Err(Error::Usage(format!(
            "{}: labels go up to {l}, the model outputs {classes} scores (classes 0..{})",
            m.path,
            classes.saturating_sub(1)
        )));
    }
    Ok(())
}

impl Loaded {
    /// Runs one batch; returns the first output as f32 rows.
    fn run(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        let t = Instant::now();
        let outs = self.session.run(&[(self.input.name.clone(), x.clone())])?;
        self.seconds += t.elapsed().as_secs_f64();
        let (name, y) = outs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Usage(format!("{}: the model has no output", self.path)))?;
        y.to_f32_vec().ok_or_else(|| {
            Error::Usage(format!(
                "{}: output '{name}' is {}, not numbers",
                self.path,
                y.dtype()
            ))
        })
    }
}

/// Errors unless the reference takes the model's input (same type and dims).
fn check_same_input(m: &Loaded, r: &Loaded) -> Result<()> {
    if (r.input.dtype, &r.input.dims) != (m.input.dtype, &m.input.dims) {
        return Err(Error::Usage(format!(
            "the reference's input '{}' is {}, the model's '{}' is {}: they cannot share inputs",
            r.input.name,
            r.input.describe(),
            m.input.name,
            m.input.describe()
        )));
    }
    Ok(())
}

/// The batch size: the model's fixed one (an error when `asked` differs), else `asked`, else 32.
fn batch_size(m: &Loaded, t: &Transform, asked: Option<usize>) -> Result<usize> {
    Ok(match (t.fixed_batch(), asked) {
        (Some(f), Some(b)) if f != b => {
            return Err(Error::Usage(format!(
                "{}: the model's input '{}' fixes the batch size at {f}; --batch-size {b} cannot \
                 be used",
                m.path, m.input.name
            )))
        }
        (Some(f), _) => f,
        (None, b) => b.unwrap_or(32).max(1),
    })
}

/// Evaluates `model` (and `reference`, on the same inputs) over `data`. `progress` is called
/// with the samples done so far and the total.
pub fn evaluate(
    model: &Path,
    reference: Option<&Path>,
    data: Box<dyn Dataset>,
    pre: &Preprocess,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let mut m = load(model, opts)?;
    let mut r = reference.map(|p| load(p, opts)).transpose()?;
    if let Some(r) = &r {
        check_same_input(&m, r)?;
    }
    let t = Transform::plan(&m.input, data.sample_shape(), data.bytes(), pre)?;
    let batch = batch_size(&m, &t, opts.batch)?;
    let max_label = data.labels().and_then(|l| l.iter().copied().max());
    let names = data.class_names().map(<[String]>::len);
    for l in std::iter::once(&m).chain(r.as_ref()) {
        if let Some(k) = l.classes {
            check_classes(l, k, max_label, names)?;
        }
    }
    let description = data.describe();
    let indices = select(data.len(), opts.limit);
    let total = indices.len();
    let has_labels = data.labels().is_some();
    let start = Instant::now();
    let mut batches = Batches::new(data, t.clone(), indices, batch);
    let mut classes = None;
    let mut probabilities = false;
    let mut agreement = Agreement::default();
    let mut done = 0;
    progress(0, total);
    while let Some(b) = batches.next().transpose()? {
        let mut values = b.values;
        let run_n = t.fixed_batch().unwrap_or(b.n);
        values.resize(run_n * t.sample_len(), 0.0);
        let x = t.tensor(&values, run_n)?;
        if classes.is_none() {
            // Untimed warm-up (tract builds its plan at the first run).
            m.session.run(&[(m.input.name.clone(), x.clone())])?;
            if let Some(r) = &mut r {
                r.session.run(&[(r.input.name.clone(), x.clone())])?;
            }
        }
        let ya = m.run(&x)?;
        let k = ya.len() / run_n.max(1);
        if k == 0 || ya.len() != k * run_n {
            return Err(Error::Usage(format!(
                "{}: the first output has {} values for a batch of {run_n}",
                m.path,
                ya.len()
            )));
        }
        let rows = &ya[..b.n * k];
        if classes.is_none() {
            check_classes(&m, k, max_label, names)?;
            probabilities = metrics::rows_are_probabilities(rows, k);
            classes = Some(k);
        }
        if let Some(labels) = &b.labels {
            m.accuracy.add(rows, k, labels, probabilities);
        }
        if let Some(r) = &mut r {
            let yb = r.run(&x)?;
            if yb.len() != ya.len() {
                return Err(Error::Usage(format!(
                    "{}: the reference's first output has {} values, the model's {}",
                    r.path,
                    yb.len(),
                    ya.len()
                )));
            }
            let rows_b = &yb[..b.n * k];
            if let Some(labels) = &b.labels {
                let p = metrics::rows_are_probabilities(rows_b, k);
                r.accuracy.add(rows_b, k, labels, p);
            }
            agreement.add(rows, rows_b, k);
        }
        done += b.n;
        progress(done, total);
    }
    let classes = classes.unwrap_or(0);
    let throughput = |l: &Loaded| done as f64 / l.seconds.max(1e-12);
    Ok(EvalReport {
        model: m.path.clone(),
        data: description,
        backend: opts.backend.name(),
        device: opts.runtime.device.name(),
        batch_size: batch,
        samples: done,
        classes,
        outputs_are_probabilities: probabilities,
        accuracy: has_labels.then(|| m.accuracy.report(classes)),
        model_seconds: m.seconds,
        throughput: throughput(&m),
        wall_seconds: start.elapsed().as_secs_f64(),
        reference: r.map(|r| ReferenceReport {
            model: r.path.clone(),
            accuracy: has_labels.then(|| r.accuracy.report(classes)),
            throughput: throughput(&r),
            agreement: agreement.report(),
        }),
    })
}
