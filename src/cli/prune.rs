//! `lopper prune`: removes channels and writes the smaller model, after checking it with the
//! equivalence oracle (unless `--no-verify`).

use std::path::PathBuf;

use anyhow::{bail, Result};

use lopper::ir::Model;
use lopper::oracle::available_backends;
use lopper::prune::{prune, PruneOptions, Selection};

use super::inspect::si;
use super::OutputArgs;

/// Arguments of `lopper prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    /// Remove this fraction of the lowest-L1-norm channels of every prunable group.
    #[arg(long, conflicts_with = "remove_dead")]
    ratio: Option<f64>,
    /// Remove exactly the channels that contribute nothing or a constant (all-zero filters,
    /// BatchNormalization gamma = 0), compensating constants in the consumers' biases.
    #[arg(long)]
    remove_dead: bool,
    /// Skip the equivalence check before writing.
    #[arg(long)]
    no_verify: bool,
    /// Largest relative output difference the check accepts.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Write the run's report (groups, removed channels, MACs, params, oracle) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let selection = match (args.ratio, args.remove_dead) {
        (Some(r), false) => Selection::Ratio(r),
        (None, true) => Selection::Dead,
        _ => bail!("say what to remove: --ratio R or --remove-dead"),
    };
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
    let report = prune(&mut model, &opts)?;
    if report.removed == 0 {
        let why = if report.blocked == report.groups {
            "every channel group is blocked"
        } else {
            "nothing to remove"
        };
        eprintln!("warning: {why}; writing the model unchanged");
    }
    model.save(&args.out.output, &args.out.save_options())?;
    let ratio = |a: u64, b: u64| if a == 0 { 1.0 } else { b as f64 / a as f64 };
    println!(
        "{} -> {}: {} groups ({} blocked), {} channels removed",
        args.model.display(),
        args.out.output.display(),
        report.groups,
        report.blocked,
        report.removed
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
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
