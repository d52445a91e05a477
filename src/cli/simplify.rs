//! `lopper simplify`: the simplification pipeline (constants, BN folding, Identity/Dropout,
//! dead code), verified, written atomically.

use std::path::PathBuf;

use anyhow::Result;

use crate::analysis::{costs, infer_shapes};
use crate::ir::Model;
use crate::passes::{simplify, SimplifyOptions};

use super::OutputArgs;

/// Arguments of `lopper simplify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    /// Keep BatchNormalization nodes (pruning criteria such as BN scale need them).
    #[arg(long)]
    keep_bn: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    crate::onnx::save::check_writable([args.out.output.as_path()])?;
    let mut model = Model::load(&args.model)?;
    crate::ir::verify_model(&model)?;
    let before = model.graph.node_count();
    let opts = SimplifyOptions {
        keep_batch_norm: args.keep_bn,
        ..Default::default()
    };
    simplify(&mut model, &opts)?;
    // Shape inference doubles as a final consistency check before anything is written.
    let shapes = infer_shapes(&model)?;
    let c = costs(&model, &shapes)?;
    model.save(&args.out.output, &args.out.save_options())?;
    eprintln!(
        "simplified {} -> {}: {} -> {} nodes, {} MACs",
        args.model.display(),
        args.out.output.display(),
        before,
        model.graph.node_count(),
        super::inspect::si(c.macs)
    );
    Ok(())
}
