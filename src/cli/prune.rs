//! `lopper prune`: parses the options into a [`Selection`], runs the library's pruning
//! pipeline ([`crate::pipeline`]: analyse, score, allocate, remove, verify) with calibration
//! data and a latency evaluator when the options need them, writes the smaller model, and
//! reports what changed (table, JSON, SVG, replayable plan).

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use crate::ir::Model;
use crate::oracle::available_backends;
use crate::pipeline::{
    prune_with, Calibration, LatencyEvaluator, PruneOptions, PruneReport, Reporter, Selection,
    Tools,
};
use crate::report::{self, layer_report, Report};

use super::data_args::DataArgs;
use super::inspect::si;
use super::progress;
use super::runtime_args::RuntimeArgs;
use super::selection_args::SelectionArgs;
use super::OutputArgs;

/// `--table`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum TableArg {
    /// Layers that changed, and totals.
    Changed,
    /// Every layer.
    All,
    /// Totals only.
    None,
}

/// Arguments of `lopper prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    select: SelectionArgs,
    #[command(flatten, next_help_heading = "Calibration data (data-driven criteria)")]
    data: DataArgs,
    /// Calibration samples for data-driven criteria (spread evenly over the dataset).
    #[arg(
        long,
        default_value_t = 256,
        help_heading = "Calibration data (data-driven criteria)"
    )]
    calibration_samples: usize,
    /// Samples per calibration batch [default: 32, or the model's fixed batch].
    #[arg(long, help_heading = "Calibration data (data-driven criteria)")]
    batch_size: Option<usize>,
    #[command(flatten, next_help_heading = "Runtime (calibration, latency targets)")]
    runtime: RuntimeArgs,
    /// Skip the equivalence check before writing.
    #[arg(long, help_heading = "Checks")]
    no_verify: bool,
    /// Largest relative output difference the check accepts.
    #[arg(long, default_value_t = 1e-4, help_heading = "Checks")]
    tolerance: f64,
    /// After writing, time the pruned model against the original on the runtime (interleaved,
    /// batch 1, medians within 1%) and warn when it is slower than its MACs promise (a latency
    /// ratio above the MACs ratio + 0.10).
    #[arg(long, help_heading = "Checks")]
    measure: bool,
    /// Write subsampling shortcuts (strided Slice + zero-channel Pad) as they are, instead of
    /// as 1x1 strided convolutions that ONNX Runtime runs faster (exact; never done for
    /// latency targets).
    #[arg(long, help_heading = "Outputs")]
    keep_shortcuts: bool,
    /// Write the exact removal as a plan (replay with --plan).
    #[arg(long, help_heading = "Outputs")]
    save_plan: Option<PathBuf>,
    /// Write the run's report (per layer and totals, groups, rounds, oracle) as JSON.
    #[arg(long, help_heading = "Outputs")]
    report: Option<PathBuf>,
    /// Also write the original with the removed channels silenced: what the pruned model must
    /// compute, for checking it in another runtime (with several rounds, such as dropped
    /// branches before the width round, the earlier rounds' removal is applied and the last
    /// round's channels are silenced).
    #[arg(long, help_heading = "Outputs")]
    save_masked: Option<PathBuf>,
    /// Write an SVG chart of kept vs original widths per layer.
    #[arg(long, help_heading = "Outputs")]
    plot: Option<PathBuf>,
    /// Which layers the before/after table shows.
    #[arg(long, value_enum, default_value = "changed", help_heading = "Outputs")]
    table: TableArg,
}

/// The command's reporter: a spinner showing the current stage and, while calibration data
/// runs or the latency table is timed, a bar counting samples or rounds (both hidden when
/// stderr is not a terminal).
struct Status {
    spinner: ProgressBar,
    bar: Option<ProgressBar>,
}

impl Reporter for Status {
    fn stage(&mut self, what: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.spinner.set_message(what.to_string());
    }

    fn count(&mut self, done: usize, total: usize) {
        // Calibration samples, or the latency table's rounds (whose total grows while a
        // precision target is unmet).
        let bar = self.bar.get_or_insert_with(|| progress::bar(""));
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.spinner.finish_and_clear();
    }
}

/// The original as analysed with the one step's removed channels silenced (the oracle's
/// reference); the original itself when nothing was removed.
fn masked_original(report: &PruneReport) -> Result<Model> {
    let before = report
        .before
        .clone()
        .context("the run kept no copy of the original")?;
    if report.removed == 0 {
        return Ok(before);
    }
    // Earlier rounds (a drop of whole branches, `--steps`) are removed for real: the result
    // computes what the original computes with every removed channel silenced.
    let (model, groups, classes) = crate::pipeline::verify::before_last_step(before, &report.plan)?;
    Ok(crate::oracle::masked_original(&model, &groups, &classes)?)
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let mut selection = args.select.selection()?;
    // Every output path is checked before anything is computed or written.
    let table = selection.latency().table;
    let side = [
        &args.save_plan,
        &args.report,
        &args.plot,
        &table,
        &args.save_masked,
    ];
    crate::onnx::save::check_writable(
        std::iter::once(args.out.output.as_path())
            .chain(side.into_iter().flatten().map(|p| p.as_path())),
    )?;
    let mut model = Model::load(&args.model)?;
    crate::ir::verify_model(&model)?;
    // Said with the run's other notes, so that an error stays the only line of a failed run.
    let rounding = if matches!(selection, Selection::Scored(_)) {
        let (backend, runtime) = args.runtime.resolve()?;
        args.select
            .resolve_round_to(&mut selection, backend, &runtime)?
    } else {
        None
    };
    let opts = PruneOptions {
        selection,
        verify_with: if args.no_verify {
            vec![]
        } else {
            available_backends()
        },
        tolerance: args.tolerance,
    };
    let needs_data = opts.selection.needs_data();
    let needs_timing = opts.selection.is_latency_target();
    let runtime = if needs_data || needs_timing {
        Some(args.runtime.resolve()?)
    } else {
        None
    };
    let open = || {
        if args.data.data.is_none() {
            return Err(crate::Error::Usage(format!(
                "criterion '{}' needs calibration data: pass --data",
                args.select.criterion
            )));
        }
        args.data.open()
    };
    let mut tools = Tools {
        calibration: match runtime {
            Some((backend, runtime)) if needs_data => Some(Calibration {
                data: &open,
                backend,
                runtime,
                batch_size: args.batch_size,
                samples: args.calibration_samples,
            }),
            _ => None,
        },
        latency: match runtime {
            Some((backend, runtime)) if needs_timing => {
                let l = opts.selection.latency();
                let evaluator = LatencyEvaluator::new(backend, runtime)?
                    .with_batch(l.batch)
                    .with_rounding(opts.selection.rounding())
                    .with_lowering(!args.keep_shortcuts);
                Some(evaluator.with_search(l.search, l.table)?)
            }
            _ => None,
        },
        reporter: Box::new(Status {
            spinner: progress::spinner(),
            bar: None,
        }),
    };
    let result = prune_with(&mut model, &opts, &mut tools);
    drop(tools);
    let report = result?;
    if report.removed == 0 {
        let why = if report.blocked == report.groups {
            "every channel group is blocked"
        } else {
            "nothing to remove"
        };
        eprintln!("warning: {why}; writing the model unchanged");
    }
    let layers = match &report.before {
        Some(before) => Some(layer_report(before, &model)?),
        None => None,
    };
    let lowered = if args.keep_shortcuts {
        None
    } else {
        crate::pipeline::lower::lower(&mut model, &opts)?
    };
    for n in rounding.iter().chain(&report.notes).chain(&lowered) {
        eprintln!("note: {n}");
    }
    model
        .save(&args.out.output, &args.out.save_options())
        .with_context(|| format!("writing {}", args.out.output.display()))?;
    if let Some(p) = &args.save_plan {
        report.plan.save(p)?;
    }
    if let Some(p) = &args.save_masked {
        masked_original(&report)?
            .save(p, &args.out.save_options())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    print_summary(&args, &report, layers.as_ref());
    if args.measure {
        measure(&args, &report)?;
    }
    if let (Some(path), Some(layers)) = (&args.plot, layers.as_ref()) {
        let name = args
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report::plot::plot_widths(&layers.layers, &layers.totals, &name, path)?;
    }
    if let (Some(path), Some(layers)) = (&args.report, layers) {
        Report::new(&report, layers).save(path)?;
    }
    Ok(())
}

/// `--measure`: the pruned model's latency against the original's, and a warning when it is
/// slower than its MACs promise.
fn measure(args: &Args, report: &PruneReport) -> Result<()> {
    let (backend, runtime) = args.runtime.resolve()?;
    let opts = crate::bench::BenchOptions {
        precision: Some(0.01),
        max_runs: 150,
        ..crate::bench::BenchOptions::new(backend, runtime, 1, 30)
    };
    let models = [args.model.clone(), args.out.output.clone()];
    let r = crate::bench::bench(&models, &opts, &mut |_, _| {})?;
    let (m0, m1) = (r.models[0].latency.median, r.models[1].latency.median);
    let lat = m1 / m0.max(f64::MIN_POSITIVE);
    let macs = report.macs.1 as f64 / report.macs.0.max(1) as f64;
    say!(
        "latency: x{lat:.3} of the original ({:.3} ms vs {:.3} ms median, {} {}, batch 1) for x{macs:.3} of the MACs",
        m1 * 1e3,
        m0 * 1e3,
        r.backend,
        r.device
    );
    if let Some(w) = super::slower_than_promised(lat, macs, args.select.target.as_ref()) {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn print_summary(args: &Args, report: &PruneReport, layers: Option<&report::LayerReport>) {
    let ratio = |a: u64, b: u64| if a == 0 { 1.0 } else { b as f64 / a as f64 };
    if let Some(l) = layers {
        if args.table != TableArg::None {
            say_part!(
                "{}",
                report::table::render_table(&l.layers, &l.totals, args.table == TableArg::Changed)
            );
        }
    }
    say!(
        "{} -> {}: {} groups ({} blocked), {} channels removed ({}{})",
        args.model.display(),
        args.out.output.display(),
        report.groups,
        report.blocked,
        report.removed,
        report.criterion,
        if report.steps.len() > 1 {
            format!(", {} rounds", report.steps.len())
        } else {
            String::new()
        }
    );
    say!(
        "MACs   {} -> {} (x{:.3})",
        si(report.macs.0),
        si(report.macs.1),
        ratio(report.macs.0, report.macs.1)
    );
    say!(
        "params {} -> {} (x{:.3})",
        si(report.params.0),
        si(report.params.1),
        ratio(report.params.0, report.params.1)
    );
    match &report.oracle {
        Some(o) => {
            for (k, why) in &o.skipped {
                eprintln!("warning: {k} did not compare: {why}");
            }
            let per: Vec<String> = o
                .errors
                .iter()
                .map(|(b, e)| format!("{b} {e:.1e}"))
                .collect();
            let reduced = o
                .reduced
                .as_ref()
                .map(|r| format!("; at a reduced resolution: {r}"))
                .unwrap_or_default();
            if o.outputs_vary() {
                say!(
                    "verified: max relative error vs masked original {} (tolerance {:.0e}; {}{}{reduced})",
                    per.join(", "),
                    args.tolerance,
                    variation_note(o.variation),
                    o.inside.as_ref().map(inside_note).unwrap_or_default(),
                );
            } else if let (true, Some(i)) = (o.exercised(), &o.inside) {
                say!(
                    "verified inside the model: the outputs do not vary with the input ({}), so \
                     the {} values compared inside it carry the check: max relative error vs \
                     masked original {:.1e} (tolerance {:.0e}; {} of them vary with the input, \
                     the deepest '{}'; outputs {}{reduced})",
                    variation_note(o.variation),
                    i.compared,
                    o.max_rel_error,
                    args.tolerance,
                    i.varying,
                    i.deepest_varying.as_deref().unwrap_or_default(),
                    per.join(", "),
                );
            } else {
                say!(
                    "not verified: the reference outputs do not vary with the input ({}), so the \
                     comparison proves little (max relative error vs masked original {})",
                    variation_note(o.variation),
                    per.join(", ")
                );
            }
        }
        None if report.removed > 0 => say!("not verified (--no-verify)"),
        None => {}
    }
}

/// The values compared inside the models, for the verdict line.
fn inside_note(inside: &crate::oracle::Inside) -> String {
    format!(
        "; {} values inside agree within {:.1e}",
        inside.compared, inside.max_rel_error
    )
}

/// How much the oracle's reference outputs varied with its random inputs, for the verdict line.
pub fn variation_note(variation: Option<f64>) -> String {
    match variation {
        Some(v) => format!("outputs vary by {v:.1e} across the random inputs"),
        None => "integer inputs only, fed zeros: output variation not measured".into(),
    }
}
