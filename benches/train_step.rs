//! Training throughput of the compiled train step in ONNX Runtime on the CPU against PyTorch
//! in the same run: images/s of one SGD step (momentum 0.9, weight decay 5e-4, cross-entropy)
//! at batch 128 with 2 intra-op threads, for the pretrained CIFAR-10 ResNet-20 and ResNet-56,
//! with parameters, momentum and BatchNormalization running statistics kept in ORT from step
//! to step (two alternating buffer sets, as `lopper train` does: `CarriedSession`), and fresh
//! Dropout noise fed for models with Dropout. The reference is PyTorch eager on the same
//! architectures rebuilt with identical shapes (`benches/torch_reference.py`, a server process
//! per model), run in turns with lopper: each round times K lopper steps, then K PyTorch steps,
//! of one model, then the next model. A pair's ratio is PyTorch's median step time over
//! lopper's (above 1: lopper faster); the summary gives each pair, the median ratio and the
//! spread of lopper's own figure (slowest round's median step over the fastest's), with
//! PyTorch's spread in the same rounds beside it as the machine's noise. A
//! ResNet-56 pruned to FLOPs ×0.5 (`lopper prune`, default options) runs in the same rounds:
//! its speed-up over the unpruned step is set against its MACs ratio. Each unpruned model's
//! step runs twice: as `lopper train` compiles it on this CPU (convolutions lowered to ONNX
//! Runtime's channel-blocked kernels, `train::block_convolutions`, and weight gradients on
//! lopper's own kernel, `runtime::kernels`) and with standard ops only (`… std ops`, no
//! PyTorch pair), so the lowerings' gain is measured in the same run.
//!
//! PyTorch comes from `scripts/setup-torch.sh` (`.deps/torch`, pinned; never needed by the
//! tests). Without it the bench says so and reports lopper alone, with no ratio.
//!
//! Environment: `LOPPER_BENCH_STEPS` (timed steps per model and round, default 4),
//! `LOPPER_BENCH_ROUNDS` (default 3), `LOPPER_BENCH_WARMUP` (default 2),
//! `LOPPER_BENCH_THREADS` (default 2), `LOPPER_BENCH_SPIN` (default 0: idle ORT threads
//! sleep, as in `lopper train`; 1 is ORT's busy-wait), `LOPPER_BENCH_MODELS` (comma-separated substrings of the model
//! names), `LOPPER_BENCH_SAVE` (a folder to keep the step graphs in, for profiling),
//! `LOPPER_BENCH_TORCH` (a folder with PyTorch for PYTHONPATH instead of `.deps/torch`),
//! `LOPPER_BENCH_PLAIN` (default 1; 0 skips the standard-ops steps), `LOPPER_BENCH_VERBOSE`
//! (1: print every timed step's milliseconds), `LOPPER_KERNELS` (0: no
//! lopper kernels in the lowered steps either).
//!
//! Run with `cargo bench --bench train_step`; under `cargo test` it only checks that it
//! builds. Needs ONNX Runtime (`ORT_DYLIB_PATH`) and the shared models.

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use lopper::ir::{Model, Tensor};
use lopper::runtime::ort::CarriedSession;
use lopper::runtime::RuntimeOptions;
use lopper::train::loss::Loss;
use lopper::train::optim::Optimizer;
use lopper::train::{compile_train_step, StepOptions, TrainStep};

const BATCH: usize = 128;

/// Name suffix of the standard-ops step timed beside the lowered one.
const PLAIN: &str = "std ops";

/// (file under `models/pretrained`, short name, blocks per stage of the PyTorch reference).
const MODELS: [(&str, &str, usize); 2] = [
    ("resnet20_cifar10.bn.onnx", "ResNet-20", 3),
    ("resnet56_cifar10.bn.onnx", "ResNet-56", 9),
];

/// The PyTorch reference of one model: a `torch_reference.py` server.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    times: Vec<f64>,
}

impl Reference {
    /// Starts the server for ResNet-(6n+2) and waits for its warm-up; `None` (with a notice)
    /// when PyTorch is missing or the server fails.
    fn start(torch: &Path, blocks: usize, threads: usize, warmup: usize) -> Option<Reference> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--blocks", &blocks.to_string()])
            .args(["--batch", &BATCH.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .env("PYTHONPATH", torch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        if stdout.read_line(&mut line).ok()? == 0 || line.trim() != "ready" {
            eprintln!(
                "NOTICE: the PyTorch reference did not start ({})",
                line.trim()
            );
            let _ = child.kill();
            return None;
        }
        Some(Reference {
            child,
            stdin,
            stdout,
            times: Vec::new(),
        })
    }

    /// Runs `k` steps; their wall times.
    fn steps(&mut self, k: usize) -> Vec<f64> {
        writeln!(self.stdin, "steps {k}").expect("write to the PyTorch reference");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the PyTorch reference");
        serde_json::from_str(line.trim()).expect("the PyTorch reference's step times")
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A compiled step loaded in ORT with its feed, carried from step to step.
struct Runner {
    name: String,
    /// The PyTorch reference, when there is one for this model.
    reference: Option<Reference>,
    /// MACs of the model.
    macs: u64,
    /// Per round: (lopper's median step, PyTorch's median step).
    pairs: Vec<(f64, Option<f64>)>,
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
        name: &str,
        reference: Option<Reference>,
        ropts: &RuntimeOptions,
        block: Option<usize>,
        kernels: bool,
    ) -> Runner {
        let model = Model::load(path).expect("load model");
        let shapes = lopper::analysis::infer_shapes(&model).expect("shapes");
        let macs = lopper::analysis::costs(&model, &shapes)
            .expect("costs")
            .macs;
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
            blocked_convolutions: block,
            kernels,
            ..Default::default()
        };
        let t = Instant::now();
        let step = compile_train_step(&model, &opts).expect("compile the train step");
        let compile_s = t.elapsed().as_secs_f64();
        let dir = std::env::var_os("LOPPER_BENCH_SAVE")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).expect("create the output folder");
        let file = dir.join(format!(
            "train_step_{}.onnx",
            name.to_lowercase().replace(' ', "_")
        ));
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
            name: name.to_string(),
            reference,
            macs,
            pairs: Vec::new(),
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

/// The run-to-run spread of a figure: the slowest round's median step over the fastest's (1
/// when there is one round). Given for lopper and, as the machine's noise in the same run, for
/// the PyTorch reference.
fn spread(rounds: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi) = rounds.fold((f64::INFINITY, 0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if lo.is_finite() && lo > 0.0 {
        hi / lo
    } else {
        1.0
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

/// A ResNet-56 pruned to FLOPs ×0.5 with `lopper prune`'s defaults, written into `dir`.
fn pruned_resnet56(original: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("resnet56.flops50.onnx");
    let args = [
        "prune",
        &original.display().to_string(),
        "-o",
        &out.display().to_string(),
        "--target",
        "flops=0.5",
        "--table",
        "none",
    ]
    .map(String::from)
    .to_vec();
    if let Err(e) = lopper::cli::call(args, true) {
        panic!("pruning ResNet-56: {e:?}");
    }
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if lopper::runtime::ort::library().is_err() {
        eprintln!("NOTICE: skipping: ONNX Runtime's library is missing (set ORT_DYLIB_PATH)");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("../shared/models/pretrained");
    let threads = env_usize("LOPPER_BENCH_THREADS", 2);
    let (steps, rounds, warmup) = (
        env_usize("LOPPER_BENCH_STEPS", 4),
        env_usize("LOPPER_BENCH_ROUNDS", 3),
        env_usize("LOPPER_BENCH_WARMUP", 2),
    );
    let spin = env_usize("LOPPER_BENCH_SPIN", 0) != 0;
    let verbose = env_usize("LOPPER_BENCH_VERBOSE", 0) != 0;
    let ropts = RuntimeOptions {
        threads: Some(threads),
        spinning: Some(spin),
        ..RuntimeOptions::default()
    };
    let torch = std::env::var_os("LOPPER_BENCH_TORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".deps/torch"));
    let have_torch = torch.join("torch").is_dir();
    if !have_torch {
        eprintln!(
            "NOTICE: no PyTorch reference ({} has no torch; run scripts/setup-torch.sh): \
             lopper alone, no ratios",
            torch.display()
        );
    }
    let filter = std::env::var("LOPPER_BENCH_MODELS").unwrap_or_default();
    let wanted = |name: &str| {
        filter.is_empty()
            || filter
                .split(',')
                .any(|f| name.to_lowercase().contains(&f.to_lowercase()))
    };
    // What `lopper train` compiles on this CPU, and the standard-Conv step beside it.
    let block = lopper::runtime::ort::channel_block();
    let kernels = lopper::runtime::kernels::enabled();
    let compare_plain = env_usize("LOPPER_BENCH_PLAIN", 1) != 0;
    let scratch = std::env::temp_dir().join(format!("lopper-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("create a scratch folder");
    let mut runners = Vec::new();
    for (file, name, blocks) in MODELS {
        let path = dir.join(file);
        if !path.is_file() {
            eprintln!("NOTICE: skipping {name}: {} is missing", path.display());
            continue;
        }
        if wanted(name) {
            let reference = if have_torch {
                Reference::start(&torch, blocks, threads, warmup)
            } else {
                None
            };
            runners.push(Runner::new(&path, name, reference, &ropts, block, kernels));
            if (block.is_some() || kernels) && compare_plain {
                let plain = format!("{name} {PLAIN}");
                runners.push(Runner::new(&path, &plain, None, &ropts, None, false));
            }
        }
        if blocks == 9 && wanted("ResNet-56 pruned") {
            let pruned = pruned_resnet56(&path, &scratch);
            runners.push(Runner::new(
                &pruned,
                "ResNet-56 pruned",
                None,
                &ropts,
                block,
                kernels,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for r in &mut runners {
        for _ in 0..warmup {
            r.run();
        }
    }
    for round in 0..rounds {
        for r in &mut runners {
            let mine: Vec<f64> = (0..steps).map(|_| r.run()).collect();
            if verbose {
                let ms: Vec<String> = mine.iter().map(|t| format!("{:.0}", t * 1e3)).collect();
                println!(
                    "round {}: {} steps, ms: {}",
                    round + 1,
                    r.name,
                    ms.join(" ")
                );
            }
            r.times.extend(&mine);
            let theirs = r.reference.as_mut().map(|t| {
                let v = t.steps(steps);
                t.times.extend(&v);
                median(v)
            });
            let pair = (median(mine), theirs);
            r.pairs.push(pair);
            if let Some(t) = theirs {
                println!(
                    "round {}: {:<19} lopper {:>6.1} img/s  PyTorch {:>6.1} img/s  ratio {:.2}",
                    round + 1,
                    r.name,
                    BATCH as f64 / pair.0,
                    BATCH as f64 / t,
                    t / pair.0
                );
            }
        }
    }
    println!(
        "batch {BATCH}, {threads} intra-op threads (ORT spinning {}), SGD momentum 0.9 wd 5e-4, \
         cross-entropy; {warmup} warm-up steps, {rounds} rounds × {steps} timed steps per model \
         and side, medians",
        if spin { "on" } else { "off" }
    );
    println!(
        "{:<19} {:>8} {:>11} {:>13} {:>18} {:>14} {:>7} {:>14}",
        "model",
        "ms/step",
        "lopper img/s",
        "PyTorch img/s",
        "ratio per round",
        "median ratio",
        "spread",
        "PyTorch spread"
    );
    let unpruned56 = runners
        .iter()
        .find(|r| r.name == "ResNet-56")
        .map(|r| (median(r.times.clone()), r.macs));
    for r in &runners {
        let med = median(r.times.clone());
        let ratios: Vec<f64> = r
            .pairs
            .iter()
            .filter_map(|&(mine, theirs)| theirs.map(|t| t / mine))
            .collect();
        let torch_ips = r
            .reference
            .as_ref()
            .map(|t| format!("{:.1}", BATCH as f64 / median(t.times.clone())))
            .unwrap_or_else(|| "-".into());
        let per_round: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        let summary = if ratios.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}×", median(ratios.clone()))
        };
        println!(
            "{:<19} {:>8.1} {:>11.1} {:>13} {:>18} {:>14} {:>7.3} {:>14}   loss {:.3}→{:.3}",
            r.name,
            med * 1e3,
            BATCH as f64 / med,
            torch_ips,
            if per_round.is_empty() {
                "-".to_string()
            } else {
                per_round.join(", ")
            },
            summary,
            spread(r.pairs.iter().map(|p| p.0)),
            if ratios.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", spread(r.pairs.iter().filter_map(|p| p.1)))
            },
            r.losses.first().copied().unwrap_or(f64::NAN),
            r.losses.last().copied().unwrap_or(f64::NAN),
        );
    }
    for r in &runners {
        let Some(base) = r.name.strip_suffix(&format!(" {PLAIN}")) else {
            continue;
        };
        if let Some(b) = runners.iter().find(|b| b.name == base) {
            let per_round: Vec<String> = b
                .pairs
                .iter()
                .zip(&r.pairs)
                .map(|(x, y)| format!("{:.2}", x.0 / y.0))
                .collect();
            println!(
                "{base}: the lowered step takes ×{:.3} of the standard-ops step's \
                 time (per round: {})",
                median(b.times.clone()) / median(r.times.clone()),
                per_round.join(", ")
            );
        }
    }
    if let (Some((full, full_macs)), Some(p)) = (
        unpruned56,
        runners.iter().find(|r| r.name == "ResNet-56 pruned"),
    ) {
        println!(
            "ResNet-56 pruned: step ×{:.3} of the unpruned step's time for ×{:.3} of its MACs",
            median(p.times.clone()) / full,
            p.macs as f64 / full_macs as f64
        );
    }
}
