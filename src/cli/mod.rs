//! The `lopper` command line, as a library: the binary's `main` and the Python module both
//! run commands through [`main`] (a process's whole life: signals, panics, exit codes) or
//! [`call`] (one command inside a host program: errors returned, stdout optionally captured).
//! Each subcommand parses its options and calls the library; no pruning logic lives here.

use std::cell::RefCell;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};

thread_local! {
    /// The report text of a [`call`] that captures stdout, on the calling thread.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Writes report text to stdout, or to the capture buffer of the current [`call`].
fn write_out(text: std::fmt::Arguments, newline: bool) {
    let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(buf) => {
            std::fmt::Write::write_fmt(buf, text).expect("writing to a String");
            if newline {
                buf.push('\n');
            }
            true
        }
        None => false,
    });
    if !captured {
        if newline {
            println!("{text}");
        } else {
            print!("{text}");
        }
    }
}

/// `println!` for a command's report: captured by [`call`] when asked. Warnings and progress
/// go to stderr with `eprintln!` and are never captured.
macro_rules! say {
    () => { $crate::cli::write_out(format_args!(""), true) };
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), true) };
}

/// `print!` for a command's report (see [`say!`]).
macro_rules! say_part {
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), false) };
}

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

impl From<ExternalData> for crate::onnx::save::ExternalData {
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
    pub fn save_options(&self) -> crate::onnx::SaveOptions {
        crate::onnx::SaveOptions {
            external: self.external_data.into(),
            ..Default::default()
        }
    }
}

/// The warning after timing a written model against its original: a latency ratio above the
/// latency target (`--target latency=R`) by more than 0.05, or, under other budgets, above the
/// MACs ratio by more than 0.10 (the runtime's kernels defeated by the kept widths).
fn slower_than_promised(
    latency: f64,
    macs: f64,
    target: Option<&crate::plan::Budget>,
) -> Option<String> {
    match target {
        Some(crate::plan::Budget::Latency(r)) => (latency > r + 0.05).then(|| {
            format!(
                "the model measures x{latency:.3} of the original's time, above the latency \
                 target {r} (timing noise, or a table that predicts this runtime poorly: \
                 try --latency-search measured)"
            )
        }),
        _ => (latency > macs + 0.10).then(|| {
            format!(
                "the model is slower than its MACs promise: x{latency:.3} of the time for \
                 x{macs:.3} of the MACs (on small inputs much of the time is per-layer \
                 overhead, which removing channels does not reduce); try --target latency=R, \
                 or another --round-to (8, 16)"
            )
        }),
    }
}

/// Runs a parsed command line (stdout not captured; see [`call`]).
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

/// Runs the `lopper` program with `args` (the program name first) as a process's `main` does:
/// signal cleanup of temporary files, panics reported as internal errors, and the exit code
/// returned: 0 success, 2 bad input or failed check (one line on stderr), 3 internal error,
/// 141 closed stdout. Help and version print and exit the process.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    // First, before any thread starts: interrupting signals remove this run's temporary files.
    crate::temp_dir::install_signal_cleanup();
    let args = match Cli::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    // Temporary folders left by earlier runs that were killed outright.
    crate::temp_dir::sweep_stale();
    std::panic::set_hook(Box::new(|info| {
        if crate::runtime::panic_is_contained() {
            // A runtime crashing on a bad model: reported as that runtime's error.
            return;
        }
        let msg = panic_message(info.payload());
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            // The reader went away (`lopper ... | head`): stop quietly, as a shell tool does.
            std::process::exit(141);
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "lopper: internal error{at}: {msg} (this is a bug; please report it with the model)"
        );
    }));
    match std::panic::catch_unwind(|| run(args)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("lopper: {}", one_line(&e));
            2
        }
        Err(_) => 3,
    }
}

/// Why a [`call`] failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or input, or a failed check: the one line `lopper` prints (without the
    /// `lopper: ` prefix); the command line exits 2 on these.
    Error(String),
    /// A panic inside lopper (a bug): its message.
    Internal(String),
}

/// Runs one command, `args` without the program name, inside a host program (the Python
/// module): nothing is installed process-wide (no signal handlers, no panic hook), errors come
/// back as [`Failure`]s, and with `capture` the report lines that would go to stdout come
/// back as the result instead (warnings and progress still go to stderr). Help and version
/// text is returned, not printed.
pub fn call(args: Vec<String>, capture: bool) -> Result<String, Failure> {
    let cli = match Cli::try_parse_from(std::iter::once("lopper".to_string()).chain(args)) {
        Ok(c) => c,
        Err(e) if is_help(&e) => return Ok(e.render().to_string()),
        Err(e) => return Err(Failure::Error(usage_line(&e))),
    };
    if capture {
        CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    }
    let result = std::panic::catch_unwind(|| run(cli));
    let out = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    match result {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(Failure::Error(one_line(&e))),
        Err(p) => Err(Failure::Internal(panic_message(p.as_ref()))),
    }
}

/// An error and its causes on one line; a cause the message already ends with (an I/O error
/// under its path) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.ends_with(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg.replace('\n', " ")
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn is_help(e: &clap::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// clap's error without its usage and hint lines, on one line.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = parts.join(" ");
    msg.strip_prefix("error: ").unwrap_or(&msg).to_string()
}

/// Help and version go to stdout as clap prints them; argument errors become one line on
/// stderr with exit code 2, like every other error.
fn usage_error(e: clap::Error) -> u8 {
    if is_help(&e) {
        e.exit();
    }
    eprintln!("lopper: {}", usage_line(&e));
    2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Budget;

    #[test]
    fn a_latency_target_is_judged_against_itself_not_the_macs() {
        // Under a latency target the MACs ratio promises nothing: 0.52 for target 0.5 is fine
        // though far above the MACs kept.
        assert_eq!(
            slower_than_promised(0.52, 0.2, Some(&Budget::Latency(0.5))),
            None
        );
        let above = slower_than_promised(0.6, 0.2, Some(&Budget::Latency(0.5))).unwrap();
        assert!(above.contains("latency target 0.5"), "{above}");
        assert!(!above.contains("--target latency=R"), "{above}");
        // Other budgets: against the MACs ratio.
        let slow = slower_than_promised(0.7, 0.5, Some(&Budget::Flops(0.5))).unwrap();
        assert!(slow.contains("--target latency=R"), "{slow}");
        assert_eq!(slower_than_promised(0.55, 0.5, None), None);
    }
}
