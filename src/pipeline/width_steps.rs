//! What `--round-to auto` rounds kept widths to on a runtime, measured once: a chain layer (a
//! 3×3 `Conv` from `c` to `c` channels, 28×28, batch 1) is timed at every width `c` from 40
//! to 72 on the target runtime, interleaved. Runtimes with channel-blocked kernels (ONNX
//! Runtime's NCHWc convolutions, blocks of 8 or 16) run widths on their block faster than the
//! widths beside them; the multiple chosen is the block whose multiples dip most below their
//! neighbours ([`choose`]), or 1 (exact widths) when none does.
//!
//! The result is kept in a small JSON file, one per runtime (backend, device, threads, CPU
//! model) under the user's cache folder, or the file `--width-table` names (read as it is when
//! it exists: a pinned choice). Two processes measuring at once agree: the first file written
//! wins and the other reads it back. This module measures and stores; it does not allocate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, Model, Tensor};
use crate::onnx::proto::{ModelProto, OperatorSetIdProto};
use crate::runtime::{BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

/// The file format this build writes. Formats 1 and 2 have the same fields, but their
/// measured files derived `from` as four multiples (32 channels for 8) and two (16) where this
/// build derives one (8): a cached file of an earlier format is measured again, a pinned one is
/// read as it is.
pub const FORMAT: u32 = 3;

/// The probed widths.
const WIDTHS: std::ops::RangeInclusive<usize> = 40..=72;

/// Candidate multiples, smallest first (each with at least two multiples inside the probed
/// widths).
const MULTIPLES: [usize; 4] = [2, 4, 8, 16];

/// How many times deeper a larger multiple's dip must be than the dip of the smaller one's
/// other multiples to be chosen over it (on an 8-block runtime the multiples of 16 and the
/// other multiples of 8 dip alike; on a 16-block one the other multiples of 8 dip much less).
const MARGIN: f64 = 1.3;

/// The least dip (fraction of time saved at a multiple against its two neighbours) for a
/// block to count: well above the noise of medians, well below the 10–15% ONNX Runtime's
/// blocked convolutions save.
const THRESHOLD: f64 = 0.07;

/// The measured rounding of one runtime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WidthSteps {
    /// [`FORMAT`].
    pub format: u32,
    /// The runtime measured (`ort cpu threads=2 cpu=…`).
    pub runtime: String,
    /// Kept widths are multiples of this (1: exact widths).
    pub multiple: usize,
    /// Groups narrower than this keep exact widths.
    pub from: usize,
    /// Per candidate multiple: how much faster its multiples run than their neighbours (what
    /// [`choose`] compared).
    pub dips: Vec<(usize, f64)>,
    /// Per probed width: the median seconds of one run.
    pub seconds: Vec<(usize, f64)>,
}

/// Where a run finds the rounding: the pinned or cached file and whether it was measured now.
#[derive(Clone, Debug)]
pub struct Found {
    /// The rounding.
    pub steps: WidthSteps,
    /// The file it was read from or written to.
    pub file: PathBuf,
    /// Whether this call timed the probe (false: read from the file).
    pub measured: bool,
    /// Why the measurement could not be stored (a read-only cache folder): it is used for
    /// this run only.
    pub not_stored: Option<String>,
}

/// The multiple the probe's `(width, seconds)` show and each candidate's dip. A width's dip is
/// `1 − t(c) / √(t(c−1)·t(c+1))`: how much faster it runs than its two neighbours, free of the
/// trend (larger convolutions run more MACs per second). A candidate's dip is the mean dip of
/// its multiples (on a block of 8, half the multiples of 4 do not dip, every multiple of 16
/// does); the chosen multiple is the smallest whose dip is at least [`THRESHOLD`], a larger
/// one only when its dip is [`MARGIN`] times that of the chosen one's multiples it does not
/// share (for 16 over 8: 56 against 48 and 64; comparing with all the multiples of 8, as
/// before, missed a 16-block machine whose 56 dipped a little); 1 (exact widths) when none
/// dips.
pub fn choose(seconds: &[(usize, f64)]) -> (usize, Vec<(usize, f64)>) {
    let at = |c: usize| seconds.iter().find(|p| p.0 == c).map(|p| p.1);
    let dips: Vec<(usize, f64)> = seconds
        .iter()
        .filter_map(|&(c, t)| {
            let (lo, hi) = (at(c.checked_sub(1)?)?, at(c + 1)?);
            let around = (lo * hi).sqrt();
            (around > 0.0).then(|| (c, 1.0 - t / around))
        })
        .collect();
    let mean = |v: Vec<f64>| -> Option<f64> {
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let of = |keep: &dyn Fn(usize) -> bool| -> Option<f64> {
        mean(dips.iter().filter(|(c, _)| keep(*c)).map(|p| p.1).collect())
    };
    let mut scores = Vec::new();
    let mut best = 1;
    for m in MULTIPLES {
        let Some(dip) = of(&|c| c % m == 0) else {
            continue;
        };
        scores.push((m, dip));
        // The chosen multiple's widths that are not multiples of `m` (none: no dip).
        let others = of(&|c| c % best == 0 && c % m != 0).unwrap_or(0.0);
        if dip >= THRESHOLD && (best == 1 || dip >= others.max(0.0) * MARGIN) {
            best = m;
        }
    }
    (best, scores)
}

/// The runtime's key: backend, device, threads and the CPU's model name.
pub fn runtime_key(backend: BackendKind, runtime: &RuntimeOptions) -> String {
    format!(
        "{} {} threads={} cpu={}",
        backend.name(),
        runtime.device.name(),
        runtime.threads.map_or("default".into(), |t| t.to_string()),
        cpu_model()
    )
}

/// The first `model name` of /proc/cpuinfo (`unknown` elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The user's cache file for `key`: `$LOPPER_CACHE_DIR`, else `$XDG_CACHE_HOME/lopper`, else
/// `$HOME/.cache/lopper`, then `widths/<key as a file name>.json`. `None` without any.
pub fn cache_file(key: &str) -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("LOPPER_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("lopper")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/lopper")))?;
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '=' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(dir.join("widths").join(format!("{name}.json")))
}

/// The rounding for `backend`/`runtime`: read from `pinned` when it exists, else from the
/// cache (or `pinned`, which is then written) after measuring when it is missing. A file that
/// exists but is not a widths file is an error; one that cannot be written is not (see
/// [`Found::not_stored`]).
pub fn find(
    backend: BackendKind,
    runtime: &RuntimeOptions,
    pinned: Option<&Path>,
) -> Result<Found> {
    let key = runtime_key(backend, runtime);
    let file = match pinned {
        Some(p) => p.to_path_buf(),
        None => cache_file(&key).ok_or_else(|| {
            Error::Usage(
                "--round-to auto: no cache folder (set LOPPER_CACHE_DIR or HOME), or give \
                 --round-to K"
                    .into(),
            )
        })?,
    };
    if file.exists() {
        let steps = load(&file)?;
        if pinned.is_some() || steps.format == FORMAT {
            return Ok(Found {
                steps,
                file,
                measured: false,
                not_stored: None,
            });
        }
        // A cache file of an earlier build, whose `from` followed an older rule.
        let _ = std::fs::remove_file(&file);
    }
    let measured = measure(backend, runtime, &key)?;
    let (steps, not_stored) = match store(&file, &measured) {
        Ok(s) => (s, None),
        Err(e) => (measured, Some(e.to_string())),
    };
    Ok(Found {
        steps,
        file,
        measured: true,
        not_stored,
    })
}

/// Reads a widths file; errors name the file.
pub fn load(path: &Path) -> Result<WidthSteps> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let s: WidthSteps = serde_json::from_slice(&text).map_err(|e| {
        Error::Usage(format!(
            "{}: not a lopper widths file ({e})",
            path.display()
        ))
    })?;
    if !(1..=FORMAT).contains(&s.format) || s.multiple == 0 || s.multiple > 1024 {
        return Err(Error::Usage(format!(
            "{}: not a lopper widths file of format 1 to {FORMAT} with a multiple from 1 to 1024",
            path.display()
        )));
    }
    Ok(s)
}

/// Writes `steps` to `path` unless a file is already there (another process measured at the
/// same time): then that file's content is returned, so that both runs round alike.
fn store(path: &Path, steps: &WidthSteps) -> Result<WidthSteps> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Unique per process and call: threads of one process (the library's callers) may store
    // at once too.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{call}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("widths"),
        std::process::id()
    ));
    let text = serde_json::to_vec_pretty(steps).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    // A hard link never replaces an existing file: the first writer wins.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(steps.clone()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Times the probe at every width and chooses.
fn measure(backend: BackendKind, runtime: &RuntimeOptions, key: &str) -> Result<WidthSteps> {
    let scratch = TempDir::new("widths")?;
    let mut paths = Vec::new();
    for c in WIDTHS {
        let path = scratch.path().join(format!("conv-{c}.onnx"));
        probe(c).save(&path, &Default::default())?;
        paths.push(path);
    }
    let opts = BenchOptions {
        warmup: 3,
        precision: Some(0.02),
        max_runs: 40,
        ..BenchOptions::new(
            backend,
            RuntimeOptions {
                spinning: Some(false),
                ..*runtime
            },
            1,
            12,
        )
    };
    let report = bench(&paths, &opts, &mut |_, _| {})?;
    let seconds: Vec<(usize, f64)> = WIDTHS
        .zip(report.models.iter().map(|m| m.latency.median))
        .collect();
    let (multiple, dips) = choose(&seconds);
    Ok(WidthSteps {
        format: FORMAT,
        runtime: key.to_string(),
        multiple,
        // Groups of one block or more: every convolution of ONNX Runtime's blocked layout
        // needs whole blocks of input channels (below one block it reads the plain layout),
        // and one that has more falls out of it with layout reorders on each side; a grouped
        // one needs whole blocks per group. With a block of 16 (AVX-512), groups of 16 to 31
        // channels left exact made ResNet-56 at FLOPs ×0.5 run at ×0.60 of its original's
        // time against ×0.51 rounded, regnet_x_400mf (16 channels per convolution group)
        // ×0.70 against ×0.55 (Intel Xeon, batch 1, one `lopper bench`).
        from: multiple * usize::from(multiple > 1),
        dips,
        seconds,
    })
}

/// The probe model: `x [1, c, 28, 28]` through a 3×3 `Conv` (pads 1) to `c` channels.
fn probe(c: usize) -> Model {
    let mut g = Graph::new();
    let x = crate::ops::build::add_input(&mut g, "x", DType::F32, &[1, c, 28, 28]);
    let n = c * c * 9;
    let values: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let w = g.add_initializer("w", Tensor::from_f32(vec![c, c, 3, 3], &values));
    use crate::ir::graph::attr_ints;
    let node = g.add_node(
        "conv",
        "Conv",
        &[Some(x), Some(w)],
        &["y"],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let y = g.node(node).outputs[0].expect("add_node gives every output a value");
    crate::ops::build::declare(&mut g, y, DType::F32, &[1, c, 28, 28]);
    g.outputs.push(y);
    Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(13),
            }],
            producer_name: Some("lopper width probe".into()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of a runtime whose fast kernels take widths in blocks of `block` channels
    /// (other widths run 15% slower, as ONNX Runtime's blocked convolutions do), cheaper per
    /// MAC as widths grow, with a ±2% wobble.
    fn blocked(block: usize) -> Vec<(usize, f64)> {
        WIDTHS
            .map(|c| {
                let slow = if c % block == 0 { 1.0 } else { 1.15 };
                let wobble = 1.0 + 0.02 * (((c * 7) % 5) as f64 - 2.0) / 2.0;
                (c, (c as f64).powf(1.6) * 1e-9 * slow * wobble)
            })
            .collect()
    }

    #[test]
    fn the_block_of_a_blocked_runtime_is_found() {
        for block in [4, 8, 16] {
            let (m, dips) = choose(&blocked(block));
            assert_eq!(m, block, "{dips:?}");
        }
    }

    #[test]
    fn a_runtime_without_blocks_keeps_exact_widths() {
        let (m, dips) = choose(&blocked(1));
        assert_eq!(m, 1, "{dips:?}");
        assert!(dips.iter().all(|&(_, d)| d < THRESHOLD), "{dips:?}");
    }

    /// What ONNX Runtime 1.31 measured on a 2-core Intel Xeon with AVX-512 (default threads,
    /// 28×28): 48 and 64 dip by 26% and 19%, 56 by 7%, and multiples of 4 dip too (44 by
    /// 21%). Its blocks are 16 channels; comparing 16 with every multiple of 8 (the rule
    /// before) chose 8: 22.5% against 17.4%, under the margin.
    #[test]
    fn a_measured_sixteen_block_staircase_gives_sixteen() {
        let us = [
            308.2, 329.1, 336.5, 346.0, 284.7, 374.3, 369.2, 386.9, 287.9, 390.2, 399.5, 417.1,
            429.7, 436.5, 455.9, 482.7, 459.2, 508.9, 508.6, 533.6, 452.0, 540.8, 554.1, 574.1,
            475.9, 601.9, 623.9, 627.9, 705.4, 651.6, 662.4, 698.3, 705.1,
        ];
        let seconds: Vec<(usize, f64)> = WIDTHS.zip(us.iter().map(|t| t * 1e-6)).collect();
        let (m, dips) = choose(&seconds);
        assert_eq!(m, 16, "{dips:?}");
    }

    /// What ONNX Runtime 1.31 measured on a 2-core AMD EPYC (2 threads, 28×28): 56 and 64 run
    /// faster than their neighbours, 44 slower.
    #[test]
    fn a_measured_staircase_gives_eight() {
        let ms = [
            0.284, 0.261, 0.265, 0.291, 0.36, 0.295, 0.302, 0.32, 0.307, 0.334, 0.347, 0.346,
            0.333, 0.36, 0.37, 0.384, 0.356, 0.43, 0.445, 0.448, 0.439, 0.477, 0.488, 0.49, 0.438,
            0.527, 0.529, 0.541, 0.619, 0.581, 0.579, 0.596, 0.614,
        ];
        let seconds: Vec<(usize, f64)> = WIDTHS.zip(ms.iter().map(|t| t * 1e-3)).collect();
        let (m, dips) = choose(&seconds);
        assert_eq!(m, 8, "{dips:?}");
    }

    #[test]
    fn files_round_trip_and_the_first_writer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/w.json");
        let (multiple, dips) = choose(&blocked(8));
        let a = WidthSteps {
            format: FORMAT,
            runtime: "ort cpu threads=2 cpu=x".into(),
            multiple,
            from: 32,
            dips,
            seconds: blocked(8),
        };
        assert_eq!(store(&path, &a).unwrap(), a);
        let b = WidthSteps {
            multiple: 16,
            ..a.clone()
        };
        // Another process measured 16 meanwhile: the file's 8 is what both use.
        assert_eq!(store(&path, &b).unwrap(), a);
        assert_eq!(load(&path).unwrap(), a);
        std::fs::write(&path, b"{}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("w.json") && e.contains("not a lopper widths file"),
            "{e}"
        );
    }

    #[test]
    fn the_probe_is_a_valid_model() {
        let m = probe(48);
        crate::ir::verify_model(&m).unwrap();
        let shapes = crate::analysis::infer_shapes(&m).unwrap();
        let c = crate::analysis::costs(&m, &shapes).unwrap();
        assert_eq!(c.macs, 48 * 48 * 9 * 28 * 28);
    }
}
