//! `lopper verify`: do two models compute the same outputs? Runs both on seeded random inputs
//! under every available runtime and compares (e.g. a simplified model against its original).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::ir::Model;
use crate::oracle::{available_backends, compare};

/// Arguments of `lopper verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reference model.
    reference: PathBuf,
    /// The model to check against it.
    candidate: PathBuf,
    /// Largest relative output difference accepted.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Random input samples.
    #[arg(long, default_value_t = 4)]
    samples: usize,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let a = Model::load(&args.reference)?;
    let b = Model::load(&args.candidate)?;
    crate::ir::verify_model(&a)?;
    crate::ir::verify_model(&b)?;
    let cmp = compare(&a, &b, &available_backends(), args.samples, 1)?;
    for (k, why) in &cmp.skipped {
        eprintln!("warning: {k} did not compare: {why}");
    }
    let per: Vec<String> = cmp
        .errors
        .iter()
        .map(|(k, e)| format!("{k} {e:.2e}"))
        .collect();
    if cmp.max_rel_error > args.tolerance {
        bail!(
            "outputs differ: max relative error {} > {:.0e}",
            per.join(", "),
            args.tolerance
        );
    }
    if !cmp.exercised() {
        bail!(
            "cannot verify: the reference outputs do not vary with the input ({}), so any model computing the same constant would pass",
            super::prune::variation_note(cmp.variation)
        );
    }
    say!(
        "equivalent: max relative error {} (tolerance {:.0e}; {})",
        per.join(", "),
        args.tolerance,
        super::prune::variation_note(cmp.variation)
    );
    Ok(())
}
