//! `lopper bench`: interleaved latency of one or more models on one runtime, with the speedup
//! of each against the first and their FLOPs; a table, JSON or CSV.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::bench::{bench, BenchOptions, BenchReport, ModelResult};

use super::inspect::si;
use super::progress;
use super::runtime_args::RuntimeArgs;

/// Arguments of `lopper bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Models to compare; speedups are against the first.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Batch size for inputs with a free batch dimension.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Untimed runs per model first.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Timed runs per model, interleaved (A B, B A, ...): the least, see --precision.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Add rounds until every median is known within this relative half-width (95%
    /// interval), up to --max-runs; 0: exactly --runs.
    #[arg(long, default_value_t = 0.01)]
    precision: f64,
    /// The most timed runs per model when --precision asks for more.
    #[arg(long, default_value_t = 300)]
    max_runs: u32,
    /// Also print the N costliest layers of each model (FLOPs, share, time if ∝ FLOPs).
    #[arg(long, num_args = 0..=1, default_missing_value = "10")]
    layers: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (one row per model) instead of a table.
    #[arg(long)]
    csv: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let (backend, runtime) = args.runtime.resolve()?;
    let opts = BenchOptions {
        backend,
        runtime,
        batch: args.batch_size as usize,
        warmup: args.warmup as usize,
        runs: args.runs as usize,
        precision: (args.precision > 0.0).then_some(args.precision),
        max_runs: args.max_runs as usize,
    };
    let pb = progress::bar("rounds");
    let report = bench(&args.models, &opts, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    });
    pb.finish_and_clear();
    let report = report?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.csv {
        print_csv(&report);
    } else {
        print_table(&report);
        if let Some(n) = args.layers {
            print_layers(&report, n);
        }
    }
    Ok(())
}

/// Short names: file names, or full paths where file names repeat.
fn names(r: &BenchReport) -> Vec<String> {
    let file = |m: &ModelResult| {
        Path::new(&m.model)
            .file_name()
            .map_or(m.model.clone(), |f| f.to_string_lossy().into_owned())
    };
    let mut count: HashMap<String, usize> = HashMap::new();
    for m in &r.models {
        *count.entry(file(m)).or_default() += 1;
    }
    r.models
        .iter()
        .map(|m| {
            let f = file(m);
            if count[&f] > 1 {
                m.model.clone()
            } else {
                f
            }
        })
        .collect()
}

fn ms(s: f64) -> String {
    format!("{:.3}", s * 1e3)
}

fn opt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn print_table(r: &BenchReport) {
    say!(
        "{} on {}, threads {}, {} warm-up + {} interleaved runs per model (spinning off), {} CPUs",
        r.backend,
        r.device,
        r.threads.map_or("default".into(), |t| t.to_string()),
        r.warmup,
        r.models[0].latency.runs,
        r.cpus
    );
    let names = names(r);
    let w = names.iter().map(String::len).max().unwrap_or(5).max(5);
    say!(
        "{:<w$}  {:>5}  {:>10}  {:>6}  {:>10}  {:>10}  {:>11}  {:>8}  {:>13}  {:>9}  {:>10}",
        "model",
        "batch",
        "median ms",
        "noise",
        "p10 ms",
        "p90 ms",
        "samples/s",
        "speedup",
        "speedup 95%",
        "FLOPs",
        "FLOPs ×"
    );
    for (m, name) in r.models.iter().zip(&names) {
        say!(
            "{:<w$}  {:>5}  {:>10}  {:>5.1}%  {:>10}  {:>10}  {:>11.1}  {:>7.3}x  {:>13}  {:>9}  {:>10}",
            name,
            m.batch,
            ms(m.latency.median),
            m.latency.noise * 100.0,
            ms(m.latency.p10),
            ms(m.latency.p90),
            m.throughput,
            m.speedup,
            format!("{:.3}–{:.3}", m.speedup_ci.0, m.speedup_ci.1),
            m.flops.map_or("-".into(), si),
            opt_ratio(m.flops_ratio)
        );
    }
    say!(
        "(noise: half-width of the median's 95% interval; speedup 95%: interval of the per-round \
         ratios against the first model; FLOPs per sample from the cost model, FLOPs × = FLOPs \
         / the first model's)"
    );
}

fn print_csv(r: &BenchReport) {
    say!(
        "model,backend,device,threads,batch,warmup,runs,median_ms,p10_ms,p90_ms,mean_ms,min_ms,\
         samples_per_s,speedup,flops,macs,flops_ratio,noise,speedup_lo,speedup_hi"
    );
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for m in &r.models {
        let model = if m.model.contains([',', '"']) {
            format!("\"{}\"", m.model.replace('"', "\"\""))
        } else {
            m.model.clone()
        };
        say!(
            "{model},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.4},{},{},{},{:.4},{:.4},{:.4}",
            r.backend,
            r.device,
            r.threads.map_or(String::new(), |t| t.to_string()),
            m.batch,
            r.warmup,
            m.latency.runs,
            m.latency.median * 1e3,
            m.latency.p10 * 1e3,
            m.latency.p90 * 1e3,
            m.latency.mean * 1e3,
            m.latency.min * 1e3,
            m.throughput,
            m.speedup,
            opt(m.flops),
            opt(m.macs),
            m.flops_ratio.map_or(String::new(), |v| format!("{v:.4}")),
            m.latency.noise,
            m.speedup_ci.0,
            m.speedup_ci.1
        );
    }
}

fn print_layers(r: &BenchReport, n: usize) {
    let first: HashMap<&str, u64> = r.models[0]
        .costs
        .iter()
        .flat_map(|c| c.nodes.iter().map(|l| (l.name.as_str(), l.flops)))
        .collect();
    for (m, name) in r.models.iter().zip(names(r)) {
        let Some(c) = &m.costs else {
            say!("\n{name}: no per-layer costs (the cost model cannot handle this model)");
            continue;
        };
        let total = c.flops.max(1) as f64;
        let median_ms = m.latency.median * 1e3;
        say!(
            "\n{name}: {} FLOPs per sample, {} ms measured per run; the {} costliest layers:",
            si(c.flops),
            ms(m.latency.median),
            n.min(c.nodes.len())
        );
        let mut by_op: Vec<(&str, u64)> = Vec::new();
        for l in &c.nodes {
            match by_op.iter_mut().find(|(op, _)| *op == l.op_type) {
                Some((_, f)) => *f += l.flops,
                None => by_op.push((&l.op_type, l.flops)),
            }
        }
        by_op.sort_by_key(|&(_, f)| std::cmp::Reverse(f));
        let shares: Vec<String> = by_op
            .iter()
            .filter(|(_, f)| *f > 0)
            .take(6)
            .map(|(op, f)| format!("{op} {:.1}%", *f as f64 / total * 100.0))
            .collect();
        say!("  FLOPs by op: {}", shares.join(", "));
        let mut layers: Vec<_> = c.nodes.iter().collect();
        layers.sort_by_key(|l| std::cmp::Reverse(l.flops));
        let w = layers
            .iter()
            .take(n)
            .map(|l| l.name.len())
            .max()
            .unwrap_or(4)
            .clamp(4, 40);
        say!(
            "  {:<w$}  {:<12} {:>10} {:>7} {:>12} {:>10}",
            "node",
            "op",
            "FLOPs",
            "share",
            "ms if ∝FLOPs",
            "vs first"
        );
        for l in layers.iter().take(n) {
            let share = l.flops as f64 / total;
            let vs = first.get(l.name.as_str()).map_or("-".into(), |&f0| {
                format!("{:.3}", l.flops as f64 / f0.max(1) as f64)
            });
            let node: String = l.name.chars().take(w).collect();
            say!(
                "  {:<w$}  {:<12} {:>10} {:>6.1}% {:>12.3} {:>10}",
                node,
                l.op_type,
                si(l.flops),
                share * 100.0,
                share * median_ms,
                vs
            );
        }
    }
}
