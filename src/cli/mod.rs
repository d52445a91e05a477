//! Subcommands of the `lopper` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod compensate;
mod compress;
mod data_args;
mod eval;
mod groups;
mod inspect;
mod progress;
mod prune;
mod recalibrate;
mod runtime_args;
mod selection_args;
mod simplify;
mod train;
mod verify;

/// lopper: structured channel pruning for ONNX models.
#[derive(Parser, Debug)]
#[command(name = "lopper", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a model's interface, op histogram, parameters, MACs and per-layer costs.
    Inspect(inspect::Args),
    /// Simplify a model: fold constants and BatchNormalization, drop Identity/Dropout and dead code.
    Simplify(simplify::Args),
    /// Evaluate a classifier on a dataset: top-1/top-5, loss, throughput; --reference compares.
    Eval(eval::Args),
    /// Benchmark models' latency (interleaved runs), speedup vs the first, FLOPs.
    Bench(bench::Args),
    /// List the channel dependency groups: producers, consumers, channels, blocking reasons.
    Groups(groups::Args),
    /// Remove channels (--ratio, --target flops=R, --threshold, --remove-dead, --plan) ranked
    /// by a criterion, and write the smaller model, verified.
    Prune(Box<prune::Args>),
    /// Original to shipped model in one command: evaluate, prune, recover (bn, finetune, kd),
    /// evaluate each stage, verify, time; resumable (--resume), --report JSON.
    Compress(Box<compress::Args>),
    /// Check that two models compute the same outputs on random inputs.
    Verify(verify::Args),
    /// Re-estimate BatchNormalization running statistics on calibration data (a pruned
    /// model's cheapest recovery: no gradients).
    Recalibrate(Box<recalibrate::Args>),
    /// Refit the layers of a pruned model that lost input channels (least squares on
    /// calibration data, no gradients) to reproduce the original's outputs.
    Compensate(Box<compensate::Args>),
    /// Train a classifier with a compiled train step in ONNX Runtime: schedules, augmentation,
    /// sparsity regularizers, per-epoch evaluation and resumable checkpoints.
    Train(Box<train::Args>),
    /// Fine-tune a pruned model (train with fine-tuning defaults), optionally distilling from
    /// the original with --teacher.
    Finetune(Box<train::Args>),
}

/// Where tensor data goes when writing a model.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExternalData {
    /// Like the input model; external automatically above 2 GB.
    Auto,
    /// Always write weights to `<output>.data`.
    Always,
    /// Always inline.
    Never,
}

impl From<ExternalData> for lopper::onnx::save::ExternalData {
    fn from(e: ExternalData) -> Self {
        match e {
            ExternalData::Auto => Self::Auto,
            ExternalData::Always => Self::Always,
            ExternalData::Never => Self::Never,
        }
    }
}

/// Output options shared by commands that write a model.
#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// Output model path.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Where tensor data goes.
    #[arg(long, value_enum, default_value = "auto")]
    pub external_data: ExternalData,
}

impl OutputArgs {
    /// Save options for the library.
    pub fn save_options(&self) -> lopper::onnx::SaveOptions {
        lopper::onnx::SaveOptions {
            external: self.external_data.into(),
            ..Default::default()
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Simplify(a) => simplify::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Groups(a) => groups::run(a),
        Command::Prune(a) => prune::run(*a),
        Command::Compress(a) => compress::run(*a),
        Command::Verify(a) => verify::run(a),
        Command::Recalibrate(a) => recalibrate::run(*a),
        Command::Compensate(a) => compensate::run(*a),
        Command::Train(a) => train::run(*a, false),
        Command::Finetune(a) => train::run(*a, true),
    }
}
