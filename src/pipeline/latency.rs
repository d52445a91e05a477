//! The latency evaluator of latency targets: gives candidate removals as ratios to the
//! original's latency on a runtime. Each candidate is saved to a scratch folder and timed
//! interleaved with the original in the same run (see [`crate::bench`]: spinning off, warm-up,
//! rounds added until both medians are within 1%), so that the ratio never compares
//! measurements from different moments of a drifting machine. It does not choose anything
//! (the budget selector bisects on its measurements) and keeps no candidate files.

use crate::analysis::channels::ChannelGroups;
use crate::analysis::Shapes;
use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::passes::remove_channels;
use crate::runtime::{BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

/// Times models on one runtime: batch 1, 5 warm-up runs, then 30 to 150 timed runs of the
/// candidate and the original interleaved, until both medians are known within 1%.
pub struct LatencyEvaluator {
    bench: BenchOptions,
    scratch: TempDir,
    timed: usize,
    original: Option<std::path::PathBuf>,
}

impl LatencyEvaluator {
    /// An evaluator timing on `backend` with `runtime` (device, threads); creates its scratch
    /// folder.
    pub fn new(backend: BackendKind, runtime: RuntimeOptions) -> Result<LatencyEvaluator> {
        Ok(LatencyEvaluator {
            bench: BenchOptions {
                precision: Some(0.01),
                max_runs: 150,
                ..BenchOptions::new(backend, runtime, 1, 30)
            },
            scratch: TempDir::new("latency")?,
            timed: 0,
            original: None,
        })
    }

    /// The median latency of `model` as a fraction of the original's, timed together.
    pub fn ratio(&mut self, model: &Model) -> Result<f64> {
        let Some(original) = self.original.clone() else {
            return Err(Error::Usage("the original model has not been timed".into()));
        };
        self.timed += 1;
        let path = self
            .scratch
            .path()
            .join(format!("candidate-{}.onnx", self.timed));
        model.save(&path, &Default::default())?;
        let r = bench(&[original, path.clone()], &self.bench, &mut |_, _| {});
        let _ = std::fs::remove_file(&path);
        let r = r?;
        Ok(r.models[1].latency.median / r.models[0].latency.median.max(f64::MIN_POSITIVE))
    }

    /// Keeps `model` as the original every later ratio is relative to, and checks that it runs.
    pub fn time_original(&mut self, model: &Model) -> Result<()> {
        let path = self.scratch.path().join("original.onnx");
        model.save(&path, &Default::default())?;
        let check = BenchOptions {
            warmup: 1,
            runs: 1,
            precision: None,
            ..self.bench.clone()
        };
        bench(std::slice::from_ref(&path), &check, &mut |_, _| {})?;
        self.original = Some(path);
        Ok(())
    }

    /// Whether the original has been timed.
    pub fn has_original(&self) -> bool {
        self.original.is_some()
    }

    /// The latency of `model` with `classes` removed, as a fraction of the original's (kept
    /// by [`time_original`](Self::time_original), else an error). `model` is not changed.
    pub fn ratio_after(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        classes: &[usize],
    ) -> Result<f64> {
        let mut candidate = model.clone();
        remove_channels(&mut candidate, groups, shapes, classes)?;
        self.ratio(&candidate)
    }
}

/// Times the original when the run has a latency target (before the first round); errors
/// when it has one and no evaluator.
pub fn time_original(
    latency_target: bool,
    evaluator: Option<&mut LatencyEvaluator>,
    model: &Model,
) -> Result<()> {
    if !latency_target {
        return Ok(());
    }
    let Some(ev) = evaluator else {
        return Err(Error::Usage(
            "a latency target needs a runtime to time the model".into(),
        ));
    };
    ev.time_original(model)
}
