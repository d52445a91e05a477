//! The latency evaluator of latency targets. By default ([`LatencySearch::Table`]) it gives
//! the round's [`LatencyModel`]: the model's layers timed alone at sampled widths (a
//! [`LatencyTable`], kept in `--latency-table FILE` when given, so that a pinned table gives
//! the same choice every run) and a line from their sum to whole-model latency, fitted on the
//! model and two uniformly pruned copies; the allocation then searches on the prediction and
//! confirms its choice with one measurement. Measurements give candidate removals as ratios
//! to the original's latency: each candidate is saved to a scratch folder and timed
//! interleaved with the original in the same run (see [`crate::bench`]: spinning off,
//! warm-up, rounds added until both medians are within 1%), so that the ratio never compares
//! measurements from different moments of a drifting machine. It does not choose anything
//! (the budget selector searches) and keeps no candidate files.

use std::path::PathBuf;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::latency_model::{fit, LatencyModel};
use crate::analysis::{MaskedCost, Shapes};
use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::passes::remove_channels;
use crate::runtime::{BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

use super::latency_table::{time_layers, timed_layers, Calibration, LatencyTable};

/// How a latency target judges candidate removals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatencySearch {
    /// Predicted by a per-layer latency table, the choice confirmed by one measurement:
    /// reproducible (the same table, the same choice).
    #[default]
    Table,
    /// Bisection on whole-model measurements (at most 10): no table, but the choice follows
    /// the machine's noise.
    Measured,
}

/// Keep fractions of the uniformly pruned copies a model's calibration times.
const CALIBRATION_KEEPS: [f64; 2] = [0.75, 0.5];

/// Times models on one runtime: batch 1, 5 warm-up runs, then 30 to 150 timed runs of the
/// candidate and the original interleaved, until both medians are known within 1%.
pub struct LatencyEvaluator {
    bench: BenchOptions,
    scratch: TempDir,
    timed: usize,
    original: Option<std::path::PathBuf>,
    search: LatencySearch,
    table: LatencyTable,
    table_path: Option<PathBuf>,
    /// Whether measurements correct the table: without a file, or while this run builds the
    /// model's entries (a table that had them is used as it is).
    learning: bool,
}

impl LatencyEvaluator {
    /// An evaluator timing on `backend` with `runtime` (device, threads); creates its scratch
    /// folder.
    pub fn new(backend: BackendKind, runtime: RuntimeOptions) -> Result<LatencyEvaluator> {
        let bench = BenchOptions {
            precision: Some(0.01),
            max_runs: 150,
            ..BenchOptions::new(backend, runtime, 1, 30)
        };
        let table = LatencyTable::new(&runtime_key(&bench));
        Ok(LatencyEvaluator {
            bench,
            scratch: TempDir::new("latency")?,
            timed: 0,
            original: None,
            search: LatencySearch::default(),
            table,
            table_path: None,
            learning: true,
        })
    }

    /// Times runs of `batch` images (1 by default) instead of one; call before
    /// [`with_search`](Self::with_search), since the table's runtime key names the batch.
    /// Models with a fixed batch dimension other than `batch` fail when timed.
    pub fn with_batch(mut self, batch: usize) -> LatencyEvaluator {
        self.bench.batch = batch.max(1);
        self.table = LatencyTable::new(&runtime_key(&self.bench));
        self
    }

    /// Sets how candidates are judged, and the file the latency table is read from (when it
    /// exists) and saved to (when timing added entries). Errors name a file that is not a
    /// table for this runtime.
    pub fn with_search(
        mut self,
        search: LatencySearch,
        table: Option<PathBuf>,
    ) -> Result<LatencyEvaluator> {
        self.search = search;
        if let Some(p) = &table {
            if let Some(t) = LatencyTable::load(p, &self.table.runtime)? {
                self.table = t;
            }
        }
        self.table_path = table;
        Ok(self)
    }

    /// The latency model of `model` (`groups` and `shapes` computed on it), timing the layers
    /// and calibrating it where the table lacks them (then saving the table to its file);
    /// `None` with [`LatencySearch::Measured`] or when no layer can be timed. `say` is told
    /// what is being timed.
    pub fn latency_model(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        say: &mut dyn FnMut(&str),
    ) -> Result<Option<LatencyModel>> {
        if self.search == LatencySearch::Measured {
            return Ok(None);
        }
        let layers = timed_layers(model, shapes, self.bench.batch);
        if layers.is_empty() {
            return Ok(None);
        }
        let layer_bench = BenchOptions {
            warmup: 3,
            precision: Some(0.02),
            max_runs: 60,
            ..BenchOptions::new(self.bench.backend, self.bench.runtime, self.bench.batch, 10)
        };
        let mut changed =
            time_layers(&mut self.table, model, shapes, &layers, &layer_bench, say)? > 0;
        let lm = LatencyModel::new(
            layers
                .iter()
                .filter_map(|l| Some((l.node, self.table.layers.get(&l.key)?.clone())))
                .collect(),
        );
        let key = crate::plan::fingerprint(model);
        self.learning = self.table_path.is_none() || changed;
        let cal = match self.table.models.get(&key) {
            Some(c) => c.clone(),
            None => {
                self.learning = true;
                say("calibrating the latency table on the whole model");
                let c = self.calibrate(model, groups, shapes, &lm)?;
                self.table.models.insert(key, c.clone());
                changed = true;
                c
            }
        };
        let (a, b) = cal.line();
        lm.a.set(a);
        lm.b.set(b);
        if let (true, Some(p)) = (changed, &self.table_path) {
            self.table.save(p)?;
        }
        Ok(Some(lm))
    }

    /// Times `model` and its uniformly pruned copies ([`CALIBRATION_KEEPS`]) in one
    /// interleaved run and fits the line from `lm`'s layer sum to their medians.
    fn calibrate(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        lm: &LatencyModel,
    ) -> Result<Calibration> {
        let cost = MaskedCost::new(model, groups, shapes)?;
        let mut sums = vec![lm.layer_sum(&cost, &[])];
        let mut paths = vec![self.scratch.path().join("calibrate-1.onnx")];
        model.save(&paths[0], &Default::default())?;
        for keep in CALIBRATION_KEEPS {
            let classes = uniform_classes(groups, keep);
            if classes.is_empty() {
                continue;
            }
            let mut removed = vec![false; cost.classes()];
            for &c in &classes {
                removed[c] = true;
            }
            let mut copy = model.clone();
            if remove_channels(&mut copy, groups, shapes, &classes).is_err() {
                continue;
            }
            sums.push(lm.layer_sum(&cost, &removed));
            let path = self.scratch.path().join(format!("calibrate-{keep}.onnx"));
            copy.save(&path, &Default::default())?;
            paths.push(path);
        }
        let report = bench(&paths, &self.bench, &mut |_, _| {});
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        let points: Vec<(f64, f64)> = sums
            .into_iter()
            .zip(report?.models.iter().map(|m| m.latency.median))
            .collect();
        let (a, b) = fit(&points).ok_or_else(|| {
            Error::Usage("the latency table's layers took no measurable time".into())
        })?;
        Ok(Calibration {
            points,
            a,
            b,
            corrections: Vec::new(),
        })
    }

    /// Learns from a measurement of a candidate removal (`classes` of `model`, `cost` and
    /// `lm` built on it): when the measured ratio is more than the timing noise (0.02) away
    /// from `lm`'s prediction, the candidate becomes a correction point of the model's
    /// calibration, `lm`'s line is updated, and the table saved to its file. Only while
    /// learning: without a table file, or in the run that added the model's entries to it; a
    /// file that already had them is used as it is, so that it keeps giving the same choice.
    pub fn correct(
        &mut self,
        model: &Model,
        lm: &LatencyModel,
        cost: &MaskedCost,
        classes: &[usize],
        measured: f64,
    ) -> Result<()> {
        let mut removed = vec![false; cost.classes()];
        for &c in classes {
            if let Some(r) = removed.get_mut(c) {
                *r = true;
            }
        }
        let agrees = (lm.ratio(cost, &removed) - measured).abs() <= crate::plan::MEASURED_TOLERANCE;
        if agrees || !self.learning {
            return Ok(());
        }
        let Some(cal) = self.table.models.get_mut(&crate::plan::fingerprint(model)) else {
            return Ok(());
        };
        let Some(&(_, t0)) = cal.points.first() else {
            return Ok(());
        };
        cal.corrections
            .push((lm.layer_sum(cost, &removed), measured * t0));
        let (a, b) = cal.line();
        lm.a.set(a);
        lm.b.set(b);
        if let Some(p) = &self.table_path {
            self.table.save(p)?;
        }
        Ok(())
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

/// The table's runtime key: backend, device, threads and batch.
fn runtime_key(b: &BenchOptions) -> String {
    format!(
        "{} {} threads={} batch={}",
        b.backend.name(),
        b.runtime.device.name(),
        b.runtime
            .threads
            .map_or("default".into(), |t| t.to_string()),
        b.batch
    )
}

/// Classes removing about `1 − keep` of every prunable group (the first classes; widths
/// rounded to multiples of 8 in groups of 16 or more, as `--round-to auto` rounds on ONNX
/// Runtime), leaving no tensor empty.
fn uniform_classes(groups: &ChannelGroups, keep: f64) -> Vec<usize> {
    let mut out = Vec::new();
    for g in groups.groups.iter().filter(|g| g.prunable()) {
        let n = g.classes.len();
        let kept = if n >= 16 {
            (((n as f64 * keep) / 8.0).round() as usize).max(1) * 8
        } else {
            ((n as f64 * keep).round() as usize).max(1)
        };
        out.extend(g.classes.iter().take(n.saturating_sub(kept)).copied());
    }
    let mut c = groups.take_without_emptying(out);
    c.sort_unstable();
    c
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
