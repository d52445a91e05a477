//! The latency evaluator of latency targets. It gives the round's [`Predictor`]. By default
//! ([`LatencySearch::Table`]) that is a [`LatencyModel`]: the model's layers timed alone at
//! sampled widths and a line from their sum to whole-model latency, fitted on the model and
//! two uniformly pruned copies. With [`LatencySearch::Curve`] it is a [`MacsCurve`]:
//! candidates are removed in the FLOPs target's order and their latency predicted from their
//! MACs, through the whole-model measurements made so far. Either is kept in a
//! [`LatencyTable`] (`--latency-table FILE` when given, so that a pinned table gives the same
//! choice every run); the allocation searches on the prediction and confirms its choice by
//! measurement. Measurements give candidate removals as ratios
//! to the original's latency: each candidate is saved to a scratch folder and timed
//! interleaved with the original in the same run (see [`crate::bench`]: spinning off,
//! warm-up, rounds added until both medians are within 1%), so that the ratio never compares
//! measurements from different moments of a drifting machine. It does not choose anything
//! (the budget selector searches) and keeps no candidate files.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::analysis::channels::ChannelGroups;
use crate::analysis::latency_model::{fit, LatencyModel, MacsCurve};
use crate::analysis::{MaskedCost, Shapes};
use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::passes::remove_channels;
use crate::runtime::{BackendKind, RuntimeOptions};
use crate::temp_dir::TempDir;

use super::latency_table::{time_layers, timed_layers, Calibration, LatencyTable, Rounding};
use super::reporter::Reporter;

/// How a latency target judges candidate removals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatencySearch {
    /// Predicted by a per-layer latency table, the choice confirmed by measurement:
    /// reproducible (the same table, the same choice).
    #[default]
    Table,
    /// Candidates in the FLOPs target's order, their latency predicted from their MACs
    /// through the whole-model measurements made so far ([`MacsCurve`]), the choice confirmed
    /// by measurement: reproducible (the measurements are kept in the table).
    Curve,
    /// Bisection on whole-model measurements (at most 10): no table, but the choice follows
    /// the machine's noise.
    Measured,
}

/// What predicts a latency target's candidates (see [`LatencySearch`]).
#[derive(Debug)]
pub enum Predictor {
    /// Per-layer latency surfaces and a calibration line ([`LatencySearch::Table`]).
    Layers(LatencyModel),
    /// MACs and whole-model measurements ([`LatencySearch::Curve`]).
    Curve(MacsCurve),
}

impl Predictor {
    /// Predicted latency after removing the classes marked `true` (`cost` built on the model
    /// the predictor was made for), as a fraction of the original's.
    pub fn ratio(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        match self {
            Predictor::Layers(lm) => lm.ratio(cost, removed),
            Predictor::Curve(c) => c.ratio(cost, removed),
        }
    }
}

/// How much slower than its quietest median (see `LatencyEvaluator::quiet`) the original may
/// run in a measurement of a candidate before the machine is taken as disturbed.
const DISTURBED: f64 = 1.10;

/// Most timings of one candidate while the machine is disturbed; the least disturbed one (the
/// original's fastest median) is kept.
const DISTURBED_TRIES: usize = 3;

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
    /// Whether models are timed with their shortcuts lowered, as they will be written.
    lower: bool,
    /// The original's quietest median latency in seconds over this evaluator's measurements:
    /// a measurement whose original runs more than [`DISTURBED`] times slower than it ran on
    /// a disturbed machine (another load competing for the cores or the cache; that slows the
    /// original, with its larger working set, more than the candidate) and is repeated.
    quiet: Option<f64>,
    /// Timings repeated on a disturbed machine, and to settle a surprise, since the last
    /// [`take_repeats`](Self::take_repeats).
    repeats: (usize, usize),
    /// The original's fingerprint (see [`time_original`](Self::time_original)).
    original_key: Option<String>,
    /// The table key (fingerprint as timed) of the model the last
    /// [`predictor`](Self::predictor) was made for: where its measurements are learned.
    calibrated: Option<String>,
    /// How the search rounds widths: the grid and the calibration copies keep to it.
    rounding: Rounding,
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
            quiet: None,
            repeats: (0, 0),
            original: None,
            search: LatencySearch::default(),
            table,
            table_path: None,
            learning: true,
            lower: false,
            original_key: None,
            calibrated: None,
            rounding: Rounding::default(),
        })
    }

    /// Samples layers and calibrates at widths rounded like the search's
    /// (`--round-to`: [`Selection::rounding`](super::Selection::rounding)); by default
    /// multiples of 8 from 16 channels.
    pub fn with_rounding(mut self, rounding: Rounding) -> LatencyEvaluator {
        self.rounding = rounding;
        self
    }

    /// Times runs of `batch` images (1 by default) instead of one; call before
    /// [`with_search`](Self::with_search), since the table's runtime key names the batch.
    /// Models with a fixed batch dimension other than `batch` fail when timed.
    pub fn with_batch(mut self, batch: usize) -> LatencyEvaluator {
        self.bench.batch = batch.max(1);
        self.table = LatencyTable::new(&runtime_key(&self.bench));
        self
    }

    /// Times candidates and calibration copies as they will be written: with their
    /// subsampling shortcuts lowered ([`crate::passes::lower_shortcuts`]) when `lower` (what
    /// `lopper prune` and `compress` write unless `--keep-shortcuts`). Off by default: the
    /// library's pipeline does not lower, its caller does ([`super::lower`]).
    pub fn with_lowering(mut self, lower: bool) -> LatencyEvaluator {
        self.lower = lower;
        self
    }

    /// `model` in the form it is timed in: lowered when the evaluator lowers (as it is where
    /// lowering fails; the lower stage then fails on the written model). Borrowed, not
    /// copied, when there is nothing to lower.
    fn timed_form<'m>(&self, model: &'m Model) -> Cow<'m, Model> {
        if !self.lower {
            return Cow::Borrowed(model);
        }
        let mut m = model.clone();
        match crate::passes::lower_shortcuts(&mut m) {
            Ok(done) if done.count > 0 => Cow::Owned(m),
            _ => Cow::Borrowed(model),
        }
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

    /// The predictor of the search over `model`'s removals (`groups` and `shapes` computed on
    /// it; `kept`: its MACs as a fraction of the original's): `None` with
    /// [`LatencySearch::Measured`] or when the table search has no layer to time. `say` is
    /// told what is being timed, and the table's rounds as they are done.
    pub fn predictor(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        kept: f64,
        say: &mut dyn Reporter,
    ) -> Result<Option<Predictor>> {
        Ok(match self.search {
            LatencySearch::Measured => None,
            LatencySearch::Table => self
                .latency_model(model, groups, shapes, say)?
                .map(Predictor::Layers),
            LatencySearch::Curve => Some(Predictor::Curve(self.macs_curve(model, kept)?)),
        })
    }

    /// The MACs curve of `model` (keeping `kept` of the original's MACs) through the table's
    /// measurements of it. A model the table does not know gets an empty entry (saved to the
    /// table's file): this run learns its points, a later run with the file uses them as they
    /// are.
    fn macs_curve(&mut self, model: &Model, kept: f64) -> Result<MacsCurve> {
        let key = crate::plan::fingerprint(&self.timed_form(model));
        let known = self.table.curves.get(&key).cloned();
        self.learning = self.table_path.is_none() || known.is_none();
        if known.is_none() {
            self.table.curves.insert(key.clone(), Vec::new());
            if let Some(p) = &self.table_path {
                self.table.save(p)?;
            }
        }
        self.calibrated = Some(key);
        Ok(MacsCurve::new(known.unwrap_or_default(), kept))
    }

    /// Learns from a measurement of a candidate removal (`classes` of the model `predictor`
    /// was made for, `cost` built on it): see [`correct`](Self::correct) for a latency model;
    /// a MACs curve takes the point when it is more than the timing noise (0.02) off the
    /// prediction, under the same rule (only while learning).
    pub fn learn(
        &mut self,
        predictor: &Predictor,
        cost: &MaskedCost,
        classes: &[usize],
        measured: f64,
    ) -> Result<()> {
        let curve = match predictor {
            Predictor::Layers(lm) => return self.correct(lm, cost, classes, measured),
            Predictor::Curve(c) => c,
        };
        let removed = cost.flags(classes);
        let m = curve.macs(cost, &removed);
        let agrees = !surprising(measured, curve.at(m));
        if agrees || !self.learning {
            return Ok(());
        }
        curve.points.borrow_mut().push((m, measured));
        if let Some(points) = self
            .calibrated
            .as_ref()
            .and_then(|k| self.table.curves.get_mut(k))
        {
            points.push((m, measured));
        }
        if let Some(p) = &self.table_path {
            self.table.save(p)?;
        }
        Ok(())
    }

    /// The latency model of `model` (`groups` and `shapes` computed on it), timing the layers
    /// and calibrating it where the table lacks them (then saving the table to its file);
    /// `None` with [`LatencySearch::Measured`] or when no layer can be timed. `model` may be
    /// the original with whole branches already dropped: its predictions are then scaled by
    /// its measured latency relative to the original ([`LatencyModel::scale`]), so that they
    /// are fractions of the original's, like the target. `say` is told what is being timed,
    /// and the table's rounds as they are done.
    pub fn latency_model(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        say: &mut dyn Reporter,
    ) -> Result<Option<LatencyModel>> {
        if self.search != LatencySearch::Table {
            return Ok(None);
        }
        let layers = timed_layers(model, shapes, self.bench.batch);
        if layers.is_empty() {
            return Ok(None);
        }
        // All layers' grids run interleaved, so a slow spell falls on every layer alike and
        // 30 rounds give medians within 1-2% of another table's (ResNet-50: per-layer spread
        // between fresh tables 0.009-0.022 in 30 rounds, 0.054-0.089 timed layer by layer).
        let layer_bench = BenchOptions {
            warmup: 3,
            precision: Some(0.02),
            max_runs: 30,
            ..BenchOptions::new(self.bench.backend, self.bench.runtime, self.bench.batch, 10)
        };
        let mut changed = time_layers(
            &mut self.table,
            model,
            shapes,
            &layers,
            (&layer_bench, self.rounding),
            say,
        )? > 0;
        let lm = LatencyModel::new(
            layers
                .iter()
                .filter_map(|l| Some((l.node, self.table.layers.get(&l.key)?.clone())))
                .collect(),
        );
        // Keyed by the model as timed: lowered or not, they are different calibrations.
        let timed = self.timed_form(model);
        let key = crate::plan::fingerprint(&timed);
        self.learning = self.table_path.is_none() || changed;
        let cal = match self.table.models.get(&key) {
            Some(c) => c.clone(),
            None => {
                self.learning = true;
                say.stage("calibrating the latency table on the whole model");
                let c = self.calibrate(model, &timed, &key, groups, shapes, &lm)?;
                self.table.models.insert(key.clone(), c.clone());
                changed = true;
                c
            }
        };
        self.calibrated = Some(key);
        let (a, b) = cal.line();
        lm.a.set(a);
        lm.b.set(b);
        lm.scale.set(cal.relative.unwrap_or(1.0));
        if let (true, Some(p)) = (changed, &self.table_path) {
            self.table.save(p)?;
        }
        Ok(Some(lm))
    }

    /// Times `model` (as `timed`, its timed form, whose fingerprint is `key`) and its
    /// uniformly pruned copies ([`CALIBRATION_KEEPS`]) in one interleaved run and fits the
    /// line from `lm`'s layer sum to their medians. When `timed` is not the original
    /// (branches dropped, shortcuts lowered), the original runs with them and the model's
    /// latency relative to it is kept.
    fn calibrate(
        &mut self,
        model: &Model,
        timed: &Model,
        key: &str,
        groups: &ChannelGroups,
        shapes: &Shapes,
        lm: &LatencyModel,
    ) -> Result<Calibration> {
        let cost = MaskedCost::new(model, groups, shapes)?;
        let mut sums = vec![lm.layer_sum(&cost, &[])];
        let mut paths = vec![self.scratch.path().join("calibrate-1.onnx")];
        timed.save(&paths[0], &Default::default())?;
        for keep in CALIBRATION_KEEPS {
            let classes = uniform_classes(groups, keep, self.rounding);
            if classes.is_empty() {
                continue;
            }
            let removed = cost.flags(&classes);
            let mut copy = model.clone();
            if remove_channels(&mut copy, groups, shapes, &classes).is_err() {
                continue;
            }
            sums.push(lm.layer_sum(&cost, &removed));
            let path = self.scratch.path().join(format!("calibrate-{keep}.onnx"));
            self.timed_form(&copy).save(&path, &Default::default())?;
            paths.push(path);
        }
        let original = match (&self.original, &self.original_key) {
            (Some(p), Some(k)) if k != key => Some(p.clone()),
            _ => None,
        };
        let mut all = paths.clone();
        all.extend(original.iter().cloned());
        // The line spans the copies' whole range (×0.5 to ×1 of the layers' time): medians
        // within 2% fit it well enough, and the choice it predicts is measured at 1% anyway
        // (ResNet-50 at batch 1: 8 s where 1% took 37 s, over half of the table's build).
        let calibration_bench = BenchOptions {
            precision: Some(0.02),
            max_runs: 60,
            ..self.bench
        };
        let report = bench(&all, &calibration_bench, &mut |_, _| {});
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        let mut medians: Vec<f64> = report?.models.iter().map(|m| m.latency.median).collect();
        let relative = match original {
            Some(_) => {
                let t = medians.pop().unwrap_or(0.0);
                let own = medians.first().copied().unwrap_or(0.0);
                Some(own / t.max(f64::MIN_POSITIVE))
            }
            None => None,
        };
        let points: Vec<(f64, f64)> = sums.into_iter().zip(medians).collect();
        let (a, b) = fit(&points).ok_or_else(|| {
            Error::Usage("the latency table's layers took no measurable time".into())
        })?;
        Ok(Calibration {
            points,
            a,
            b,
            corrections: Vec::new(),
            relative,
        })
    }

    /// Learns from a measurement of a candidate removal (`classes` of the model the last
    /// [`latency_model`](Self::latency_model) was built for, `lm` that model, `cost` built on
    /// it): when the measured ratio is more than the timing noise (0.02) away
    /// from `lm`'s prediction, the candidate becomes a correction point of the model's
    /// calibration, `lm`'s line is updated, and the table saved to its file. Only while
    /// learning: without a table file, or in the run that added the model's entries to it; a
    /// file that already had them is used as it is, so that it keeps giving the same choice.
    pub fn correct(
        &mut self,
        lm: &LatencyModel,
        cost: &MaskedCost,
        classes: &[usize],
        measured: f64,
    ) -> Result<()> {
        let removed = cost.flags(classes);
        let agrees = !surprising(measured, lm.ratio(cost, &removed));
        if agrees || !self.learning {
            return Ok(());
        }
        let Some(cal) = self
            .calibrated
            .as_ref()
            .and_then(|k| self.table.models.get_mut(k))
        else {
            return Ok(());
        };
        let Some(&(_, t0)) = cal.points.first() else {
            return Ok(());
        };
        // `measured` is relative to the original; the model's own point is `scale` of it.
        let own = measured / lm.scale.get().max(f64::MIN_POSITIVE);
        cal.corrections
            .push((lm.layer_sum(cost, &removed), own * t0));
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
        self.ratio_expecting(model, None)
    }

    /// [`ratio`](Self::ratio), where a measurement more than the timing noise
    /// ([`crate::plan::MEASURED_TOLERANCE`]) away from `expected` (the prediction) is a
    /// surprise and is not trusted alone ([`settle`]): timed again, the two averaged when they
    /// agree, else the median of three. One disturbed measurement then cannot steer the
    /// table's correction and the search (on a 2-core VM one measured 0.577 where the file's
    /// later timings gave 0.47-0.48). Without `expected`, one measurement. Each measurement is
    /// itself repeated while the machine is disturbed ([`least_disturbed`]).
    pub fn ratio_expecting(&mut self, model: &Model, expected: Option<f64>) -> Result<f64> {
        let Some(original) = self.original.clone() else {
            return Err(Error::Usage("the original model has not been timed".into()));
        };
        self.timed += 1;
        let path = self
            .scratch
            .path()
            .join(format!("candidate-{}.onnx", self.timed));
        self.timed_form(model).save(&path, &Default::default())?;
        let files = [original, path.clone()];
        let (bench_opts, quiet, repeats) = (&self.bench, &mut self.quiet, &mut self.repeats);
        let mut once = || -> Result<f64> {
            let (r, again) = least_disturbed(quiet, || {
                let r = bench(&files, bench_opts, &mut |_, _| {})?;
                Ok((r.models[0].latency.median, r.models[1].latency.median))
            })?;
            repeats.0 += again;
            Ok(r)
        };
        let r = once().and_then(|first| match expected {
            Some(e) => settle(first, e, &mut once),
            None => Ok((first, 0)),
        });
        let r = r.map(|(r, again)| {
            self.repeats.1 += again;
            r
        });
        let _ = std::fs::remove_file(&path);
        r
    }

    /// How many timings were repeated since the last call: on a disturbed machine, and to
    /// settle a surprise (both 0 on a quiet machine whose measurements agree with the
    /// prediction).
    pub fn take_repeats(&mut self) -> (usize, usize) {
        std::mem::take(&mut self.repeats)
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
        self.original_key = Some(crate::plan::fingerprint(model));
        Ok(())
    }

    /// Whether a measurement made now would correct the latency model: false when a table
    /// file already covered the model the last [`predictor`](Self::predictor) was made for
    /// (it is used as it is). Its choice is then the prediction's whatever a timing says, so
    /// the search need not time candidates: only the model written is timed, for the report.
    pub fn learns(&self) -> bool {
        self.learning
    }

    /// Whether the original has been timed.
    pub fn has_original(&self) -> bool {
        self.original.is_some()
    }

    /// The latency of `model` with `classes` removed, as a fraction of the original's (kept
    /// by [`time_original`](Self::time_original), else an error), measured as
    /// [`ratio_expecting`](Self::ratio_expecting) `expected`. `model` is not changed.
    pub fn ratio_after(
        &mut self,
        model: &Model,
        groups: &ChannelGroups,
        shapes: &Shapes,
        classes: &[usize],
        expected: Option<f64>,
    ) -> Result<f64> {
        let mut candidate = model.clone();
        remove_channels(&mut candidate, groups, shapes, classes)?;
        self.ratio_expecting(&candidate, expected)
    }
}

/// A candidate's ratio to the original from `time` (one timing of both: the original's
/// median, the candidate's), timed again while the original runs more than [`DISTURBED`]
/// times `quiet` (its quietest median so far, updated here), at most [`DISTURBED_TRIES`]
/// timings; the least disturbed one (the original's fastest) gives the ratio. Returns it and
/// the number of timings repeated.
fn least_disturbed(
    quiet: &mut Option<f64>,
    mut time: impl FnMut() -> Result<(f64, f64)>,
) -> Result<(f64, usize)> {
    // (the original's median, the ratio) of the least disturbed timing so far.
    let mut best = (f64::INFINITY, 1.0);
    for tries in 1..=DISTURBED_TRIES {
        let (o, c) = time()?;
        let q = quiet.map_or(o, |q| q.min(o));
        *quiet = Some(q);
        if o < best.0 {
            best = (o, c / o.max(f64::MIN_POSITIVE));
        }
        if o <= q * DISTURBED {
            return Ok((best.1, tries - 1));
        }
    }
    Ok((best.1, DISTURBED_TRIES - 1))
}

/// A measured ratio `first` checked against its prediction `expected`: a surprise (more than
/// the timing noise off) is timed `again`; the two are averaged when they agree within the
/// noise, else a third timing settles it (the median of the three). Returns the ratio and
/// the number of timings added.
fn settle(
    first: f64,
    expected: f64,
    mut again: impl FnMut() -> Result<f64>,
) -> Result<(f64, usize)> {
    if !surprising(first, expected) {
        return Ok((first, 0));
    }
    let second = again()?;
    if !surprising(first, second) {
        return Ok(((first + second) / 2.0, 1));
    }
    Ok((median3(first, second, again()?), 2))
}

/// Whether a measured ratio is further from its prediction than the timing noise.
fn surprising(measured: f64, expected: f64) -> bool {
    (measured - expected).abs() > crate::plan::MEASURED_TOLERANCE
}

/// The middle one of three values.
fn median3(a: f64, b: f64, c: f64) -> f64 {
    a.max(b).min(a.min(b).max(c))
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

/// Classes removing about `1 − keep` of every prunable group (the first classes; kept widths
/// rounded as the search rounds them, [`Rounding`]), leaving no tensor empty.
fn uniform_classes(groups: &ChannelGroups, keep: f64, rounding: Rounding) -> Vec<usize> {
    // The allocation's own rule for the multiple of classes a group keeps.
    let rule = crate::plan::allocate::Constraints {
        round_to: rounding.multiple,
        round_from: rounding.from,
        ..Default::default()
    };
    let widths = groups.group_widths();
    let mut out = Vec::new();
    for (g, &w) in groups
        .groups
        .iter()
        .zip(&widths)
        .filter(|(g, _)| g.prunable())
    {
        let n = g.classes.len();
        let step = rule.multiple(n, w);
        let kept = if n >= step {
            ((((n as f64 * keep) / step as f64).round() as usize).max(1) * step).min(n)
        } else {
            n
        };
        out.extend(g.classes.iter().take(n.saturating_sub(kept)).copied());
    }
    let mut c = groups.take_without_emptying(out);
    c.sort_unstable();
    c
}

/// The note on the timings `evaluator` repeated since it was last asked (see
/// [`LatencyEvaluator::take_repeats`]); `None` when there were none.
pub fn repeats_note(evaluator: Option<&mut LatencyEvaluator>) -> Option<String> {
    let (disturbed, surprise) = evaluator?.take_repeats();
    (disturbed + surprise > 0).then(|| {
        format!(
            "latency target: timings repeated: {disturbed} while the machine was disturbed (the \
             original over {DISTURBED}x its quietest time), {surprise} to check a measurement \
             more than {} from its prediction",
            crate::plan::MEASURED_TOLERANCE
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A timing function giving `v`'s values in turn.
    fn timings<T>(v: Vec<T>) -> impl FnMut() -> Result<T> {
        let mut it = v.into_iter();
        move || Ok(it.next().expect("no more timings"))
    }

    /// `x[1,3,8,8] → Conv (24) → Relu → Conv (48) → Relu → Conv (8)`: two prunable groups.
    fn convs() -> Model {
        use crate::ir::graph::attr_ints;
        use crate::passes::testutil::{input, model};
        let mut g = crate::ir::Graph::new();
        let mut y = input(&mut g, "x", &[1, 3, 8, 8]);
        for (i, (cin, cout)) in [(3, 24), (24, 48), (48, 8)].into_iter().enumerate() {
            let v: Vec<f32> = (0..cout * cin * 9)
                .map(|k| ((k % 7) as f32 - 3.0) * 0.1)
                .collect();
            let t = crate::ir::Tensor::from_f32(vec![cout, cin, 3, 3], &v);
            let w = g.add_initializer(&format!("w{i}"), t);
            let pads = vec![attr_ints("pads", &[1, 1, 1, 1])];
            let (name, out) = (format!("c{i}"), format!("c{i}:0"));
            let c = g.add_node(&name, "Conv", &[Some(y), Some(w)], &[&out], pads);
            y = g.node(c).outputs[0].unwrap();
            if i < 2 {
                let (name, out) = (format!("r{i}"), format!("r{i}:0"));
                let r = g.add_node(&name, "Relu", &[Some(y)], &[&out], vec![]);
                y = g.node(r).outputs[0].unwrap();
            }
        }
        g.outputs = vec![y];
        model(g, 17)
    }

    #[test]
    fn calibration_copies_keep_widths_the_search_can_choose() {
        let mut model = convs();
        let groups = crate::pipeline::analyse::analyse(&mut model).unwrap();
        let kept = |rounding: Rounding, keep: f64| -> Vec<usize> {
            let removed = uniform_classes(&groups, keep, rounding);
            let mut k: Vec<usize> = groups
                .groups
                .iter()
                .filter(|g| g.prunable())
                .map(|g| g.classes.iter().filter(|c| !removed.contains(c)).count())
                .collect();
            k.sort_unstable();
            k
        };
        // Blocks of 16: 24 keeps 16 (its only multiple), 48 keeps 32 or 48.
        let r16 = Rounding {
            multiple: 16,
            from: 16,
        };
        assert_eq!(kept(r16, 0.75), vec![16, 32]);
        assert_eq!(kept(r16, 0.5), vec![16, 32]);
        // Blocks of 8: 18 → 16, 36 → 40; 12 → 16, 24 → 24.
        assert_eq!(kept(Rounding::default(), 0.75), vec![16, 40]);
        assert_eq!(kept(Rounding::default(), 0.5), vec![16, 24]);
        // Exact widths.
        let exact = Rounding {
            multiple: 1,
            from: 0,
        };
        assert_eq!(kept(exact, 0.75), vec![18, 36]);
    }

    #[test]
    fn a_surprise_is_settled_by_a_second_timing_or_the_median_of_three() {
        for (a, b, c) in [
            (0.577, 0.48, 0.47),
            (0.48, 0.577, 0.47),
            (0.47, 0.48, 0.577),
        ] {
            assert_eq!(median3(a, b, c), 0.48);
        }
        // Agrees with the prediction: no timing added.
        assert_eq!(settle(0.515, 0.5, timings(vec![])).unwrap(), (0.515, 0));
        // A wrong prediction: the second timing agrees with the first, both averaged.
        let (r, n) = settle(0.554, 0.5, timings(vec![0.546])).unwrap();
        assert!((r - 0.55).abs() < 1e-12 && n == 1);
        // A disturbed first timing: the second disagrees, the third settles it.
        assert_eq!(
            settle(0.577, 0.5, timings(vec![0.48, 0.47])).unwrap(),
            (0.48, 2)
        );
    }

    #[test]
    fn a_disturbed_timing_is_repeated_and_the_least_disturbed_kept() {
        // The first timing sets the quiet time.
        let mut quiet = None;
        assert_eq!(
            least_disturbed(&mut quiet, timings(vec![(0.010, 0.005)])).unwrap(),
            (0.5, 0)
        );
        assert_eq!(quiet, Some(0.010));
        // Within 10% of it: one timing.
        let (r, n) = least_disturbed(&mut quiet, timings(vec![(0.0105, 0.0063)])).unwrap();
        assert!((r - 0.6).abs() < 1e-12 && n == 0);
        // The original 50% slower: timed again, the quiet timing kept.
        let (r, n) =
            least_disturbed(&mut quiet, timings(vec![(0.015, 0.005), (0.010, 0.0045)])).unwrap();
        assert!((r - 0.45).abs() < 1e-12 && n == 1);
        // Disturbed throughout: three timings, the original's fastest kept.
        let three = vec![(0.02, 0.005), (0.013, 0.0052), (0.016, 0.005)];
        let (r, n) = least_disturbed(&mut quiet, timings(three)).unwrap();
        assert!((r - 0.4).abs() < 1e-12 && n == 2);
        // A faster original lowers the quiet time.
        least_disturbed(&mut quiet, timings(vec![(0.008, 0.004)])).unwrap();
        assert_eq!(quiet, Some(0.008));
    }
}
