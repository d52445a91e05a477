//! Latency benchmarks of models on one runtime: warm-up, then rounds in which every model
//! runs once (interleaved, each round starting with the next model, so that machine drift and
//! ordering effects fall on all models alike), summarised as median/p10/p90, throughput and
//! the speedup of each model against the first, next to each model's FLOPs from the cost model
//! (so fewer FLOPs can be checked against less time).
//!
//! Every model's session stays loaded, so ONNX Runtime's intra-op threads do not spin while
//! idle (spinning is always off here): a spinning idle session steals the cores from the one
//! being timed, which made the same model look 1.66× faster than itself. Each median comes
//! with its noise (the half-width of a 95% confidence interval) and each speedup with an
//! interval from the per-round ratios; with [`BenchOptions::precision`], rounds are added
//! until every median is that precise. It does not pin threads to cores or control the CPU
//! frequency.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::analysis::{costs, infer_shapes, Costs};
use crate::error::{Error, Result};
use crate::ir::{Model, Tensor};
use crate::runtime::{self, model_inputs, BackendKind, InputSpec, RuntimeOptions, Session};

pub mod stats;

pub use stats::Stats;

/// How to benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The runtime.
    pub backend: BackendKind,
    /// Its device and threads.
    pub runtime: RuntimeOptions,
    /// Batch size for inputs with a free batch dimension.
    pub batch: usize,
    /// Untimed runs per model before measuring.
    pub warmup: usize,
    /// Timed runs per model (the least, with `precision`).
    pub runs: usize,
    /// Add rounds past `runs` until every model's median noise ([`Stats::noise`]) is at most
    /// this, up to `max_runs`; `None`: exactly `runs`.
    pub precision: Option<f64>,
    /// The most timed runs per model with `precision`.
    pub max_runs: usize,
}

impl BenchOptions {
    /// `runs` timed runs per model after 5 warm-up runs, at batch `batch`, no precision target.
    pub fn new(
        backend: BackendKind,
        runtime: RuntimeOptions,
        batch: usize,
        runs: usize,
    ) -> BenchOptions {
        BenchOptions {
            backend,
            runtime,
            batch,
            warmup: 5,
            runs,
            precision: None,
            max_runs: runs,
        }
    }
}

/// One model's results.
#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    /// The file.
    pub model: String,
    /// Its inputs as fed (`name dtype [dims]`).
    pub inputs: Vec<String>,
    /// Samples per run.
    pub batch: usize,
    /// Latency per run (seconds).
    pub latency: Stats,
    /// Samples per second at the median latency.
    pub throughput: f64,
    /// Median latency of the first model / this model's.
    pub speedup: f64,
    /// 95% interval of the speedup: the median interval of the per-round ratios of the first
    /// model's time to this one's.
    pub speedup_ci: (f64, f64),
    /// FLOPs per sample (cost model; `None` when it cannot cost the model).
    pub flops: Option<u64>,
    /// MACs per sample.
    pub macs: Option<u64>,
    /// This model's FLOPs / the first model's.
    pub flops_ratio: Option<f64>,
    /// Every timed run, in order (seconds).
    #[serde(skip)]
    pub samples: Vec<f64>,
    /// Per-layer costs.
    #[serde(skip)]
    pub costs: Option<Costs>,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Backend name.
    pub backend: &'static str,
    /// Device name.
    pub device: &'static str,
    /// Intra-op threads asked for (`None`: the runtime's default).
    pub threads: Option<usize>,
    /// Warm-up runs per model.
    pub warmup: usize,
    /// Timed runs per model.
    pub runs: usize,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// Per model, in the order given.
    pub models: Vec<ModelResult>,
}

/// Deterministic inputs for a model: free dims → `batch` (first dim) or an error; floats
/// uniform in [0, 1) from a fixed seed, integers zero.
pub fn synthetic_inputs(
    inputs: &[InputSpec],
    batch: usize,
    path: &Path,
) -> Result<(Vec<(String, Tensor)>, usize)> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut used = batch;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in inputs {
        let mut shape = Vec::with_capacity(i.dims.len());
        for (k, d) in i.dims.iter().enumerate() {
            match (k, d) {
                (_, Some(d)) => shape.push(*d),
                (0, None) => shape.push(batch),
                (_, None) => {
                    return Err(Error::Usage(format!(
                        "{}: input '{}' is {}: dim {k} is not fixed, so the benchmark cannot \
                         make an input for it",
                        path.display(),
                        i.name,
                        i.describe()
                    )))
                }
            }
        }
        if let Some(Some(b)) = i.dims.first() {
            used = *b;
        }
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 30)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: input '{}' of shape {shape:?} is too large to benchmark",
                    path.display(),
                    i.name
                ))
            })?;
        let values: Vec<f64> = if i.dtype.is_float() {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 11) as f64 / (1u64 << 53) as f64
                })
                .collect()
        } else {
            vec![0.0; n]
        };
        let t = Tensor::from_f64_as(i.dtype, shape, &values)
            .map_err(|e| Error::Usage(format!("{}: input '{}': {e}", path.display(), i.name)))?;
        out.push((i.name.clone(), t));
    }
    Ok((out, used))
}

struct Prepared {
    path: PathBuf,
    session: Box<dyn Session>,
    feed: Vec<(String, Tensor)>,
    batch: usize,
    inputs: Vec<String>,
    costs: Option<Costs>,
    samples: Vec<f64>,
}

/// The 95% interval of the median of per-round ratios `a[i] / b[i]`.
fn paired_ci(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x / y.max(f64::MIN_POSITIVE))
        .collect();
    r.sort_by(f64::total_cmp);
    stats::median_ci(&r)
}

/// Benchmarks `models` (at least one) with `opts`; `progress` is called with the rounds done
/// and the rounds planned (which grow while a precision target is unmet).
pub fn bench(
    models: &[PathBuf],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BenchReport> {
    if models.is_empty() {
        return Err(Error::Usage("bench needs at least one model".into()));
    }
    let mut prepared = Vec::with_capacity(models.len());
    for path in models {
        let model = Model::load(path)?;
        crate::ir::verify_ops(&model)?;
        let inputs = model_inputs(&model)?;
        let (feed, batch) = synthetic_inputs(&inputs, opts.batch, path)?;
        let costs = infer_shapes(&model).and_then(|s| costs(&model, &s)).ok();
        let quiet = RuntimeOptions {
            spinning: Some(false),
            ..opts.runtime
        };
        let session = runtime::load_with(opts.backend, path, &quiet)?;
        prepared.push(Prepared {
            path: path.clone(),
            session,
            feed,
            batch,
            inputs: inputs
                .iter()
                .map(|i| format!("{} {}", i.name, i.describe()))
                .collect(),
            costs,
            samples: Vec::with_capacity(opts.runs),
        });
    }
    let n = prepared.len();
    let most = opts
        .runs
        .max(opts.max_runs * usize::from(opts.precision.is_some()));
    let precise = |prepared: &[Prepared]| match opts.precision {
        Some(p) => prepared.iter().all(|m| Stats::of(&m.samples).noise <= p),
        None => true,
    };
    let mut round = 0;
    progress(0, opts.warmup + opts.runs);
    while round < opts.warmup + opts.runs || (round < opts.warmup + most && !precise(&prepared)) {
        for k in 0..n {
            let p = &mut prepared[(round + k) % n];
            let t = Instant::now();
            p.session.run(&p.feed)?;
            let dt = t.elapsed().as_secs_f64();
            if round >= opts.warmup {
                p.samples.push(dt);
            }
        }
        round += 1;
        progress(round, (opts.warmup + opts.runs).max(round));
    }
    let first_samples = prepared[0].samples.clone();
    let first_median = Stats::of(&first_samples).median;
    let first_flops = prepared[0].costs.as_ref().map(|c| c.flops);
    let results = prepared
        .into_iter()
        .map(|p| {
            let latency = Stats::of(&p.samples);
            let flops = p.costs.as_ref().map(|c| c.flops);
            ModelResult {
                model: p.path.display().to_string(),
                inputs: p.inputs,
                batch: p.batch,
                throughput: p.batch as f64 / latency.median,
                speedup: first_median / latency.median,
                speedup_ci: paired_ci(&first_samples, &p.samples),
                flops,
                macs: p.costs.as_ref().map(|c| c.macs),
                flops_ratio: flops
                    .zip(first_flops)
                    .map(|(f, f0)| f as f64 / f0.max(1) as f64),
                latency,
                samples: p.samples,
                costs: p.costs,
            }
        })
        .collect();
    Ok(BenchReport {
        backend: opts.backend.name(),
        device: opts.runtime.device.name(),
        threads: opts.runtime.threads,
        warmup: opts.warmup,
        runs: opts.runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        models: results,
    })
}
