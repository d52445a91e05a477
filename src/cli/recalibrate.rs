//! `lopper recalibrate`: re-estimates a (pruned) model's BatchNormalization running statistics
//! on calibration data ([`crate::pipeline::recalibrate`]) and writes the model atomically.
//! Parses, calls the library, prints; nothing here decides anything.

use std::path::PathBuf;

use crate::ir::Model;
use crate::pipeline::recalibrate::recalibrate;
use crate::runtime::RuntimeOptions;
use clap::Parser;

use super::data_args::DataArgs;
use super::runtime_args::RuntimeArgs;

/// Arguments of `lopper recalibrate`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The model (BatchNormalization kept, e.g. `lopper prune`'s output).
    model: PathBuf,
    /// Where to write the recalibrated model.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten, next_help_heading = "Calibration data")]
    data: DataArgs,
    /// Calibration samples (spread evenly over the dataset; kept in memory).
    #[arg(long, default_value_t = 1024)]
    samples: usize,
    /// Samples per batch [default: 32, or the model's fixed batch].
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten, next_help_heading = "Runtime")]
    runtime: RuntimeArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::onnx::save::check_writable([args.output.as_path()])?;
    let mut model = Model::load(&args.model)?;
    if args.data.data.is_none() {
        return Err(crate::Error::Usage(
            "recalibration needs calibration data: pass --data".into(),
        )
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
    let t0 = std::time::Instant::now();
    let r = recalibrate(&mut model, &batches, backend, &rt, &mut |done, total| {
        eprint!("\rrecalibrating {done}/{total}");
    })?;
    eprintln!();
    crate::ir::verify_model(&model)?;
    model.save(&args.output, &Default::default())?;
    say!(
        "{} -> {}: {} normalisation node(s) recalibrated on {} samples (largest mean shift {:.2} std), {:.1} s",
        args.model.display(),
        args.output.display(),
        r.nodes,
        r.samples,
        r.largest_shift,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
