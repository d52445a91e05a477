//! `lopper compensate`: refits a pruned model's layers that lost input channels to reproduce
//! the original's outputs on calibration data ([`crate::pipeline::compensate`]), and writes
//! the model atomically. Parses, calls the library, prints; nothing here decides anything.

use std::path::PathBuf;

use crate::ir::Model;
use crate::pipeline::compensate::{compensate, CompensateOptions};
use crate::plan::PlanFile;
use crate::runtime::RuntimeOptions;
use clap::Parser;

use super::data_args::DataArgs;
use super::runtime_args::RuntimeArgs;

/// `--targets`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Targets {
    /// The original node's output.
    Node,
    /// The original residual Add's output, for nodes that feed one.
    Residual,
}

/// Arguments of `lopper compensate`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The pruned model (`lopper prune`'s output).
    model: PathBuf,
    /// The model that was pruned, as `lopper prune` read it.
    #[arg(long)]
    original: PathBuf,
    /// The plan of that run (`lopper prune --save-plan`).
    #[arg(long)]
    plan: PathBuf,
    /// Where to write the compensated model.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten, next_help_heading = "Calibration data")]
    data: DataArgs,
    /// Calibration samples (spread evenly over the dataset; kept in memory).
    #[arg(long, default_value_t = 512)]
    samples: usize,
    /// Samples per batch [default: 32, or the model's fixed batch].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Regression rows (sampled output positions) per layer.
    #[arg(long, default_value_t = CompensateOptions::default().rows)]
    rows: usize,
    /// Ridge strength towards the inherited weights, relative to trace(XᵀX)/d.
    #[arg(long, default_value_t = CompensateOptions::default().lambda)]
    lambda: f64,
    /// Also refit the Conv/Gemm/MatMul nodes that kept every input channel.
    #[arg(long)]
    every_layer: bool,
    /// What a node feeding a residual Add (through BatchNormalization) is fitted to:
    /// `residual`, the original Add's output given the pruned shortcut (also corrects the
    /// error the shortcut carries), or `node`, the original node's own output.
    #[arg(long, value_enum, default_value = "residual")]
    targets: Targets,
    /// Give Conv/Gemm nodes without a bias one, fitted as the intercept.
    #[arg(long)]
    intercept: bool,
    /// Print each refitted layer: kept inputs, regression size, residual before and after.
    #[arg(long)]
    layers: bool,
    /// Seed of the row sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten, next_help_heading = "Runtime")]
    runtime: RuntimeArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::onnx::save::check_writable([args.output.as_path()])?;
    let mut model = Model::load(&args.model)?;
    let original = Model::load(&args.original)?;
    let plan = PlanFile::load(&args.plan)?;
    if args.data.data.is_none() {
        return Err(
            crate::Error::Usage("compensation needs calibration data: pass --data".into()).into(),
        );
    }
    if !(args.lambda > 0.0 && args.lambda.is_finite()) || args.rows == 0 {
        return Err(crate::Error::Usage(format!(
            "--lambda must be positive and --rows at least 1 (got {} and {})",
            args.lambda, args.rows
        ))
        .into());
    }
    let (backend, runtime) = args.runtime.resolve()?;
    let batches = args
        .data
        .calibration(&model, args.batch_size, args.samples)?;
    let rt = RuntimeOptions {
        spinning: Some(false),
        ..runtime
    };
    let settings = CompensateOptions {
        rows: args.rows,
        lambda: args.lambda,
        every_layer: args.every_layer,
        residual: matches!(args.targets, Targets::Residual),
        intercept: args.intercept,
        seed: args.seed,
    };
    let t0 = std::time::Instant::now();
    let r = compensate(
        &mut model,
        &original,
        &plan,
        &batches,
        backend,
        &rt,
        &settings,
        &mut |done, total| eprint!("\rcompensating {done}/{total}"),
    )?;
    eprintln!();
    crate::ir::verify_model(&model)?;
    model.save(&args.output, &Default::default())?;
    if args.layers {
        for l in &r.per_layer {
            say!(
                "  {:<32} inputs {:>4}/{:<4} d {:>5} rows {:>6}  residual {:.4} -> {:.4}",
                l.name,
                l.inputs.0,
                l.inputs.1,
                l.d,
                l.rows,
                l.before,
                l.after
            );
        }
    }
    for s in &r.skipped {
        eprintln!("note: left as is: {s}");
    }
    say!(
        "{} -> {}: {} layer(s) compensated on {} samples ({} rows), relative residual {:.4} -> {:.4}, {:.1} s",
        args.model.display(),
        args.output.display(),
        r.layers,
        r.samples,
        r.rows,
        r.residual_before,
        r.residual_after,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
