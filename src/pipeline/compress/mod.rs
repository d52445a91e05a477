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
//!    - **mend** ([`Mending`]): pre-pruning, then a search over width moves around it;
//!    - **pan** ([`Panning`]): pruning at initialisation by saliency masks an agent chooses;
//!      weight masks (the work folder's [`MASK_FILE`]) are enforced by every later training
//!      and checked on the final model;
//!    - **recover**, each of [`Recovery`]: BN recalibration ([`super::recalibrate`]),
//!      compensation ([`super::compensate`]), fine-tuning, distillation from the original;
//! 3. **lower** ([`super::lower`]): the final model's subsampling shortcuts written as the
//!    convolutions ONNX Runtime runs fastest, checked by the oracle (not for latency targets);
//! 4. **verify**: the final model passes the IR checks, loads and runs in every runtime found
//!    (ONNX Runtime and tract), with finite outputs that agree between runtimes;
//! 5. **latency**: the final model timed against the original, interleaved, in one run.
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

use crate::bench::{bench, BenchOptions};
use crate::data::{Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions};
use crate::ir::Model;
use crate::oracle::{available_backends, random_inputs, rel_error};
use crate::runtime::{self, model_outputs, RuntimeOptions};
use crate::train::options::{Event, TrainOptions};
use crate::train::runner::train;

use super::{prune_with, Calibration, PruneOptions, Reporter, Tools};

mod describe;
mod inherit;
mod mend;
mod pan;
mod prune;
mod recover;
mod sparse;

pub use describe::describe_stage;
pub use inherit::{Candidate, Inheritance};
pub use mend::Mending;
pub use pan::{Granularity, Panning, MASK_FILE};
pub use sparse::{Penalty, SparseTraining, Strength};

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
    /// Pruning at initialisation by saliency masks an agent chooses ([`super::pan`]).
    Pan(Panning),
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
            Stage::Pan(_) => "pan",
            Stage::Recover(r) => r.name(),
        }
    }

    /// Whether the stage removes channels.
    pub fn prunes(&self) -> bool {
        matches!(
            self,
            Stage::Prune | Stage::Inherit(_) | Stage::Mend(_) | Stage::Pan(_)
        )
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
    /// Lower the final model for the runtimes ([`super::lower`]) before checking and timing
    /// it (not done for latency targets).
    pub lower: bool,
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
    /// What else the user should know about the stage: the prune stage's are the pruning
    /// pipeline's notes (branches dropped, a latency target's prediction beside its
    /// measurement, a target missed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
    /// The larger of the two medians' noise (half-width of the 95% interval, relative).
    #[serde(default)]
    pub noise: f64,
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
    /// What lowering the final model for the runtimes changed ([`super::lower`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowered: Option<String>,
    /// The weight-mask file of a run pruned at weight granularity (in the work folder; the
    /// caller ships it beside the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<String>,
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
            weight_masks: pan::load_masks(&work.dir.join(MASK_FILE))?,
        };
        let mut notes = Vec::new();
        let (note, candidates) = match k {
            0 => ("as given".to_string(), Vec::new()),
            _ => match &opts.stages[k - 1] {
                Stage::Sparse(sp) => (
                    sparse::sparse_stage(sp, &mut model, &ctx, &file, observer)?,
                    vec![],
                ),
                Stage::Prune => {
                    let (note, said) = prune::prune_stage(&mut model, &ctx, observer)?;
                    notes = said;
                    (note, Vec::new())
                }
                Stage::Inherit(inh) => inherit::inherit_stage(inh, &mut model, &ctx, observer)?,
                Stage::Mend(md) => mend::mend_stage(md, &mut model, &ctx, observer)?,
                Stage::Pan(p) => pan::pan_stage(p, &mut model, &ctx, observer)?,
                Stage::Recover(r) => (
                    recover::recover_stage(*r, &mut model, &ctx, &file, observer)?,
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
            notes,
            candidates,
            ..stage
        };
        observer.done(&stage, false);
        work.record(stage)?;
    }
    let mut last = work.file(names.len() - 1, names[names.len() - 1]);
    if opts.lower {
        observer.stage("lowering the final model for the runtimes");
        work.report.lowered = super::lower::lower(&mut model, &opts.prune)?;
        if work.report.lowered.is_some() {
            last = work.dir.join("lowered.onnx");
            model.save(&last, &Default::default())?;
        }
    }
    observer.stage("verifying the final model in every runtime");
    work.report.verified = check_runs(&model)?;
    let masks = work.dir.join(MASK_FILE);
    if masks.exists() {
        pan::check_masked(&model, &pan::load_masks(&masks)?)?;
        work.report.masks = Some(masks.display().to_string());
    }
    if let Some((runs, batch)) = opts.latency {
        observer.stage("timing the final model against the original");
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
            "a compress run has exactly one pruning stage (prune, inherit, mend or pan)".into(),
        ));
    }
    let has = |r: Recovery| opts.stages.contains(&Stage::Recover(r));
    let weight_masks = opts
        .stages
        .iter()
        .any(|s| matches!(s, Stage::Pan(p) if matches!(p.granularity, Granularity::Weight { .. })));
    if weight_masks && has(Recovery::Cap) {
        return Err(Error::Usage(
            "--recover cap refits whole layers and would fill the weight masks: use bn, \
             finetune or kd after weight-granularity panning"
                .into(),
        ));
    }
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
    /// The weight masks a pan stage made, which every later training enforces (empty
    /// otherwise).
    weight_masks: crate::train::masks::WeightMasks,
}

impl Context<'_> {
    /// The run's criterion-ranked selection, which `stage` re-runs with changes (errors on a
    /// plan or a dead-channel selection).
    fn scored(&self, stage: &str) -> Result<&super::Scored> {
        match &self.opts.prune.selection {
            super::Selection::Scored(s) => Ok(s),
            _ => Err(Error::Usage(format!(
                "{stage} needs a criterion-ranked selection (not a plan)"
            ))),
        }
    }
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
            let l = selection.latency();
            Some(
                super::LatencyEvaluator::new(opts.eval.backend, opts.eval.runtime)?
                    .with_batch(l.batch)
                    .with_rounding(selection.rounding())
                    .with_lowering(opts.lower)
                    .with_search(l.search, l.table)?,
            )
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
    // Rounds are added past `runs` until both medians are within 1%, as `prune --measure`
    // and the latency targets time: with 30 rounds the same ResNet-20 files (0.8 ms) measured
    // x0.499, x0.523 and x0.551 in three runs, the last warned of a missed target.
    let opts = BenchOptions {
        precision: Some(0.01),
        max_runs: runs.max(300),
        ..BenchOptions::new(eval.backend, quiet(&eval.runtime), batch, runs)
    };
    let r = bench(
        &[original.to_path_buf(), last.to_path_buf()],
        &opts,
        &mut |_, _| {},
    )?;
    let (a, b) = (&r.models[0].latency, &r.models[1].latency);
    Ok(Latency {
        runtime: format!("{} on {}", r.backend, r.device),
        batch,
        median: (a.median, b.median),
        ratio: b.median / a.median.max(1e-12),
        noise: a.noise.max(b.noise),
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
