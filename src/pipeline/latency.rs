//! The latency evaluator of latency targets: times a model on a runtime (saved to a scratch
//! folder, then the median of interleaved runs, see [`crate::bench`]) and gives candidate
//! removals as ratios to the original's latency, which is timed once. It does not choose
//! anything (the budget selector bisects on its measurements) and keeps no candidate files.

use crate::analysis::channels::ChannelGroups;
use crate::analysis::Shapes;
use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::passes::remove_channels;
use crate::runtime::{BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

/// Times models on one runtime: batch 1, 5 warm-up runs, the median of 30 timed runs.
pub struct LatencyEvaluator {
    bench: BenchOptions,
    scratch: TempDir,
    timed: usize,
    base: Option<f64>,
}

impl LatencyEvaluator {
    /// An evaluator timing on `backend` with `runtime` (device, threads); creates its scratch
    /// folder.
    pub fn new(backend: BackendKind, runtime: RuntimeOptions) -> Result<LatencyEvaluator> {
        Ok(LatencyEvaluator {
            bench: BenchOptions {
                backend,
                runtime,
                batch: 1,
                warmup: 5,
                runs: 30,
            },
            scratch: TempDir::new("latency")?,
            timed: 0,
            base: None,
        })
    }

    /// The median latency of `model` in seconds.
    pub fn time(&mut self, model: &Model) -> Result<f64> {
        self.timed += 1;
        let path = self
            .scratch
            .path()
            .join(format!("candidate-{}.onnx", self.timed));
        model.save(&path, &Default::default())?;
        let r = bench(std::slice::from_ref(&path), &self.bench, &mut |_, _| {});
        let _ = std::fs::remove_file(&path);
        Ok(r?.models[0].latency.median)
    }

    /// Times `model` as the original every later ratio is relative to.
    pub fn time_original(&mut self, model: &Model) -> Result<()> {
        self.base = Some(self.time(model)?);
        Ok(())
    }

    /// Whether the original has been timed.
    pub fn has_original(&self) -> bool {
        self.base.is_some()
    }

    /// The latency of `model` with `classes` removed, as a fraction of the original's (timed
    /// by [`time_original`](Self::time_original), else an error). `model` is not changed.
    pub fn ratio_after(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        classes: &[usize],
    ) -> Result<f64> {
        let Some(base) = self.base else {
            return Err(Error::Usage("the original model has not been timed".into()));
        };
        let mut candidate = model.clone();
        remove_channels(&mut candidate, groups, shapes, classes)?;
        Ok(self.time(&candidate)? / base)
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
