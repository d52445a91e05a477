//! Training throughput of the compiled train step in ONNX Runtime on the CPU: images/s of one
//! SGD step (momentum 0.9, weight decay 5e-4, cross-entropy) at batch 128 with 2 intra-op
//! threads, for the pretrained CIFAR-10 ResNet-20 and ResNet-56, with parameters, momentum
//! and BatchNormalization running statistics kept in ORT from step to step (two alternating
//! buffer sets, as `lopper train` does: `CarriedSession`), and fresh Dropout noise fed for
//! models with Dropout. Goal: ≥ 1.5× the
//! reference (PyTorch eager, same machine type and setup).
//!
//! Warm-up steps first, then rounds that alternate between the models (so that load from
//! other processes hits both alike); the reported time is the median step. Environment:
//! `LOPPER_BENCH_STEPS` (timed steps per model and round, default 4), `LOPPER_BENCH_ROUNDS`
//! (default 3), `LOPPER_BENCH_WARMUP` (default 2), `LOPPER_BENCH_THREADS` (default 2),
//! `LOPPER_BENCH_SPIN` (default 1: idle ORT threads busy-wait, ORT's default; 0 is much
//! faster when other processes load the cores), `LOPPER_BENCH_MODELS` (comma-separated
//! substrings of the model names),
//! `LOPPER_BENCH_SAVE` (a folder to keep the step graphs in, for profiling).
//!
//! Run with `cargo bench --bench train_step`; under `cargo test` it only checks that it
//! builds. Needs ONNX Runtime (`ORT_DYLIB_PATH`) and the shared models.

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use lopper::ir::{Model, Tensor};
use lopper::runtime::ort::CarriedSession;
use lopper::runtime::RuntimeOptions;
use lopper::train::loss::Loss;
use lopper::train::optim::Optimizer;
use lopper::train::{compile_train_step, StepOptions, TrainStep};

const BATCH: usize = 128;

/// (file under `models/pretrained`, short name, reference images/s).
const MODELS: [(&str, &str, f64); 2] = [
    ("resnet20_cifar10.bn.onnx", "ResNet-20", 153.0),
    ("resnet56_cifar10.bn.onnx", "ResNet-56", 64.0),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A compiled step loaded in ORT with its feed, carried from step to step.
struct Runner {
    name: &'static str,
    reference: f64,
    step: TrainStep,
    session: CarriedSession,
    feed: Vec<(String, Tensor)>,
    /// Feed slot of the step counter.
    step_slot: usize,
    /// Feed slots of the Dropout noise inputs (redrawn after every step).
    noise_slots: Vec<usize>,
    /// xorshift64 state of the noise.
    noise_rng: u64,
    times: Vec<f64>,
    losses: Vec<f64>,
}

impl Runner {
    fn new(
        path: &std::path::Path,
        name: &'static str,
        reference: f64,
        ropts: &RuntimeOptions,
    ) -> Runner {
        let model = Model::load(path).expect("load model");
        let opts = StepOptions {
            batch: BATCH,
            loss: Loss::CrossEntropy {
                label_smoothing: 0.0,
            },
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4,
            },
            ..Default::default()
        };
        let t = Instant::now();
        let step = compile_train_step(&model, &opts).expect("compile the train step");
        let compile_s = t.elapsed().as_secs_f64();
        let dir = std::env::var_os("LOPPER_BENCH_SAVE")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).expect("create the output folder");
        let file = dir.join(format!("train_step_{}.onnx", name.to_lowercase()));
        step.model
            .save(&file, &Default::default())
            .expect("save the step");
        let t = Instant::now();
        // Weights, optimizer state and running statistics stay in ORT between steps, as in
        // `lopper train`.
        let pairs: Vec<(String, String, Tensor)> = step
            .params
            .iter()
            .chain(step.state.iter().map(|(_, _, c)| c))
            .chain(&step.running)
            .map(|c| (c.input.clone(), c.output.clone(), c.init.clone()))
            .collect();
        let session = CarriedSession::new(&file, ropts, &pairs).expect("load in ORT");
        let load_s = t.elapsed().as_secs_f64();
        if std::env::var_os("LOPPER_BENCH_SAVE").is_none() {
            let _ = std::fs::remove_file(&file);
        }
        let counts = op_counts(&step.model);
        let nodes: usize = counts.values().sum();
        let top: Vec<String> = counts
            .iter()
            .map(|(k, v)| (*v, k.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .rev()
            .take(10)
            .map(|(v, k)| format!("{k} {v}"))
            .collect();
        println!(
            "{name}: compiled in {compile_s:.2} s, ORT session in {load_s:.2} s; {} params, \
             {nodes} nodes ({})",
            step.params.len(),
            top.join(", ")
        );

        let mut feed: Vec<(String, Tensor)> = Vec::new();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let n = BATCH * 3 * 32 * 32;
        let x: Vec<f32> = (0..n)
            .map(|_| (next() % 20_000) as f32 / 10_000.0 - 1.0)
            .collect();
        feed.push((step.x.clone(), Tensor::from_f32(vec![BATCH, 3, 32, 32], &x)));
        let labels: Vec<i64> = (0..BATCH).map(|_| (next() % 10) as i64).collect();
        if let Some(l) = &step.labels {
            feed.push((l.clone(), Tensor::from_i64(vec![BATCH], &labels)));
        }
        feed.push((step.lr.clone(), Tensor::from_f32(vec![], &[0.01])));
        feed.push((step.step.clone(), Tensor::from_f32(vec![], &[1.0])));
        let mut noise_rng = 0x2545_f491_4f6c_dd1du64;
        feed.extend(step.noise_feed(&mut || xorshift_f32(&mut noise_rng)));
        let slot = |input: &str| feed.iter().position(|(n, _)| n == input);
        let step_slot = slot(&step.step).expect("step input");
        let noise_slots = step
            .noise
            .iter()
            .map(|d| slot(&d.input).expect("noise input"))
            .collect();
        Runner {
            step_slot,
            noise_slots,
            noise_rng,
            name,
            reference,
            step,
            session,
            feed,
            times: Vec::new(),
            losses: Vec::new(),
        }
    }

    /// One step; returns its wall time in seconds.
    fn run(&mut self) -> f64 {
        let t = Instant::now();
        let outs = self.session.run(&self.feed).expect("run the step");
        let secs = t.elapsed().as_secs_f64();
        for (name, value) in outs {
            if name == self.step.loss {
                self.losses
                    .push(value.to_f64_vec().map_or(f64::NAN, |v| v[0]));
            }
        }
        // The step counter counts from 1.
        let count = self.losses.len() as f32 + 1.0;
        self.feed[self.step_slot].1 = Tensor::from_f32(vec![], &[count]);
        // Fresh Dropout masks for the next step (untimed, as the runner draws them on the host).
        let rng = &mut self.noise_rng;
        let fresh = self.step.noise_feed(&mut || xorshift_f32(rng));
        for (&i, (_, t)) in self.noise_slots.iter().zip(fresh) {
            self.feed[i].1 = t;
        }
        secs
    }
}

/// xorshift64, as a float32 uniform in `[0, 1)`.
fn xorshift_f32(s: &mut u64) -> f32 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 40) as f32 / (1u32 << 24) as f32
}

fn op_counts(m: &Model) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in m.graph.node_ids() {
        *counts.entry(m.graph.node(n).op_type.clone()).or_default() += 1;
    }
    counts
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if lopper::runtime::ort::library().is_err() {
        eprintln!("NOTICE: skipping: ONNX Runtime's library is missing (set ORT_DYLIB_PATH)");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/pretrained");
    let threads = env_usize("LOPPER_BENCH_THREADS", 2);
    let (steps, rounds, warmup) = (
        env_usize("LOPPER_BENCH_STEPS", 4),
        env_usize("LOPPER_BENCH_ROUNDS", 3),
        env_usize("LOPPER_BENCH_WARMUP", 2),
    );
    let spin = env_usize("LOPPER_BENCH_SPIN", 1) != 0;
    let ropts = RuntimeOptions {
        threads: Some(threads),
        spinning: Some(spin),
        ..RuntimeOptions::default()
    };
    let filter = std::env::var("LOPPER_BENCH_MODELS").unwrap_or_default();
    let mut runners = Vec::new();
    for (file, name, reference) in MODELS {
        if !filter.is_empty()
            && !filter
                .split(',')
                .any(|f| name.to_lowercase().contains(&f.to_lowercase()))
        {
            continue;
        }
        let path = dir.join(file);
        if !path.is_file() {
            eprintln!("NOTICE: skipping {name}: {} is missing", path.display());
            continue;
        }
        runners.push(Runner::new(&path, name, reference, &ropts));
    }
    for r in &mut runners {
        for _ in 0..warmup {
            r.run();
        }
    }
    for _ in 0..rounds {
        for r in &mut runners {
            for _ in 0..steps {
                let t = r.run();
                r.times.push(t);
            }
        }
    }
    println!(
        "batch {BATCH}, {threads} intra-op threads (spinning {}), SGD momentum 0.9 wd 5e-4, cross-entropy; \
         {warmup} warm-up steps, {rounds} rounds × {steps} timed steps, median",
        if spin { "on" } else { "off" }
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "model", "ms/step", "min ms", "img/s", "ref", "ratio", "loss first→last"
    );
    for r in &runners {
        let med = median(r.times.clone());
        let min = r.times.iter().copied().fold(f64::INFINITY, f64::min);
        let ips = BATCH as f64 / med;
        println!(
            "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2}× {:>7.3}→{:.3}",
            r.name,
            med * 1e3,
            min * 1e3,
            ips,
            r.reference,
            ips / r.reference,
            r.losses.first().copied().unwrap_or(f64::NAN),
            r.losses.last().copied().unwrap_or(f64::NAN),
        );
    }
}
