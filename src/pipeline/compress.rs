//! The whole chain from an original model to the one shipped, as a list of stages over one
//! model, each evaluated on held-out data and each result kept in a work folder so that an
//! interrupted run continues where it stopped ([`compress`]):
//!
//! 1. **original**: the given model evaluated (the data's shape, labels and class count are
//!    checked here, before anything else runs);
//! 2. then the run's [`Stage`]s in order (a published method is such a list, see
//!    [`super::methods`]):
//!    - **sparse** ([`SparseTraining`]): training with an L1 penalty on BatchNormalization
//!      scales (all of them, or only those of the channels the pruning would remove);
//!    - **prune**: [`super::prune_with`] (analyse → score → allocate → remove → oracle), a
//!      saved plan replayed, or the masked sparse stage's plan replayed;
//!    - **inherit** ([`Inheritance`]): AdaPruner's adaptive weight inheritance, pruning once
//!      per criterion, recovering each candidate briefly and keeping the best;
//!    - **recover**, each of [`Recovery`]: BN recalibration ([`super::recalibrate`]),
//!      compensation ([`super::compensate`]), fine-tuning, distillation from the original;
//! 3. **verify**: the final model passes the IR checks, loads and runs in every runtime found
//!    (ONNX Runtime and tract), with finite outputs that agree between runtimes;
//! 4. **latency**: the final model timed against the original, interleaved, in one run.
//!
//! Every stage ends by writing its model (`NN-stage.onnx`) and the journal (`journal.json`:
//! the report so far and the settings it was made with) into the work folder, both
//! atomically; a stage interrupted half-way leaves nothing of itself (fine-tuning keeps its
//! per-epoch checkpoint, which the resumed stage continues from). **write** is the caller's:
//! the library returns the final model and the report. It does not pick hyper-parameters
//! beyond the defaults it is given, and does not search over recovery recipes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::analysis::activation_stats::calibration_batches;
use crate::bench::{bench, BenchOptions};
use crate::data::{Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::Model;
use crate::oracle::{available_backends, random_inputs, rel_error};
use crate::runtime::{self, model_outputs, RuntimeOptions};
use crate::train::options::{Event, Recipe, TrainOptions};
use crate::train::runner::train;

use super::compensate::{compensate, CompensateOptions};
use super::recalibrate::recalibrate;
use super::{prune_with, Calibration, PruneOptions, Reporter, Tools};

/// A recovery stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Running statistics of every BatchNormalization re-estimated on training batches.
    Bn,
    /// Each consumer of removed channels refitted by least squares to reproduce the original's
    /// output (CaP-style compensation, [`super::compensate`]; no gradients).
    Cap,
    /// Training on the labels (cross-entropy).
    Finetune,
    /// Training on the original's outputs (distillation) and the labels.
    Kd,
}

impl Recovery {
    /// The stage's name: `bn`, `finetune` or `kd`.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::Bn => "bn",
            Recovery::Cap => "cap",
            Recovery::Finetune => "finetune",
            Recovery::Kd => "kd",
        }
    }

    /// Parses a comma-separated list (`none` = no stage), e.g. `bn,kd`.
    pub fn parse_list(s: &str) -> Result<Vec<Recovery>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(match part {
                "none" => continue,
                "bn" => Recovery::Bn,
                "cap" => Recovery::Cap,
                "finetune" | "ft" => Recovery::Finetune,
                "kd" | "distill" => Recovery::Kd,
                other => {
                    return Err(Error::Usage(format!(
                        "unknown recovery stage '{other}' (expected none, bn, cap, finetune or kd)"
                    )))
                }
            });
        }
        Ok(out)
    }
}

/// Which BatchNormalization scales a [`SparseTraining`] stage penalises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Penalty {
    /// Every scale (network slimming).
    All,
    /// Only the scales of the channels the run's pruning selection removes, chosen on the
    /// model before the stage; the prune stage then replays exactly that choice
    /// (MaskSparsity).
    Masked,
    /// Group lasso on every convolution filter (for networks without BatchNormalization:
    /// the filter norm is then the channel's scale).
    Filters,
}

/// Sparse training before pruning: cross-entropy on the labels plus `λ·weight·|γ|` on
/// BatchNormalization scales, so that the channels to remove fade out first.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTraining {
    /// Which scales are penalised.
    pub penalty: Penalty,
    /// How strong the L1 term is.
    pub strength: Strength,
    /// Strength growing linearly from 0 to `weight` over the stage (augmented sparsity);
    /// else constant.
    pub augmented: bool,
    /// Epochs of the stage (over `--limit` samples each when given).
    pub epochs: usize,
    /// Base learning rate (cosine).
    pub lr: f64,
}

/// The strength of a [`SparseTraining`] penalty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strength {
    /// The weight λ of the L1 term, as `lopper train --sparsity l1-bn=W` takes it.
    Weight(f32),
    /// The weight that moves a scale the loss leaves alone by this much over the stage:
    /// λ = shift / (Σ over steps of lr · λ-schedule factor · 1/(1 − momentum)), so the
    /// same setting means the same penalty at any number of steps, learning rate or
    /// schedule (a short budget gets a stronger λ).
    Shift(f32),
}

impl Strength {
    /// The weight λ for a stage of `steps` steps at base rate `lr` (cosine) with `optimizer`.
    pub fn weight(
        self,
        steps: usize,
        lr: f64,
        augmented: bool,
        optimizer: &crate::train::optim::Optimizer,
    ) -> f32 {
        match self {
            Strength::Weight(w) => w,
            Strength::Shift(shift) => {
                // Means over the stage of the cosine rate (1/2) and of the rate times a
                // linear ramp from 0 to 1 (1/4 − 1/π²).
                let schedule = if augmented {
                    0.25 - 1.0 / (std::f64::consts::PI * std::f64::consts::PI)
                } else {
                    0.5
                };
                let momentum = match optimizer {
                    crate::train::optim::Optimizer::Sgd { momentum, .. } => f64::from(*momentum),
                    crate::train::optim::Optimizer::AdamW { .. } => 0.0,
                };
                let per_weight = lr * schedule * steps.max(1) as f64 / (1.0 - momentum.min(0.99));
                (f64::from(shift) / per_weight.max(1e-12)) as f32
            }
        }
    }
}

/// One way the pruned network inherits weights ([`Inheritance`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its name in the report.
    pub name: String,
    /// The criterion that picks which channels stay (the allocation, and so the widths,
    /// do not depend on it under block allocation).
    pub criterion: crate::analysis::importance::CriterionKind,
    /// Re-initialise every weight after pruning (the architecture is inherited, no weights).
    pub reinit: bool,
}

/// AdaPruner's adaptive weight inheritance: every candidate prunes the model, is recovered
/// briefly (BN recalibration, then `steps` training steps on training samples outside the
/// scoring part) and scored on `holdout` training samples it did not train on; the best
/// (top-1, then loss) is the stage's model.
#[derive(Clone, Debug, PartialEq)]
pub struct Inheritance {
    /// The candidates, in the order tried.
    pub candidates: Vec<Candidate>,
    /// Training steps of each candidate's brief recovery.
    pub steps: usize,
    /// Training samples held out to score the candidates.
    pub holdout: usize,
}

/// Automatic mending: pre-pruning by the run's selection, then a search over moves of
/// channels between groups that keep the budget, every candidate recovered briefly (BN
/// recalibration, `steps` training steps, one runtime thread per candidate, candidates in
/// parallel) and scored on `holdout` training samples it did not train on.
#[derive(Clone, Debug, PartialEq)]
pub struct Mending {
    /// The search's budget and window.
    pub search: super::mend::MendOptions,
    /// Training steps of each candidate's brief recovery.
    pub steps: usize,
    /// Training samples held out to score the candidates.
    pub holdout: usize,
}

/// A stage after the original's evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Sparse training before pruning.
    Sparse(SparseTraining),
    /// Pruning by the run's selection (after a masked sparse stage: its choice replayed).
    Prune,
    /// Pruning once per inheritance candidate, keeping the best after a brief recovery.
    Inherit(Inheritance),
    /// Pre-pruning, then a search over width moves around it ([`super::mend`]).
    Mend(Mending),
    /// A recovery stage.
    Recover(Recovery),
}

impl Stage {
    /// The stage's name in the report and the work folder.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Sparse(_) => "sparse",
            Stage::Prune => "prune",
            Stage::Inherit(_) => "inherit",
            Stage::Mend(_) => "mend",
            Stage::Recover(r) => r.name(),
        }
    }

    /// Whether the stage removes channels.
    pub fn prunes(&self) -> bool {
        matches!(self, Stage::Prune | Stage::Inherit(_) | Stage::Mend(_))
    }

    /// `prune` followed by `recover`: the plain run.
    pub fn plain(recover: &[Recovery]) -> Vec<Stage> {
        std::iter::once(Stage::Prune)
            .chain(recover.iter().map(|&r| Stage::Recover(r)))
            .collect()
    }
}

/// Opens one split of the dataset afresh (evaluation and training consume a dataset).
pub type OpenSplit<'a> = &'a (dyn Fn() -> Result<Box<dyn Dataset>> + Sync);

/// The data of a run: the training split (calibration, recalibration, training), the
/// held-out split every stage is evaluated on, and the preprocessing of both.
pub struct Data<'a> {
    /// Opens the training split.
    pub train: OpenSplit<'a>,
    /// Opens the held-out split.
    pub eval: OpenSplit<'a>,
    /// Preprocessing of both.
    pub preprocess: Preprocess,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct CompressOptions {
    /// The pruning run (selection, oracle runtimes and tolerance).
    pub prune: PruneOptions,
    /// The stages after the original's evaluation, in order: exactly one prunes
    /// ([`Stage::plain`] for a plain run).
    pub stages: Vec<Stage>,
    /// Training settings of the fine-tuning and distillation stages (`output`, `resume`,
    /// `teacher` and the loss are set per stage; `from_scratch` re-initialises the pruned
    /// model before its first training stage).
    pub train: TrainOptions,
    /// Label smoothing of both training stages, and the distillation temperature and weight
    /// of the teacher term.
    pub loss: (f32, f32, f32),
    /// Teacher of the distillation stage (`None`: the original model).
    pub teacher: Option<PathBuf>,
    /// Runtime, batch and sample limit of the evaluations (also used for calibration).
    pub eval: EvalOptions,
    /// Samples of the training split for calibration criteria and BN recalibration.
    pub calibration_samples: usize,
    /// Time the final model against the original (runs and batch size).
    pub latency: Option<(usize, usize)>,
    /// The work folder (journal and every stage's model).
    pub work_dir: PathBuf,
    /// Continue the run recorded in the work folder instead of starting afresh.
    pub resume: bool,
    /// What the run was asked, in words: a resumed run must have been asked the same.
    pub settings: String,
}

/// One stage's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// `original`, `prune`, `bn`, `finetune` or `kd`.
    pub stage: String,
    /// Top-1 accuracy on the held-out split.
    pub top1: Option<f64>,
    /// Top-5 accuracy (models with more than five classes).
    pub top5: Option<f64>,
    /// Mean cross-entropy on the held-out split.
    pub loss: Option<f64>,
    /// Held-out samples evaluated.
    pub samples: usize,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Parameters.
    pub params: u64,
    /// Wall time of the stage (its evaluation excluded), seconds.
    pub seconds: f64,
    /// What the stage did, in one line.
    pub note: String,
    /// Inheritance candidates: name and top-1 on the held-out training samples, in the
    /// order tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<(String, f64)>,
    /// The stage's model in the work folder.
    pub file: String,
}

/// The final model against the original in one runtime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// `ort` or `tract`, and the device.
    pub runtime: String,
    /// Batch size timed.
    pub batch: usize,
    /// Median seconds per run of the original and of the final model.
    pub median: (f64, f64),
    /// Final / original median (below 1: faster).
    pub ratio: f64,
}

/// The run's report: one entry per stage done, the checks of the final model and its latency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressReport {
    /// The original model.
    pub model: String,
    /// What the run was asked.
    pub settings: String,
    /// Stages done, in order.
    pub stages: Vec<StageReport>,
    /// Per runtime that ran the final model: the largest relative difference of its outputs
    /// from the first runtime's (0 for the first).
    pub verified: Vec<(String, f64)>,
    /// The final model timed against the original.
    pub latency: Option<Latency>,
}

impl CompressReport {
    /// The stage named `name`, if done.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.stage == name)
    }
}

/// The names of a run's stages, in order (the original's evaluation first).
pub fn stage_names(stages: &[Stage]) -> Vec<&'static str> {
    let mut v = vec!["original"];
    v.extend(stages.iter().map(Stage::name));
    v
}

/// One line saying what stage `s` of a run with `opts` will do, with its settings (what
/// `--dry-run` prints).
pub fn describe_stage(s: &Stage, opts: &CompressOptions) -> String {
    let t = &opts.train;
    match s {
        Stage::Sparse(sp) => format!(
            "sparse: {} epoch(s) of cross-entropy plus L1 on {}, {}{}, lr {}",
            sp.epochs,
            match sp.penalty {
                Penalty::All => "every BatchNormalization scale",
                Penalty::Filters => "every convolution filter's norm (group lasso)",
                Penalty::Masked =>
                    "the scales of the channels the prune stage removes (chosen now, by the \
                     selection below)",
            },
            match sp.strength {
                Strength::Weight(w) => format!("weight {w:e}"),
                Strength::Shift(x) =>
                    format!("weight sized to move an untouched |gamma| by {x} over the stage"),
            },
            if sp.augmented { ", growing from 0" } else { "" },
            sp.lr
        ),
        Stage::Prune => format!("prune: {}", describe_selection(&opts.prune.selection)),
        Stage::Inherit(inh) => format!(
            "inherit: {}; one sub-network per candidate ({}), each BN-recalibrated and trained \
             {} steps, scored on {} held-out training samples; the best is kept",
            describe_selection(&opts.prune.selection),
            inh.candidates
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            inh.steps,
            inh.holdout
        ),
        Stage::Mend(md) => format!(
            "mend: pre-prune by {}; then {} candidates in all ({} per round) of channels moved \
             between groups with MACs within ±{} of the target, each BN-recalibrated and \
             trained {} steps (one thread each, in parallel), scored on {} held-out training \
             samples; the best is kept",
            describe_selection(&opts.prune.selection),
            md.search.evaluations,
            md.search.proposals,
            md.search.window,
            md.steps,
            md.holdout
        ),
        Stage::Recover(Recovery::Bn) => format!(
            "bn: recalibrate BatchNormalization statistics on {} training samples",
            opts.calibration_samples
        ),
        Stage::Recover(Recovery::Cap) => format!(
            "cap: refit the consumers of removed channels by least squares on {} training samples",
            opts.calibration_samples
        ),
        Stage::Recover(r) => {
            let (ls, temp, alpha) = opts.loss;
            format!(
                "{}: {} epoch(s){}, lr {} ({:?}), batch {}{}{}",
                r.name(),
                t.epochs,
                if t.from_scratch {
                    " from scratch (re-initialised)"
                } else {
                    ""
                },
                t.lr,
                t.schedule,
                t.batch,
                if *r == Recovery::Kd {
                    format!(", distilled from the original at T {temp}, alpha {alpha}")
                } else {
                    String::new()
                },
                if ls > 0.0 {
                    format!(", label smoothing {ls}")
                } else {
                    String::new()
                }
            )
        }
    }
}

/// A pruning selection in words: its criterion and the options that shape the choice.
fn describe_selection(sel: &super::Selection) -> String {
    let meta = sel.meta();
    let opts: Vec<String> = meta
        .options
        .iter()
        .filter(|(_, v)| !matches!(v, serde_json::Value::Array(a) if a.is_empty()))
        .map(|(k, v)| format!("{k} {}", v.to_string().trim_matches('"')))
        .collect();
    format!("criterion {}, {}", meta.criterion, opts.join(", "))
}

/// What [`compress`] tells its caller while it runs.
pub trait Observer {
    /// A stage starts or a pipeline step inside it (one short line).
    fn stage(&mut self, what: &str);
    /// A long step has done `done` of `total` units.
    fn count(&mut self, done: usize, total: usize);
    /// A training event.
    fn train(&mut self, event: &Event<'_>);
    /// A stage finished (or was found done in the journal: `resumed`).
    fn done(&mut self, stage: &StageReport, resumed: bool);
}

/// Passes the pruning pipeline's reports to an [`Observer`].
struct AsReporter<'o>(&'o mut dyn Observer);

impl Reporter for AsReporter<'_> {
    fn stage(&mut self, what: &str) {
        self.0.stage(what)
    }
    fn count(&mut self, done: usize, total: usize) {
        self.0.count(done, total)
    }
}

/// The work folder and its journal.
struct Work {
    dir: PathBuf,
    report: CompressReport,
}

impl Work {
    fn journal(dir: &Path) -> PathBuf {
        dir.join("journal.json")
    }

    /// Opens the folder: the recorded run when resuming (same settings), else a fresh one.
    fn open(opts: &CompressOptions, model: &Path) -> Result<Work> {
        let dir = opts.work_dir.clone();
        let journal = Work::journal(&dir);
        if opts.resume && journal.exists() {
            let text = std::fs::read_to_string(&journal).map_err(|e| Error::io(&journal, e))?;
            let report: CompressReport = serde_json::from_str(&text).map_err(|e| {
                Error::Usage(format!(
                    "{}: not a compress journal: {e}",
                    journal.display()
                ))
            })?;
            if report.settings != opts.settings {
                return Err(Error::Usage(format!(
                    "{} was made by another run ({}); remove it or run without --resume",
                    dir.display(),
                    report.settings
                )));
            }
            return Ok(Work { dir, report });
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Work {
            dir,
            report: CompressReport {
                model: model.display().to_string(),
                settings: opts.settings.clone(),
                ..Default::default()
            },
        })
    }

    /// The pruning stage's plan (what [`Recovery::Cap`] needs to know which channels went).
    fn plan(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    /// The choice a masked sparse stage penalised, which the prune stage replays.
    fn mask_plan(&self) -> PathBuf {
        self.dir.join("mask-plan.json")
    }

    /// The file of stage `k` named `name`.
    fn file(&self, k: usize, name: &str) -> PathBuf {
        self.dir.join(format!("{k:02}-{name}.onnx"))
    }

    /// Records a finished stage (its model already written) in the journal, atomically.
    fn record(&mut self, stage: StageReport) -> Result<()> {
        self.report.stages.push(stage);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.report)
            .map_err(|e| Error::Usage(format!("journal: {e}")))?;
        crate::onnx::save::write_atomic(&Work::journal(&self.dir), text.as_bytes())
    }
}

/// Runs the chain of the [module documentation](self) on the model at `path`. Returns the
/// final model and the report; the work folder stays (the caller removes it once the model
/// is written). Errors leave the work folder as the last finished stage left it.
pub fn compress(
    path: &Path,
    opts: &CompressOptions,
    data: &Data,
    observer: &mut dyn Observer,
) -> Result<(Model, CompressReport)> {
    let original = Model::load(path)?;
    crate::ir::verify_model(&original)?;
    check_recovery(&original, opts)?;
    check_training_labels(&original, data)?;
    let mut work = Work::open(opts, path)?;
    let result = run_stages(&mut work, &original, path, opts, data, observer);
    if result.is_err() && work.report.stages.is_empty() {
        // Nothing finished: leave nothing behind.
        let _ = std::fs::remove_dir_all(&work.dir);
    }
    result.map(|m| (m, work.report))
}

/// The stages of [`compress`] into `work`; returns the final model.
fn run_stages(
    work: &mut Work,
    original: &Model,
    path: &Path,
    opts: &CompressOptions,
    data: &Data,
    observer: &mut dyn Observer,
) -> Result<Model> {
    let names = stage_names(&opts.stages);
    let mut model = original.clone();
    for (k, &name) in names.iter().enumerate() {
        let file = work.file(k, name);
        if let Some(done) = work.report.stages.get(k) {
            if done.stage != name {
                return Err(Error::Usage(format!(
                    "{}: stage {} is '{}', this run's is '{name}'",
                    work.dir.display(),
                    k + 1,
                    done.stage
                )));
            }
            model = Model::load(&file)?;
            observer.done(done, true);
            continue;
        }
        observer.stage(name);
        let start = Instant::now();
        let ctx = Context {
            original,
            original_path: path,
            plan: work.plan(),
            mask_plan: work.mask_plan(),
            first_training: opts.stages[..k.saturating_sub(1)]
                .iter()
                .all(|s| !matches!(s, Stage::Recover(Recovery::Finetune | Recovery::Kd))),
            data,
            opts,
        };
        let (note, candidates) = match k {
            0 => ("as given".to_string(), Vec::new()),
            _ => match &opts.stages[k - 1] {
                Stage::Sparse(sp) => (sparse_stage(sp, &mut model, &ctx, &file, observer)?, vec![]),
                Stage::Prune => (prune_stage(&mut model, &ctx, observer)?, Vec::new()),
                Stage::Inherit(inh) => inherit_stage(inh, &mut model, &ctx, observer)?,
                Stage::Mend(md) => mend_stage(md, &mut model, &ctx, observer)?,
                Stage::Recover(r) => (
                    recover_stage(*r, &mut model, &ctx, &file, observer)?,
                    vec![],
                ),
            },
        };
        let seconds = start.elapsed().as_secs_f64();
        model.save(&file, &Default::default())?;
        let stage = evaluate_stage(name, &model, &file, data, opts, observer)?;
        let stage = StageReport {
            seconds,
            note,
            candidates,
            ..stage
        };
        observer.done(&stage, false);
        work.record(stage)?;
    }
    observer.stage("verifying the final model in every runtime");
    work.report.verified = check_runs(&model)?;
    if let Some((runs, batch)) = opts.latency {
        observer.stage("timing the final model against the original");
        let last = work.file(names.len() - 1, names[names.len() - 1]);
        work.report.latency = Some(time_against(path, &last, runs, batch, &opts.eval)?);
    }
    work.save()?;
    Ok(model)
}

/// Refuses a plan made for another model and recovery stages the model or options cannot
/// run, before anything runs.
fn check_recovery(original: &Model, opts: &CompressOptions) -> Result<()> {
    if let super::Selection::Plan(p) = &opts.prune.selection {
        p.check_model(original)?;
    }
    if opts.stages.iter().filter(|s| s.prunes()).count() != 1 {
        return Err(Error::Usage(
            "a compress run has exactly one pruning stage (prune or inherit)".into(),
        ));
    }
    let has = |r: Recovery| opts.stages.contains(&Stage::Recover(r));
    if has(Recovery::Bn) && !super::recalibrate::has_running_statistics(original) {
        return Err(Error::Usage(
            "--recover bn: the model has no BatchNormalization with running statistics".into(),
        ));
    }
    if let (true, Some(t)) = (has(Recovery::Kd), &opts.teacher) {
        let teacher = Model::load(t)?;
        // Dims after the batch of the first input and the first output.
        let input = |m: &Model| -> Result<Option<Vec<Option<usize>>>> {
            Ok(runtime::model_inputs(m)?
                .first()
                .map(|i| i.dims.iter().skip(1).copied().collect()))
        };
        let output = |m: &Model| {
            model_outputs(m)
                .first()
                .map(|o| o.dims.iter().skip(1).copied().collect::<Vec<_>>())
        };
        for (what, a, b) in [
            ("input", input(original)?, input(&teacher)?),
            ("output", output(original), output(&teacher)),
        ] {
            if a.is_none() || a != b {
                return Err(Error::Usage(format!(
                    "teacher {}: its first {what} is {:?} after the batch, the model's {:?}",
                    t.display(),
                    b.unwrap_or_default(),
                    a.unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a training split whose labels reach past the model's class scores (the held-out
/// split is checked by the original's evaluation).
fn check_training_labels(original: &Model, data: &Data) -> Result<()> {
    let classes = model_outputs(original)
        .first()
        .and_then(|o| o.dims.last().copied().flatten());
    let train = (data.train)()?;
    let max = train.labels().and_then(|l| l.iter().copied().max());
    if let (Some(k), Some(l)) = (classes, max) {
        if l < 0 || l as usize >= k {
            return Err(Error::Usage(format!(
                "{}: labels go up to {l}, the model outputs {k} scores (classes 0..{})",
                train.describe(),
                k.saturating_sub(1)
            )));
        }
    }
    Ok(())
}

/// What a stage knows of the run besides the model it changes.
struct Context<'a> {
    /// The original model and its file (the default teacher).
    original: &'a Model,
    original_path: &'a Path,
    /// The pruning stage's plan file.
    plan: PathBuf,
    /// The masked sparse stage's choice, replayed by the prune stage when it exists.
    mask_plan: PathBuf,
    /// No fine-tuning or distillation stage ran before this one.
    first_training: bool,
    data: &'a Data<'a>,
    opts: &'a CompressOptions,
}

/// The pruning tools of a run: calibration data from the training split, a latency
/// evaluator for latency targets, reports to `observer`.
fn tools<'a>(
    ctx: &'a Context<'a>,
    open: &'a dyn super::OpenDataset,
    selection: &super::Selection,
    observer: &'a mut dyn Observer,
) -> Result<Tools<'a>> {
    let opts = ctx.opts;
    Ok(Tools {
        calibration: selection.needs_data().then(|| Calibration {
            data: open,
            backend: opts.eval.backend,
            runtime: quiet(&opts.eval.runtime),
            batch_size: opts.eval.batch,
            samples: opts.calibration_samples,
        }),
        latency: if selection.is_latency_target() {
            Some(super::LatencyEvaluator::new(
                opts.eval.backend,
                opts.eval.runtime,
            )?)
        } else {
            None
        },
        reporter: Box::new(AsReporter(observer)),
    })
}

/// Prunes `model` with `prune`, calibration data from the training split; returns the report.
fn prune_by(
    model: &mut Model,
    prune: &PruneOptions,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<super::PruneReport> {
    let open = || -> Result<(Box<dyn Dataset>, Preprocess)> {
        Ok(((ctx.data.train)()?, ctx.data.preprocess.clone()))
    };
    let mut tools = tools(ctx, &open, &prune.selection, observer)?;
    prune_with(model, prune, &mut tools)
}

/// The prune stage: `opts.prune` (or the masked sparse stage's choice, replayed); the plan
/// goes to the work folder.
fn prune_stage(model: &mut Model, ctx: &Context, observer: &mut dyn Observer) -> Result<String> {
    let masked = ctx.mask_plan.exists();
    let mut snapped = String::new();
    let prune = if masked {
        let plan = crate::plan::PlanFile::load(&ctx.mask_plan)?;
        let (n, largest) = zero_masked_scales(model, &plan)?;
        snapped = format!(
            "; {n} masked scales (largest |gamma| {largest:.1e}) set to 0 first, their constant \
             outputs folded into the consumers"
        );
        PruneOptions {
            selection: super::Selection::Plan(plan),
            ..ctx.opts.prune.clone()
        }
    } else {
        ctx.opts.prune.clone()
    };
    let r = prune_by(model, &prune, ctx, observer)?;
    r.plan.save(&ctx.plan)?;
    let oracle = r
        .oracle
        .as_ref()
        .map(|o| format!(", oracle {:.1e}", o.max_rel_error))
        .unwrap_or_default();
    Ok(format!(
        "{} channels removed ({}{}){oracle}{snapped}",
        r.removed,
        r.criterion,
        if masked {
            ": the sparse stage's mask"
        } else {
            ""
        }
    ))
}

/// Sets to zero the BatchNormalization scales `plan` removes (what masked sparse training
/// drove towards zero), so that removing those channels keeps their constant output
/// (`act(beta)`), which [`crate::passes::remove_channels()`] folds into the consumers, instead
/// of dropping it. Returns how many scales were set and the largest |γ| among them.
fn zero_masked_scales(model: &mut Model, plan: &crate::plan::PlanFile) -> Result<(usize, f64)> {
    let masks = crate::train::masks::masks_from_plan(model, plan)?;
    let g = &mut model.graph;
    let (mut n, mut largest) = (0, 0f64);
    for (name, mask) in &masks {
        let Some(v) = g.value_by_name(name) else {
            continue;
        };
        let Some(t) = g.init(v).filter(|t| t.dtype() == crate::ir::DType::F32) else {
            continue;
        };
        let (Some(mut values), shape) = (t.to_f64_vec(), t.shape().to_vec()) else {
            continue;
        };
        for (x, m) in values.iter_mut().zip(mask) {
            if *m > 0.0 {
                largest = largest.max(x.abs());
                *x = 0.0;
                n += 1;
            }
        }
        let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        g.set_init(v, crate::ir::Tensor::from_f32(shape, &values));
    }
    Ok((n, largest))
}

/// Trains `model` with `topts` on `train_data` (the checkpoint beside `topts.output` is
/// continued when it exists); the model becomes the trained one. Returns the last epoch's
/// mean loss and the epoch the run resumed after.
fn train_in_place(
    model: &mut Model,
    topts: &TrainOptions,
    train_data: Box<dyn Dataset>,
    observer: &mut dyn Observer,
) -> Result<(f64, usize)> {
    let report = train(model, topts, train_data, None, &mut |ev| {
        observer.train(&ev)
    })?;
    *model = Model::load(&topts.output)?;
    let last = report.epochs.last().map_or(f64::NAN, |e| e.loss);
    Ok((last, report.resumed_from))
}

/// Training options of a stage writing `file` (resuming from its checkpoint when present).
fn stage_training(opts: &CompressOptions, data: &Data, file: &Path) -> TrainOptions {
    let checkpoint = sidecar(file);
    TrainOptions {
        output: file.to_path_buf(),
        resume: checkpoint.exists().then_some(checkpoint),
        preprocess: data.preprocess.clone(),
        from_scratch: false,
        ..opts.train.clone()
    }
}

/// The sparse stage: `sp` on `model`. A masked penalty first chooses, on `model`, the
/// channels the run's selection removes (kept as the mask plan for the prune stage).
fn sparse_stage(
    sp: &SparseTraining,
    model: &mut Model,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<String> {
    use crate::train::options::LambdaSchedule;
    use crate::train::regularize::Regularizer;
    let train_data = (ctx.data.train)()?;
    let samples = ctx
        .opts
        .train
        .limit
        .map_or(train_data.len(), |l| l.min(train_data.len()));
    let steps = sp.epochs * (samples / ctx.opts.train.batch.max(1));
    let weight = sp
        .strength
        .weight(steps, sp.lr, sp.augmented, &ctx.opts.train.optimizer);
    let regularizer = match sp.penalty {
        Penalty::All => Regularizer::L1Gamma { weight },
        Penalty::Filters => Regularizer::GroupLasso { weight, eps: 1e-8 },
        Penalty::Masked => {
            observer.stage("sparse: choosing the channels to penalise");
            // The mask plan must fit the trained model, which training writes in its
            // prepared form (constants folded).
            *model = crate::train::init::prepare_model(model)?;
            let mut probe = model.clone();
            let prune = PruneOptions {
                verify_with: Vec::new(),
                ..ctx.opts.prune.clone()
            };
            let r = prune_by(&mut probe, &prune, ctx, observer)?;
            let masks = crate::train::masks::masks_from_plan(model, &r.plan)?;
            r.plan.save(&ctx.mask_plan)?;
            observer.stage("sparse");
            Regularizer::MaskedL1Gamma { weight, masks }
        }
    };
    let (ls, _, _) = ctx.opts.loss;
    let topts = TrainOptions {
        epochs: sp.epochs,
        lr: sp.lr,
        regularizers: vec![regularizer],
        lambda: if sp.augmented {
            LambdaSchedule::Augmented
        } else {
            LambdaSchedule::Constant
        },
        loss: Recipe::loss(false, ls, 0.0, 0.0),
        ..stage_training(ctx.opts, ctx.data, file)
    };
    let (loss, _) = train_in_place(model, &topts, train_data, observer)?;
    let (small, all) = small_gammas(model, 1e-2);
    let small = if all > 0 {
        format!("; {small} of {all} |gamma| < 1e-2")
    } else {
        String::new()
    };
    Ok(format!(
        "{} epochs, L1 {} {:e}{} on {} scales, lr {:.0e}, last loss {loss:.4}{small}",
        sp.epochs,
        match sp.penalty {
            Penalty::Masked => "masked",
            Penalty::All => "on every scale,",
            Penalty::Filters => "(group lasso) on every filter,",
        },
        weight,
        if sp.augmented { " growing from 0" } else { "" },
        match sp.penalty {
            Penalty::Masked => "the chosen channels' BatchNormalization",
            Penalty::All => "BatchNormalization",
            Penalty::Filters => "convolution filter",
        },
        sp.lr,
    ))
}

/// How many BatchNormalization scale entries have |γ| below `t`, of how many.
fn small_gammas(model: &Model, t: f32) -> (usize, usize) {
    let g = &model.graph;
    let (mut small, mut all) = (0, 0);
    for n in g.node_ids() {
        let Some(port) = crate::ops::channel_scale_input(g.node(n)) else {
            continue;
        };
        let Some(gamma) = g.node(n).input(port).and_then(|v| g.init(v)) else {
            continue;
        };
        if let Some(v) = gamma.to_f64_vec() {
            all += v.len();
            small += v.iter().filter(|x| x.abs() < f64::from(t)).count();
        }
    }
    (small, all)
}

/// How a candidate sub-network is recovered briefly and scored: BN recalibration (when the
/// model has running statistics), `steps` training steps at `lr` on training samples outside
/// the `holdout` ones, then top-1 and loss on those `holdout` samples.
struct Brief {
    steps: usize,
    holdout: usize,
    lr: f64,
    /// Runtime of the recalibration, training and scoring (threads per candidate).
    runtime: RuntimeOptions,
}

/// Recovers `m` briefly as `b` says (its model written to `file`, checkpoints beside) and
/// scores it.
fn brief_recovery(
    m: &mut Model,
    b: &Brief,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<super::mend::Score> {
    use crate::data::subset::Subset;
    let opts = ctx.opts;
    let (holdout, rest) = Subset::split(ctx.data.train, b.holdout)?;
    if super::recalibrate::has_running_statistics(m) {
        let batches = calibration_batches(
            m,
            Box::new(rest),
            &ctx.data.preprocess,
            opts.eval.batch,
            Some(opts.calibration_samples),
        )?
        .collect::<Result<Vec<_>>>()?;
        recalibrate(
            m,
            &batches,
            opts.eval.backend,
            &quiet(&b.runtime),
            &mut |d, t| observer.count(d, t),
        )?;
    }
    if b.steps > 0 {
        let (_, rest) = Subset::split(ctx.data.train, b.holdout)?;
        let (ls, _, _) = opts.loss;
        let topts = TrainOptions {
            epochs: 1,
            limit: Some(b.steps * opts.train.batch),
            loss: Recipe::loss(false, ls, 0.0, 0.0),
            lr: b.lr,
            runtime: b.runtime,
            resume: None,
            ..stage_training(opts, ctx.data, file)
        };
        train_in_place(m, &topts, Box::new(rest), observer)?;
    }
    m.save(file, &Default::default())?;
    let e = evaluate(
        file,
        None,
        Box::new(holdout),
        &ctx.data.preprocess,
        &EvalOptions {
            limit: None,
            runtime: b.runtime,
            ..opts.eval.clone()
        },
        &mut |d, t| observer.count(d, t),
    )?;
    Ok(e.accuracy.as_ref().map_or(
        super::mend::Score {
            top1: 0.0,
            loss: f64::INFINITY,
        },
        |a| super::mend::Score {
            top1: a.top1,
            loss: a.loss,
        },
    ))
}

/// A scratch folder beside the work folder's plan, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(ctx: &Context, name: &str) -> Result<Scratch> {
        let dir = ctx.plan.with_file_name(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The inherit stage: each candidate of `inh` pruned from `model`, recalibrated, trained
/// briefly and scored on held-out training samples; `model` becomes the best.
fn inherit_stage(
    inh: &Inheritance,
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<(String, f64)>)> {
    let opts = ctx.opts;
    let super::Selection::Scored(scored) = &opts.prune.selection else {
        return Err(Error::Usage(
            "weight inheritance needs a criterion-ranked selection (not a plan)".into(),
        ));
    };
    let dir = Scratch::new(ctx, "inherit")?;
    let mut best: Option<(super::mend::Score, usize, Model, super::PruneReport)> = None;
    let mut scores = Vec::new();
    for (k, c) in inh.candidates.iter().enumerate() {
        observer.stage(&format!("inherit: candidate {} ({})", k + 1, c.name));
        let mut m = model.clone();
        let prune = PruneOptions {
            selection: super::Selection::Scored(super::Scored {
                criterion: c.criterion.clone(),
                ..scored.clone()
            }),
            ..opts.prune.clone()
        };
        let r = prune_by(&mut m, &prune, ctx, observer)?;
        if c.reinit {
            crate::train::init::reinitialize(&mut m, opts.train.seed)?;
        }
        let brief = Brief {
            steps: inh.steps,
            holdout: inh.holdout,
            lr: if c.reinit {
                Recipe::Train.lr(&opts.train.optimizer)
            } else {
                opts.train.lr
            },
            runtime: opts.train.runtime,
        };
        let file = dir.0.join(format!("{k:02}-{}.onnx", c.name));
        let score = brief_recovery(&mut m, &brief, ctx, &file, observer)?;
        scores.push((c.name.clone(), score.top1));
        if best.as_ref().is_none_or(|b| score.beats(&b.0)) {
            best = Some((score, k, m, r));
        }
    }
    let (_, k, m, r) = best.ok_or_else(|| Error::Usage("no inheritance candidate".into()))?;
    *model = m;
    r.plan.save(&ctx.plan)?;
    let list: Vec<String> = scores
        .iter()
        .map(|(n, t)| format!("{n} {:.2}%", t * 100.0))
        .collect();
    Ok((
        format!(
            "inherited by {} ({} channels removed; held-out training top-1 after {}{} steps: {})",
            inh.candidates[k].name,
            r.removed,
            if super::recalibrate::has_running_statistics(model) {
                "BN recalibration and "
            } else {
                ""
            },
            inh.steps,
            list.join(", ")
        ),
        scores,
    ))
}

/// Scores mending candidates: each pruned from the model by its plan and recovered briefly,
/// a batch at a time on as many threads as there are cores (one runtime thread each, so a
/// score does not depend on how many run at once).
struct BriefScores<'a> {
    model: &'a Model,
    ctx: &'a Context<'a>,
    brief: Brief,
    dir: PathBuf,
    done: usize,
}

/// An observer that ignores everything (candidates scored on worker threads).
struct Quiet;

impl Observer for Quiet {
    fn stage(&mut self, _: &str) {}
    fn count(&mut self, _: usize, _: usize) {}
    fn train(&mut self, _: &Event<'_>) {}
    fn done(&mut self, _: &StageReport, _: bool) {}
}

impl BriefScores<'_> {
    fn one(&self, plan: &crate::plan::PlanFile, k: usize) -> Result<super::mend::Score> {
        let mut m = self.model.clone();
        let prune = PruneOptions {
            selection: super::Selection::Plan(plan.clone()),
            verify_with: Vec::new(),
            tolerance: self.ctx.opts.prune.tolerance,
        };
        super::prune(&mut m, &prune)?;
        let file = self.dir.join(format!("{k:03}.onnx"));
        brief_recovery(&mut m, &self.brief, self.ctx, &file, &mut Quiet)
    }
}

impl super::mend::Evaluator for BriefScores<'_> {
    fn score(&mut self, plans: &[crate::plan::PlanFile]) -> Result<Vec<super::mend::Score>> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(plans.len())
            .max(1);
        let first = self.done;
        self.done += plans.len();
        let this = &*self;
        let mut out = Vec::with_capacity(plans.len());
        for chunk in (0..plans.len()).collect::<Vec<_>>().chunks(workers) {
            let results: Vec<Result<super::mend::Score>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&k| s.spawn(move || this.one(&plans[k], first + k)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Usage("a mending candidate's worker panicked".into()))
                        })
                    })
                    .collect()
            });
            for r in results {
                out.push(r?);
            }
        }
        Ok(out)
    }
}

/// The mend stage: pre-pruning by the run's selection, then [`super::mend::search`] over
/// width moves around it, candidates scored by brief recovery; `model` is pruned to the
/// best (verified like any prune).
fn mend_stage(
    md: &Mending,
    model: &mut Model,
    ctx: &Context,
    observer: &mut dyn Observer,
) -> Result<(String, Vec<(String, f64)>)> {
    use crate::plan::allocate::{Amount, Budget};
    let opts = ctx.opts;
    let super::Selection::Scored(scored) = &opts.prune.selection else {
        return Err(Error::Usage(
            "mending needs a criterion-ranked selection (not a plan)".into(),
        ));
    };
    observer.stage("mend: pre-pruning");
    let mut probe = model.clone();
    let quick = PruneOptions {
        verify_with: Vec::new(),
        ..opts.prune.clone()
    };
    let pre = prune_by(&mut probe, &quick, ctx, observer)?;
    let original_macs = super::model_costs(model)?.macs.max(1) as f64;
    let c = &scored.allocate.constraints;
    let limits = super::mend::limits_of(
        &pre.plan,
        c.round_to,
        c.round_from,
        c.min_keep_fraction,
        c.min_keep_count,
    )?;
    let mut macs = |p: &crate::plan::PlanFile| -> Result<f64> {
        let mut m = model.clone();
        super::prune(
            &mut m,
            &PruneOptions {
                selection: super::Selection::Plan(p.clone()),
                verify_with: Vec::new(),
                tolerance: opts.prune.tolerance,
            },
        )?;
        Ok(super::model_costs(&m)?.macs as f64 / original_macs)
    };
    let target = match scored.allocate.amount {
        Amount::Target(Budget::Flops(t)) => t,
        _ => super::model_costs(&probe)?.macs as f64 / original_macs,
    };
    let dir = Scratch::new(ctx, "mend")?;
    let mut eval = BriefScores {
        model,
        ctx,
        brief: Brief {
            steps: md.steps,
            holdout: md.holdout,
            lr: opts.train.lr,
            runtime: RuntimeOptions {
                threads: Some(1),
                ..opts.train.runtime
            },
        },
        dir: dir.0.clone(),
        done: 0,
    };
    observer.stage(&format!(
        "mend: searching ({} candidates, {} steps each)",
        md.search.evaluations, md.steps
    ));
    let (best, trials) = super::mend::search(
        &pre.plan,
        &limits,
        &mut macs,
        target,
        &mut eval,
        &md.search,
        &mut |d, t| observer.count(d, t),
    )?;
    drop(dir);
    let won = trials
        .iter()
        .position(|t| super::mend::plan_for(&pre.plan, &t.counts).ok().as_ref() == Some(&best))
        .unwrap_or(0);
    let r = prune_by(
        model,
        &PruneOptions {
            selection: super::Selection::Plan(best),
            ..opts.prune.clone()
        },
        ctx,
        observer,
    )?;
    r.plan.save(&ctx.plan)?;
    let rounds = trials.last().map_or(0, |t| t.round);
    let scores: Vec<(String, f64)> = trials
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (
                if k == 0 {
                    "pre-pruned".to_string()
                } else {
                    format!("round {} #{k} (MACs x{:.3})", t.round, t.macs)
                },
                t.score.top1,
            )
        })
        .collect();
    let moved: usize = trials[won]
        .counts
        .iter()
        .zip(&trials[0].counts)
        .map(|(a, b)| a.abs_diff(*b))
        .sum();
    Ok((
        format!(
            "pre-pruned by {} ({} channels, held-out training top-1 {:.2}% after {} steps); {} \
             candidates in {rounds} round(s); kept {} ({:.2}%, {moved} channels moved), MACs x{:.3}",
            pre.criterion,
            pre.removed,
            trials[0].score.top1 * 100.0,
            md.steps,
            trials.len(),
            if won == 0 {
                "the pre-pruned widths".to_string()
            } else {
                format!("candidate {won}")
            },
            trials[won].score.top1 * 100.0,
            trials[won].macs
        ),
        scores,
    ))
}

/// Training samples for calibration criteria and BN recalibration of `model`.
fn training_batches(
    model: &Model,
    opts: &CompressOptions,
    data: &Data,
) -> Result<Vec<crate::analysis::activation_stats::CalibrationBatch>> {
    calibration_batches(
        model,
        (data.train)()?,
        &data.preprocess,
        opts.eval.batch,
        Some(opts.calibration_samples),
    )?
    .collect()
}

/// Runs one recovery stage on `model`; `file` is where the stage's model goes (training
/// keeps its checkpoints beside it).
fn recover_stage(
    r: Recovery,
    model: &mut Model,
    ctx: &Context,
    file: &Path,
    observer: &mut dyn Observer,
) -> Result<String> {
    let (opts, data) = (ctx.opts, ctx.data);
    match r {
        Recovery::Bn => {
            let batches = training_batches(model, opts, data)?;
            let rt = quiet(&opts.eval.runtime);
            let done = recalibrate(model, &batches, opts.eval.backend, &rt, &mut |d, t| {
                observer.count(d, t)
            })?;
            Ok(format!(
                "{} normalisation nodes on {} samples",
                done.nodes, done.samples
            ))
        }
        Recovery::Cap => {
            let batches = training_batches(model, opts, data)?;
            let plan = crate::plan::PlanFile::load(&ctx.plan)?;
            let rt = quiet(&opts.eval.runtime);
            let done = compensate(
                model,
                ctx.original,
                &plan,
                &batches,
                opts.eval.backend,
                &rt,
                &CompensateOptions::default(),
                &mut |d, t| observer.count(d, t),
            )?;
            Ok(format!(
                "{} layers refitted on {} samples, relative residual {:.3} -> {:.3}",
                done.layers, done.samples, done.residual_before, done.residual_after
            ))
        }
        Recovery::Finetune | Recovery::Kd => {
            let kd = r == Recovery::Kd;
            let teacher = kd.then(|| {
                opts.teacher
                    .clone()
                    .unwrap_or_else(|| ctx.original_path.into())
            });
            let (ls, t, a) = opts.loss;
            let scratch = opts.train.from_scratch && ctx.first_training;
            let topts = TrainOptions {
                teacher,
                loss: Recipe::loss(kd, ls, t, a),
                from_scratch: scratch,
                ..stage_training(opts, data, file)
            };
            let (loss, resumed) = train_in_place(model, &topts, (data.train)()?, observer)?;
            Ok(format!(
                "{} epochs{}{}, lr {:.0e}, last loss {loss:.4}",
                topts.epochs,
                if scratch { " from scratch" } else { "" },
                if resumed > 0 {
                    format!(" (resumed after {resumed})")
                } else {
                    String::new()
                },
                topts.lr,
            ))
        }
    }
}

/// The training checkpoint beside `file` (what `lopper train --resume` reads).
fn sidecar(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".train.json");
    PathBuf::from(s)
}

/// Runtime options with spinning threads off (gathering runs many short sessions).
fn quiet(rt: &RuntimeOptions) -> RuntimeOptions {
    RuntimeOptions {
        spinning: Some(false),
        ..*rt
    }
}

/// Accuracy and loss of the stage's model on the held-out split, with its size.
fn evaluate_stage(
    name: &str,
    model: &Model,
    file: &Path,
    data: &Data,
    opts: &CompressOptions,
    observer: &mut dyn Observer,
) -> Result<StageReport> {
    observer.stage(&format!("{name}: evaluating"));
    let costs = super::model_costs(model)?;
    let r = evaluate(
        file,
        None,
        (data.eval)()?,
        &data.preprocess,
        &opts.eval,
        &mut |d, t| observer.count(d, t),
    )?;
    Ok(StageReport {
        stage: name.to_string(),
        top1: r.accuracy.as_ref().map(|a| a.top1),
        top5: r.accuracy.as_ref().and_then(|a| a.top5),
        loss: r.accuracy.as_ref().map(|a| a.loss),
        samples: r.samples,
        macs: costs.macs,
        params: costs.params,
        file: file.display().to_string(),
        ..Default::default()
    })
}

/// Runs `model` on two seeded random inputs in every runtime found: each must load it and
/// give finite outputs, and every runtime's outputs must match the first's (relative 1e-3).
/// Returns each runtime's largest relative difference from the first.
pub fn check_runs(model: &Model) -> Result<Vec<(String, f64)>> {
    let dir = crate::temp_dir::TempDir::new("compress-check")?;
    let path = dir.path().join("final.onnx");
    model.save(&path, &Default::default())?;
    let inputs = [random_inputs(model, 1)?, random_inputs(model, 2)?];
    let mut first: Option<Vec<Vec<(String, crate::ir::Tensor)>>> = None;
    let mut out = Vec::new();
    for kind in available_backends() {
        let mut s = runtime::load(kind, &path)?;
        let ys = inputs
            .iter()
            .map(|x| s.run(x))
            .collect::<Result<Vec<_>>>()?;
        for y in ys.iter().flatten() {
            let finite =
                y.1.to_f64_vec()
                    .is_none_or(|v| v.iter().all(|x| x.is_finite()));
            if !finite {
                return Err(Error::Usage(format!(
                    "{}: output '{}' of the final model is not finite",
                    s.backend(),
                    y.0
                )));
            }
        }
        let mut worst = 0f64;
        if let Some(f) = &first {
            for (a, b) in f.iter().flatten().zip(ys.iter().flatten()) {
                worst = worst.max(rel_error(&a.0, &a.1, &b.1)?);
            }
            if worst > 1e-3 {
                return Err(Error::Usage(format!(
                    "the final model's outputs differ between runtimes: {} vs {}: relative {worst:.1e}",
                    out.first().map_or("", |(n, _): &(String, f64)| n.as_str()),
                    s.backend()
                )));
            }
        } else {
            first = Some(ys);
        }
        out.push((s.backend().to_string(), worst));
    }
    Ok(out)
}

/// Times the model at `last` against the original at `original`: interleaved runs in the
/// evaluation runtime, spinning threads off.
fn time_against(
    original: &Path,
    last: &Path,
    runs: usize,
    batch: usize,
    eval: &EvalOptions,
) -> Result<Latency> {
    let opts = BenchOptions::new(eval.backend, quiet(&eval.runtime), batch, runs);
    let r = bench(
        &[original.to_path_buf(), last.to_path_buf()],
        &opts,
        &mut |_, _| {},
    )?;
    let (a, b) = (r.models[0].latency.median, r.models[1].latency.median);
    Ok(Latency {
        runtime: format!("{} on {}", r.backend, r.device),
        batch,
        median: (a, b),
        ratio: b / a.max(1e-12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_lists_parse() {
        assert_eq!(
            Recovery::parse_list("bn, kd").unwrap(),
            [Recovery::Bn, Recovery::Kd]
        );
        assert!(Recovery::parse_list("none").unwrap().is_empty());
        let e = Recovery::parse_list("bn,cap2").unwrap_err().to_string();
        assert!(e.contains("'cap2'"), "{e}");
        assert_eq!(
            stage_names(&Stage::plain(&[Recovery::Finetune])),
            ["original", "prune", "finetune"]
        );
    }
}
