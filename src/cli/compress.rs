//! `lopper compress`: original to shipped model in one command ([`crate::pipeline::compress`]:
//! evaluate, prune, recover, evaluate after each stage, verify, time), then the model written
//! atomically, a table on stdout and `--report` JSON. Parses, calls the library, prints.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use crate::eval::EvalOptions;
use crate::oracle::available_backends;
use crate::pipeline::compress::{
    compress, CompressOptions, CompressReport, Data, Observer, Recovery, StageReport,
};
use crate::pipeline::methods::{Composition, Method, Settings};
use crate::pipeline::PruneOptions;
use crate::train::optim::Optimizer;
use crate::train::options::{Augment, Event, Recipe, TrainOptions};

use super::data_args::DataArgs;
use super::inspect::si;
use super::progress;
use super::runtime_args::RuntimeArgs;
use super::selection_args::SelectionArgs;
use super::OutputArgs;
use crate::runtime::RuntimeOptions;

/// `--granularity`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GranularityArg {
    /// Single weights.
    Weight,
    /// Whole channels.
    Channel,
}

/// Arguments of `lopper compress`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The original ONNX classifier (BatchNormalization kept for `bn` recovery).
    model: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    select: SelectionArgs,
    #[command(
        flatten,
        next_help_heading = "Data (training split: --split, default train)"
    )]
    data: Box<DataArgs>,
    /// A published method as a list of stages with its defaults: plain (the flags as given),
    /// slimming, masksparsity, adapruner, epruner, mending or panning (see --dry-run for what
    /// each runs).
    /// --epochs is then the whole run's budget, sparse training included.
    #[arg(long, default_value = "plain", value_parser = |s: &str| Method::parse(s), help_heading = "Method")]
    method: Method,
    /// Print the stages the run would do, with their settings, and exit.
    #[arg(long, help_heading = "Method")]
    dry_run: bool,
    /// Epochs of sparse training (slimming, masksparsity) [default: 40% of --epochs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Method")]
    sparse_epochs: Option<u32>,
    /// L1 weight of sparse training [default: sized to the stage's steps, see --dry-run].
    #[arg(long, help_heading = "Method")]
    sparsity_weight: Option<f32>,
    /// Re-initialise the pruned architecture and train it anew at the training rate (0.1;
    /// 0.03 without BatchNormalization) instead of fine-tuning the inherited weights.
    #[arg(long, help_heading = "Method")]
    from_scratch: bool,
    /// Training steps of each candidate's brief recovery (adapruner [default: 200], mending
    /// [default: 50]).
    #[arg(long, help_heading = "Method")]
    inherit_steps: Option<usize>,
    /// Candidates mending scores in all, the pre-pruned one included [default: 13]; with
    /// panning, the agent's pulls [default: 12].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Method")]
    mend_evaluations: Option<u64>,
    /// Training samples held out (spread evenly over the training split) to score each
    /// candidate of adapruner, mending and panning [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Method")]
    holdout: Option<u64>,
    /// Panning: the fraction of filter-bank weights masked at weight granularity [default:
    /// 0.9]; the masks ship beside the output as NAME.masks.npz.
    #[arg(long, help_heading = "Method")]
    weight_sparsity: Option<f64>,
    /// Panning: mask single weights (sparse model and mask file) or whole channels to the
    /// --target budget (a smaller, faster dense model).
    #[arg(long, value_enum, default_value = "weight", help_heading = "Method")]
    granularity: GranularityArg,
    /// Panning: one saliency index in one shot instead of the agent (magnitude, snip, grasp,
    /// synflow, or random: the baselines).
    #[arg(long, value_parser = |s: &str| crate::train::saliency::Index::parse(s), help_heading = "Method")]
    pan_index: Option<crate::train::saliency::Index>,
    /// Held-out split every stage is evaluated on.
    #[arg(long, default_value = "test", help_heading = "Evaluation")]
    eval_split: String,
    /// Evaluate on N samples spread evenly over the held-out split.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Evaluation")]
    eval_limit: Option<u64>,
    /// Recovery stages in order, comma-separated: bn (recalibrate BatchNormalization
    /// statistics: no gradients, seconds), cap (refit each layer that lost input channels by
    /// least squares to the original's output: no gradients), finetune, kd (distil from the
    /// original), or none.
    /// Training recomputes batch statistics, so bn before finetune/kd only adds a row to the
    /// report.
    #[arg(long, default_value = "kd", help_heading = "Recovery")]
    recover: String,
    /// Training epochs of finetune/kd.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recovery")]
    epochs: Option<u32>,
    /// Base learning rate of finetune/kd (SGD, cosine) [default: 0.01].
    #[arg(long, help_heading = "Recovery")]
    lr: Option<f64>,
    /// Samples per training step.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recovery")]
    batch_size: u32,
    /// Train on N samples per epoch, spread evenly over the training split.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Recovery")]
    limit: Option<u64>,
    /// Distillation teacher [default: the original model].
    #[arg(long, help_heading = "Recovery")]
    teacher: Option<PathBuf>,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0, help_heading = "Recovery")]
    temperature: f32,
    /// Weight of the distillation term (1 − alpha on the labels).
    #[arg(long, default_value_t = 0.7, help_heading = "Recovery")]
    alpha: f32,
    /// Label smoothing ε of finetune/kd.
    #[arg(long, default_value_t = 0.0, help_heading = "Recovery")]
    label_smoothing: f32,
    /// No augmentation in finetune/kd (default for images: random crop and flip).
    #[arg(long, help_heading = "Recovery")]
    no_augment: bool,
    /// Training-split samples for data-driven criteria and BN recalibration.
    #[arg(long, default_value_t = 1024, help_heading = "Recovery")]
    calibration_samples: usize,
    #[command(
        flatten,
        next_help_heading = "Runtime (evaluation and calibration; --device also trains)"
    )]
    runtime: RuntimeArgs,
    /// Largest relative output difference the pruning oracle accepts.
    #[arg(long, default_value_t = 1e-4, help_heading = "Checks")]
    tolerance: f64,
    /// Do not time the final model against the original.
    #[arg(long, help_heading = "Checks")]
    no_latency: bool,
    /// Write subsampling shortcuts (strided Slice + zero-channel Pad) as they are, instead of
    /// as 1x1 strided convolutions that ONNX Runtime runs faster (exact; never done for
    /// latency targets).
    #[arg(long, help_heading = "Outputs")]
    keep_shortcuts: bool,
    /// Timed runs per model for the latency ratio, at least (more are added until both
    /// medians are within 1%, up to 300 or this).
    #[arg(long, default_value_t = 30, help_heading = "Checks")]
    latency_runs: usize,
    /// Write the run's report (every stage's accuracy, size and time; checks; latency) as JSON.
    #[arg(long, help_heading = "Outputs")]
    report: Option<PathBuf>,
    /// Continue an interrupted run from its work folder (same options).
    #[arg(long, help_heading = "Outputs")]
    resume: bool,
    /// The work folder (every stage's model and the journal; removed after success)
    /// [default: OUTPUT.work].
    #[arg(long, help_heading = "Outputs")]
    work_dir: Option<PathBuf>,
}

/// Progress on stderr: a spinner with the stage, a bar for counted work, a line per stage.
struct Status {
    spinner: ProgressBar,
    bar: Option<ProgressBar>,
}

impl Status {
    fn clear_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Status {
    fn stage(&mut self, what: &str) {
        self.clear_bar();
        self.spinner.set_message(what.to_string());
    }

    fn count(&mut self, done: usize, total: usize) {
        // Calibration samples, or the latency table's rounds.
        let bar = self.bar.get_or_insert_with(|| progress::bar(""));
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }

    fn train(&mut self, event: &Event<'_>) {
        match event {
            Event::EpochStart { epoch, steps } => {
                self.clear_bar();
                let bar = progress::bar("steps");
                bar.set_length(*steps as u64);
                self.spinner.set_message(format!("training: epoch {epoch}"));
                self.bar = Some(bar);
            }
            Event::Step {
                done,
                loss,
                images_per_second,
                ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*done as u64);
                    bar.set_message(format!("loss {loss:.4} {images_per_second:.0} img/s"));
                }
            }
            Event::EpochEnd(r) => {
                self.spinner.suspend(|| {
                    eprintln!(
                        "  epoch {}: loss {:.4}, train acc {:.2}%, {:.0} img/s",
                        r.epoch,
                        r.loss,
                        r.accuracy * 100.0,
                        r.images_per_second
                    )
                });
            }
            Event::Eval(..) => {}
            Event::Warning(w) => self.spinner.suspend(|| eprintln!("warning: {w}")),
        }
    }

    fn done(&mut self, s: &StageReport, resumed: bool) {
        self.clear_bar();
        self.spinner.suspend(|| {
            eprintln!(
                "{}: top-1 {}, MACs {}, {:.1} s{}",
                s.stage,
                pct(s.top1),
                si(s.macs),
                s.seconds,
                if resumed {
                    " (done before: resumed)"
                } else {
                    ""
                }
            )
        });
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

impl Args {
    /// The pruning selection and the stages of `--method`, with the recovery learning rate
    /// the flags give.
    fn compose(&self) -> Result<(crate::pipeline::Selection, Composition, f64)> {
        let weight_panning =
            self.method == Method::Panning && self.granularity == GranularityArg::Weight;
        let mut selection = self.select.selection_with(weight_panning)?;
        if let (crate::pipeline::Selection::Scored(s), None, false) = (
            &mut selection,
            self.select.drop_blocks,
            self.method == Method::Plain,
        ) {
            // The published methods prune by width as their papers do, unless asked.
            s.drop_blocks = 0.0;
        }
        let batch_norm = crate::pipeline::recalibrate::has_running_statistics(
            &crate::ir::Model::load(&self.model)?,
        );
        let recover = Recovery::parse_list(&self.recover)?;
        let optimizer = Optimizer::default();
        let lr = self.lr.unwrap_or_else(|| Recipe::Finetune.lr(&optimizer));
        let composition = self.method.compose(
            &mut selection,
            &Settings {
                epochs: self
                    .epochs
                    .map_or_else(|| Recipe::Finetune.epochs(), |e| e as usize),
                sparse_epochs: self.sparse_epochs.map(|e| e as usize),
                sparsity_weight: self.sparsity_weight,
                from_scratch: self.from_scratch,
                inherit_steps: self.inherit_steps,
                mend_evaluations: self.mend_evaluations.map(|e| e as usize),
                holdout: self.holdout.map(|h| h as usize),
                weight_sparsity: self.weight_sparsity,
                channel_granularity: self.granularity == GranularityArg::Channel,
                pan_index: self.pan_index,
                recover,
                lr,
                batch_norm,
            },
        )?;
        Ok((selection, composition, lr))
    }

    /// What the run was asked, as the journal records it: a short summary and a hash of every
    /// option that changes the result.
    fn settings(&self, stages: &[crate::pipeline::compress::Stage]) -> String {
        let all = format!(
            "{:?}",
            (
                &self.model,
                (
                    self.method,
                    self.sparse_epochs,
                    self.sparsity_weight,
                    self.from_scratch,
                    self.inherit_steps,
                    (self.mend_evaluations, self.holdout),
                    (self.weight_sparsity, self.granularity, self.pan_index),
                ),
                &self.select,
                &self.data,
                &self.eval_split,
                self.eval_limit,
                stages,
                (self.epochs, self.lr, self.batch_size, self.limit),
                (&self.teacher, self.temperature, self.alpha),
                (self.label_smoothing, self.no_augment),
                self.calibration_samples,
                self.tolerance
            )
        );
        let hash = all.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let names: Vec<&str> = stages.iter().map(|s| s.name()).collect();
        format!("{} {} [{hash:016x}]", self.model.display(), names.join(","))
    }
}

/// Runs the command.
pub fn run(mut args: Args) -> Result<()> {
    if args.method.picks_its_own_amount() {
        args.select.criterion = crate::analysis::importance::CriterionKind::Epruner;
    }
    let (mut selection, composition, lr) = args.compose()?;
    let optimizer = Optimizer::default();
    if !args.dry_run {
        let masks = weight_masks_out(&args);
        crate::onnx::save::check_writable(
            std::iter::once(args.out.output.as_path())
                .chain(args.report.as_deref())
                .chain(masks.as_deref()),
        )?;
    }
    if args.data.data.is_none() && !args.dry_run {
        return Err(crate::Error::Usage(
            "compress evaluates and recovers on data: pass --data (and --split/--eval-split)"
                .into(),
        )
        .into());
    }
    let (backend, runtime) = args.runtime.resolve()?;
    // Said after the run, so that an error stays the only line of a failed one.
    let rounding = if args.dry_run {
        None
    } else {
        args.select
            .resolve_round_to(&mut selection, backend, &runtime)?
    };
    let mut train_args: DataArgs = (*args.data).clone();
    train_args.split = Some(args.data.split.clone().unwrap_or_else(|| "train".into()));
    let eval_args = DataArgs {
        split: Some(args.eval_split.clone()),
        ..(*args.data).clone()
    };
    let opts = CompressOptions {
        prune: PruneOptions {
            selection,
            verify_with: available_backends(),
            tolerance: args.tolerance,
        },
        stages: composition.stages.clone(),
        train: TrainOptions {
            epochs: composition.recovery_epochs,
            batch: args.batch_size as usize,
            lr: composition.recovery_lr.unwrap_or(lr),
            from_scratch: composition.from_scratch,
            optimizer,
            augment: Augment {
                crop: !args.no_augment,
                flip: !args.no_augment,
                ..Augment::default()
            },
            runtime: RuntimeOptions {
                spinning: super::train::TRAIN_SPINNING,
                ..runtime
            },
            limit: args.limit.map(|l| l as usize),
            seed: args.select.seed,
            ..Default::default()
        },
        loss: (args.label_smoothing, args.temperature, args.alpha),
        teacher: args.teacher.clone(),
        eval: EvalOptions {
            backend,
            runtime,
            batch: None,
            limit: args.eval_limit.map(|l| l as usize),
        },
        calibration_samples: args.calibration_samples,
        latency: (!args.no_latency).then_some((args.latency_runs.max(1), 1)),
        lower: !args.keep_shortcuts,
        work_dir: args.work_dir.clone().unwrap_or_else(|| {
            let mut s = args.out.output.as_os_str().to_owned();
            s.push(".work");
            PathBuf::from(s)
        }),
        resume: args.resume,
        settings: args.settings(&composition.stages),
    };
    if args.dry_run {
        say!(
            "{} with --method {}: the stages it would run",
            args.model.display(),
            args.method.name()
        );
        for line in Composition::describe(&opts) {
            say!("{line}");
        }
        return Ok(());
    }
    let (_, preprocess) = train_args.open()?;
    let open_train = || train_args.open().map(|(d, _)| d);
    let open_eval = || eval_args.open().map(|(d, _)| d);
    let data = Data {
        train: &open_train,
        eval: &open_eval,
        preprocess,
    };
    let mut status = Status {
        spinner: progress::spinner(),
        bar: None,
    };
    let result = compress(&args.model, &opts, &data, &mut status);
    status.clear_bar();
    status.spinner.finish_and_clear();
    let (model, report) = result?;
    model
        .save(&args.out.output, &args.out.save_options())
        .with_context(|| format!("writing {}", args.out.output.display()))?;
    if let Some(masks) = &report.masks {
        let to = mask_file_beside(&args.out.output);
        let bytes = std::fs::read(masks).with_context(|| format!("reading {masks}"))?;
        crate::onnx::save::write_atomic(&to, &bytes)?;
        say!("weight masks: {}", to.display());
    }
    if let Some(p) = &args.report {
        let text = serde_json::to_string_pretty(&report)?;
        crate::onnx::save::write_atomic(p, text.as_bytes())?;
    }
    print_table(&args, &report);
    let stage_notes = report.stages.iter().flat_map(|s| &s.notes);
    for line in rounding.iter().chain(stage_notes).chain(&report.lowered) {
        eprintln!("note: {line}");
    }
    std::fs::remove_dir_all(&opts.work_dir)
        .with_context(|| format!("removing {}", opts.work_dir.display()))?;
    Ok(())
}

/// The mask file a run writes beside its output (weight-granularity panning).
fn weight_masks_out(args: &Args) -> Option<PathBuf> {
    (args.method == Method::Panning && args.granularity == GranularityArg::Weight)
        .then(|| mask_file_beside(&args.out.output))
}

/// `NAME.masks.npz` beside the output `NAME.onnx`.
fn mask_file_beside(output: &std::path::Path) -> PathBuf {
    output.with_extension("masks.npz")
}

fn print_table(args: &Args, r: &CompressReport) {
    say!(
        "{:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9}  what",
        "stage",
        "top-1",
        "top-5",
        "loss",
        "MACs",
        "params",
        "time"
    );
    for s in &r.stages {
        say!(
            "{:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8.1}s  {}",
            s.stage,
            pct(s.top1),
            pct(s.top5),
            s.loss.map_or_else(|| "-".into(), |l| format!("{l:.4}")),
            si(s.macs),
            si(s.params),
            s.seconds,
            s.note
        );
    }
    let checks: Vec<String> = r
        .verified
        .iter()
        .map(|(b, e)| format!("{b} {e:.1e}"))
        .collect();
    say!(
        "verified: runs in {} (largest difference from the first runtime)",
        checks.join(", ")
    );
    if let Some(l) = &r.latency {
        say!(
            "latency: x{:.3} of the original ({:.3} ms vs {:.3} ms median, noise {:.1}%, {}, batch {})",
            l.ratio,
            l.median.1 * 1e3,
            l.median.0 * 1e3,
            l.noise * 100.0,
            l.runtime,
            l.batch
        );
        if let (Some(first), Some(last)) = (r.stages.first(), r.stages.last()) {
            let macs = last.macs as f64 / first.macs.max(1) as f64;
            let target = args.select.target.as_ref();
            if let Some(w) = super::slower_than_promised(l.ratio, macs, target) {
                eprintln!("warning: {w}");
            }
        }
    }
    say!("{} -> {}", args.model.display(), args.out.output.display());
}
