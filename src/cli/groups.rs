//! `lopper groups`: the channel dependency groups of a model, with their producers, consumers,
//! members, channel counts, and why a group is blocked.

use std::path::PathBuf;

use anyhow::Result;

use crate::ir::Model;
use crate::prune::analyse;

/// Arguments of `lopper groups`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// Print JSON (every group with sources, consumers, members and blocking reasons).
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let mut model = Model::load(&args.model)?;
    crate::ir::verify_model(&model)?;
    let groups = analyse(&mut model)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&groups.groups)?);
        return Ok(());
    }
    let prunable = groups.groups.iter().filter(|g| g.prunable()).count();
    say!(
        "{}: {} groups, {} prunable, {} blocked",
        args.model.display(),
        groups.groups.len(),
        prunable,
        groups.groups.len() - prunable
    );
    let widths = groups.group_widths();
    for g in &groups.groups {
        // Classes several channels wide (whole convolution groups): "2 × 16" channels.
        let channels = match widths[g.id] {
            1 => g.channels.to_string(),
            w => format!("{} × {w}", g.channels),
        };
        let srcs: Vec<String> = g
            .sources
            .iter()
            .filter(|s| !s.constant)
            .map(|s| format!("{} ({})", s.node_name, s.op))
            .collect();
        let status = if g.prunable() {
            "prunable".to_string()
        } else if g.blocked.is_empty() {
            "single channel".to_string()
        } else {
            format!("blocked: {}", g.blocked.join("; "))
        };
        say!(
            "group {:>3}  {:>7} ch  {:<60}  {status}",
            g.id,
            channels,
            shorten(&srcs.join(", "), 60)
        );
        if !g.consumers.is_empty() {
            say!(
                "            consumers: {}",
                shorten(&g.consumers.join(", "), 100)
            );
        }
    }
    Ok(())
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}
