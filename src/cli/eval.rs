//! `lopper eval`: accuracy, loss and throughput of a model on a dataset, optionally against a
//! reference model on the same inputs.

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::{evaluate, AccuracyReport, EvalOptions, EvalReport};

use super::data_args::DataArgs;
use super::progress;
use super::runtime_args::RuntimeArgs;

/// Arguments of `lopper eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model (a classifier: first output = class scores).
    model: PathBuf,
    #[command(flatten)]
    data: Box<DataArgs>,
    /// Compare with this model on the same inputs (top-1 agreement, output differences).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Samples per run [default: 32, or the batch size the model fixes].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    /// Evaluate N samples spread evenly over the dataset (every len/N-th).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let (backend, runtime) = args.runtime.resolve()?;
    let (dataset, pre) = args.data.open()?;
    let opts = EvalOptions {
        backend,
        runtime,
        batch: args.batch_size.map(|b| b as usize),
        limit: args.limit.map(|l| l as usize),
    };
    let pb = progress::bar("samples");
    let report = evaluate(
        &args.model,
        args.reference.as_deref(),
        dataset,
        &pre,
        &opts,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    );
    pb.finish_and_clear();
    let report = report?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn accuracy_line(a: &AccuracyReport) -> String {
    let top5 = a
        .top5
        .map(|t| format!(", top-5 {}", pct(t)))
        .unwrap_or_default();
    format!(
        "top-1 {} ({}/{}){top5}, loss {:.4}",
        pct(a.top1),
        (a.top1 * a.samples as f64).round() as u64,
        a.samples,
        a.loss
    )
}

fn print_text(r: &EvalReport) {
    say!("model       {}", r.model);
    say!("data        {}", r.data);
    say!(
        "run         {} on {}, batch {}, {} samples, {} classes ({})",
        r.backend,
        r.device,
        r.batch_size,
        r.samples,
        r.classes,
        if r.outputs_are_probabilities {
            "outputs are probabilities"
        } else {
            "softmax of logits"
        }
    );
    match &r.accuracy {
        Some(a) => say!("accuracy    {}", accuracy_line(a)),
        None => say!("accuracy    - (the dataset has no labels)"),
    }
    say!(
        "throughput  {:.1} samples/s (model time {:.2} s, wall {:.2} s)",
        r.throughput,
        r.model_seconds,
        r.wall_seconds
    );
    if let Some(rf) = &r.reference {
        say!("reference   {}", rf.model);
        if let Some(a) = &rf.accuracy {
            say!("  accuracy  {}", accuracy_line(a));
        }
        say!(
            "  agreement top-1 {} of {} samples; |output diff| max {:.3e}, mean {:.3e}",
            pct(rf.agreement.top1_agreement),
            rf.agreement.samples,
            rf.agreement.max_abs_diff,
            rf.agreement.mean_abs_diff
        );
        say!(
            "  speed     {:.1} samples/s (the model is {:.2}x its speed)",
            rf.throughput,
            r.throughput / rf.throughput.max(1e-12)
        );
    }
}
