//! `lopper prune`: parses the options into a [`Selection`], runs the library's pruning
//! pipeline ([`lopper::pipeline`]: analyse, score, allocate, remove, verify) with calibration
//! data and a latency evaluator when the options need them, writes the smaller model, and
//! reports what changed (table, JSON, SVG, replayable plan).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use lopper::analysis::importance::{CriterionKind, Normalize, Reduce};
use lopper::ir::Model;
use lopper::oracle::available_backends;
use lopper::pipeline::{
    prune_with, Calibration, LatencyEvaluator, PruneOptions, PruneReport, Reporter, Scored,
    Selection, Tools,
};
use lopper::plan::allocate::{AllocateOptions, Amount, Budget, Constraints, Granularity, Scope};
use lopper::plan::PlanFile;
use lopper::report::{self, layer_report, Report};

use super::data_args::DataArgs;
use super::inspect::si;
use super::progress;
use super::runtime_args::RuntimeArgs;
use super::OutputArgs;

/// `--scope`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ScopeArg {
    /// The same ratio in every group.
    Local,
    /// One threshold over all normalised scores.
    Global,
}

/// `--allocation`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AllocationArg {
    /// Channels ranked individually.
    Channel,
    /// AdaPruner: each group (block) keeps channels in proportion to its mean BN gamma.
    Block,
}

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
    /// Remove this fraction of channels: of every group (--scope local, the default here) or
    /// of all prunable channels by one threshold (--scope global).
    #[arg(long, help_heading = "What to remove")]
    ratio: Option<f64>,
    /// Meet a budget: flops=R (MACs kept), params=R or latency=R (measured with --backend on
    /// --device), found by bisection, within --target-tolerance for flops/params.
    #[arg(long, value_parser = parse_target, help_heading = "What to remove")]
    target: Option<Budget>,
    /// Remove every channel whose (normalised) score is below this.
    #[arg(long, help_heading = "What to remove")]
    threshold: Option<f64>,
    /// Remove exactly the channels that contribute nothing or a constant (all-zero filters,
    /// BatchNormalization gamma = 0), compensating constants in the consumers' biases.
    #[arg(long, help_heading = "What to remove")]
    remove_dead: bool,
    /// With --remove-dead: first set BatchNormalization gammas with |gamma| below this to 0
    /// (after sparse training), so those channels are removed with their constant folded in.
    #[arg(long, requires = "remove_dead", help_heading = "What to remove")]
    gamma_below: Option<f64>,
    /// Replay a plan written by --save-plan (same model ⇒ byte-identical output).
    #[arg(long, help_heading = "What to remove")]
    plan: Option<PathBuf>,
    /// Importance criterion: l1, l2, bn-scale, fpgm, lamp, random, activation, apoz, taylor,
    /// epruner (alone: keeps its exemplars), or multi:l1=0.5,bn-scale=0.5.
    #[arg(long, default_value = "l1", value_parser = |s: &str| CriterionKind::parse(s), help_heading = "Criterion")]
    criterion: CriterionKind,
    /// How a channel's scores over several producers combine.
    #[arg(long, default_value = "sum", value_parser = |s: &str| Reduce::parse(s), help_heading = "Criterion")]
    reduce: Reduce,
    /// Use raw scores instead of scores divided by each group's largest.
    #[arg(long, help_heading = "Criterion")]
    raw_scores: bool,
    /// Seed of the random criterion.
    #[arg(long, default_value_t = 0, help_heading = "Criterion")]
    seed: u64,
    /// Same ratio per group (local) or one threshold over all groups (global)
    /// [default: local for --ratio, global otherwise].
    #[arg(long, value_enum, help_heading = "Allocation")]
    scope: Option<ScopeArg>,
    /// Rank channels, or size whole groups by their BN importance (AdaPruner).
    #[arg(
        long,
        value_enum,
        default_value = "channel",
        help_heading = "Allocation"
    )]
    allocation: AllocationArg,
    /// Protect threshold per group: a fraction (0.1), a count (4), or both (0.1,4).
    #[arg(long, default_value = "0.1", value_parser = parse_min_keep, help_heading = "Allocation")]
    min_keep: (f64, usize),
    /// Largest fraction of any group removed.
    #[arg(long, default_value_t = 1.0, help_heading = "Allocation")]
    max_ratio: f64,
    /// Kept widths are multiples of this (hardware-friendly); groups narrower are left alone.
    #[arg(long, default_value_t = 1, help_heading = "Allocation")]
    round_to: usize,
    /// Leave groups touching nodes whose name matches this glob intact (repeatable).
    #[arg(long, help_heading = "Allocation")]
    ignore: Vec<String>,
    /// Prune in N rounds, re-analysing and re-scoring the model between rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Allocation")]
    steps: u32,
    /// Accepted distance of the reached flops/params/latency ratio from the target.
    #[arg(long, default_value_t = 0.005, help_heading = "Allocation")]
    target_tolerance: f64,
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
    /// Write the exact removal as a plan (replay with --plan).
    #[arg(long, help_heading = "Outputs")]
    save_plan: Option<PathBuf>,
    /// Write the run's report (per layer and totals, groups, rounds, oracle) as JSON.
    #[arg(long, help_heading = "Outputs")]
    report: Option<PathBuf>,
    /// Write an SVG chart of kept vs original widths per layer.
    #[arg(long, help_heading = "Outputs")]
    plot: Option<PathBuf>,
    /// Which layers the before/after table shows.
    #[arg(long, value_enum, default_value = "changed", help_heading = "Outputs")]
    table: TableArg,
}

fn parse_target(s: &str) -> std::result::Result<Budget, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected flops=R, params=R or latency=R"))?;
    let v: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not a number"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "the target fraction to keep must be in (0, 1], got {v}"
        ));
    }
    match k.trim() {
        "flops" | "macs" => Ok(Budget::Flops(v)),
        "params" => Ok(Budget::Params(v)),
        "latency" => Ok(Budget::Latency(v)),
        k => Err(format!(
            "unknown target '{k}' (expected flops, params or latency)"
        )),
    }
}

fn parse_min_keep(s: &str) -> std::result::Result<(f64, usize), String> {
    let (mut frac, mut count) = (0.0, 1);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('.') {
            frac = part
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("'{part}': a fraction in [0, 1] expected"))?;
        } else {
            count = part
                .parse::<usize>()
                .map_err(|_| format!("'{part}': a channel count expected"))?
                .max(1);
        }
    }
    Ok((frac, count))
}

impl Args {
    fn selection(&self) -> Result<Selection> {
        self.criterion.check_available()?;
        let amounts = [
            self.ratio.is_some(),
            self.target.is_some(),
            self.threshold.is_some(),
            self.remove_dead,
            self.plan.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if amounts > 1 {
            bail!("give one of --ratio, --target, --threshold, --remove-dead, --plan");
        }
        if self.remove_dead {
            return Ok(match self.gamma_below {
                Some(t) if t.is_finite() && t > 0.0 => Selection::DeadBelow(t),
                Some(t) => bail!("--gamma-below must be a positive number, got {t}"),
                None => Selection::Dead,
            });
        }
        if let Some(p) = &self.plan {
            return Ok(Selection::Plan(PlanFile::load(p)?));
        }
        let amount = match (self.ratio, self.target, self.threshold) {
            (Some(r), _, _) => {
                if !(0.0..1.0).contains(&r) {
                    bail!("--ratio must be in [0, 1), got {r}");
                }
                Amount::Ratio(r)
            }
            (_, Some(b), _) => Amount::Target(b),
            (_, _, Some(t)) => Amount::Threshold(t),
            _ if self.criterion == CriterionKind::Epruner => Amount::Own,
            _ => bail!(
                "say what to remove: --ratio R, --target flops=R|params=R|latency=R, --threshold T, --remove-dead or --plan FILE"
            ),
        };
        let scope = match (self.scope, &amount) {
            (Some(ScopeArg::Local), _) => Scope::Local,
            (Some(ScopeArg::Global), _) => Scope::Global,
            (None, Amount::Ratio(_)) => Scope::Local,
            (None, _) => Scope::Global,
        };
        Ok(Selection::Scored(Scored {
            criterion: self.criterion.clone(),
            reduce: self.reduce,
            normalize: if self.raw_scores {
                Normalize::None
            } else {
                Normalize::Max
            },
            seed: self.seed,
            allocate: AllocateOptions {
                scope,
                granularity: match self.allocation {
                    AllocationArg::Channel => Granularity::Channel,
                    AllocationArg::Block => Granularity::Block,
                },
                amount,
                constraints: Constraints {
                    min_keep_fraction: self.min_keep.0,
                    min_keep_count: self.min_keep.1,
                    max_ratio: self.max_ratio,
                    round_to: self.round_to.max(1),
                    ignore: self.ignore.clone(),
                },
                tolerance: self.target_tolerance,
                ..Default::default()
            },
            steps: self.steps as usize,
        }))
    }
}

/// The command's reporter: a spinner showing the current stage and, while calibration data
/// runs, a bar counting samples (both hidden when stderr is not a terminal).
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
        let bar = self.bar.get_or_insert_with(|| {
            let bar = progress::bar("samples");
            bar.set_length(total as u64);
            bar
        });
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

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let selection = args.selection()?;
    let mut model = Model::load(&args.model)?;
    lopper::ir::verify(&model.graph)?;
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
            return Err(lopper::Error::Usage(format!(
                "criterion '{}' needs calibration data: pass --data",
                args.criterion
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
                Some(LatencyEvaluator::new(backend, runtime)?)
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
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    model
        .save(&args.out.output, &args.out.save_options())
        .with_context(|| format!("writing {}", args.out.output.display()))?;
    if let Some(p) = &args.save_plan {
        report.plan.save(p)?;
    }
    let layers = match &report.before {
        Some(before) => Some(layer_report(before, &model)?),
        None => None,
    };
    print_summary(&args, &report, layers.as_ref());
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

fn print_summary(args: &Args, report: &PruneReport, layers: Option<&report::LayerReport>) {
    let ratio = |a: u64, b: u64| if a == 0 { 1.0 } else { b as f64 / a as f64 };
    if let Some(l) = layers {
        if args.table != TableArg::None {
            print!(
                "{}",
                report::table::render_table(&l.layers, &l.totals, args.table == TableArg::Changed)
            );
        }
    }
    println!(
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
    println!(
        "MACs   {} -> {} (x{:.3})",
        si(report.macs.0),
        si(report.macs.1),
        ratio(report.macs.0, report.macs.1)
    );
    println!(
        "params {} -> {} (x{:.3})",
        si(report.params.0),
        si(report.params.1),
        ratio(report.params.0, report.params.1)
    );
    match &report.oracle {
        Some(o) => {
            for (k, why) in &o.skipped {
                eprintln!("warning: {k} could not run the model, so it did not check it: {why}");
            }
            let per: Vec<String> = o
                .errors
                .iter()
                .map(|(b, e)| format!("{b} {e:.1e}"))
                .collect();
            println!(
                "verified: max relative error vs masked original {} (tolerance {:.0e})",
                per.join(", "),
                args.tolerance
            );
        }
        None if report.removed > 0 => println!("not verified (--no-verify)"),
        None => {}
    }
}
