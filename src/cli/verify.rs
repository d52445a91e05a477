//! `lopper verify`: do two models compute the same outputs? Runs both on seeded random inputs
//! under every available runtime and compares (e.g. a simplified model against its original).
//! With `--plan`, the candidate is a model that plan pruned from the reference: the reference
//! is masked as `lopper prune` checks it, and the values inside the models are compared too.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::ir::Model;
use crate::oracle::{available_backends, compare_with};
use crate::plan::PlanFile;

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
    /// The plan that pruned the candidate from the reference (`lopper prune --save-plan`):
    /// the reference's removed channels are silenced as `lopper prune` checks them, and the
    /// values inside the models are compared too (models whose outputs do not vary with the
    /// input, such as random-weight exports, are verified there).
    #[arg(long, value_name = "PLAN")]
    plan: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let a = Model::load(&args.reference)?;
    let b = Model::load(&args.candidate)?;
    crate::ir::verify_model(&a)?;
    crate::ir::verify_model(&b)?;
    let (a, probes) = match &args.plan {
        Some(p) => {
            let plan = PlanFile::load(p)?;
            crate::pipeline::verify::plan_reference(a, &plan, &b)?
        }
        None => (a, Vec::new()),
    };
    let cmp = compare_with(&a, &b, &probes, &available_backends(), args.samples, 1)?;
    let inside = cmp.inside.as_ref();
    for (k, why) in &cmp.skipped {
        eprintln!("warning: {k} did not compare: {why}");
    }
    let per: Vec<String> = cmp
        .errors
        .iter()
        .map(|(k, e)| format!("{k} {e:.2e}"))
        .collect();
    if let Some((v, e)) = inside.and_then(|i| i.first_over(args.tolerance)) {
        bail!(
            "value '{v}' inside the models differs first: relative error {e:.2e} > {:.0e} (outputs: {})",
            args.tolerance,
            per.join(", ")
        );
    }
    if cmp.max_rel_error > args.tolerance {
        bail!(
            "outputs differ: max relative error {} > {:.0e}",
            per.join(", "),
            args.tolerance
        );
    }
    if !cmp.exercised() {
        bail!(
            "cannot verify: the reference outputs do not vary with the input ({}), so any model computing the same constant would pass{}",
            super::prune::variation_note(cmp.variation),
            if args.plan.is_none() {
                "; for a pruned model, --plan PLAN compares the values inside the models"
            } else {
                ""
            }
        );
    }
    let inside_note = inside
        .map(|i| {
            format!(
                "; {} values inside agree within {:.1e}, {} of them vary with the input",
                i.compared, i.max_rel_error, i.varying
            )
        })
        .unwrap_or_default();
    say!(
        "equivalent{}: max relative error {} (tolerance {:.0e}; {}{inside_note})",
        if cmp.outputs_vary() {
            ""
        } else {
            " inside the models (the outputs do not vary with the input)"
        },
        per.join(", "),
        args.tolerance,
        super::prune::variation_note(cmp.variation)
    );
    Ok(())
}
