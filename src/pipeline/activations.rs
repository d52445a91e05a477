//! The activation stage of data-driven criteria: runs calibration data through the model as it
//! is this round and returns per-channel [`ActivationStats`]
//! ([`crate::analysis::activation_stats`]). [`Calibration`] says where the data comes from
//! and which runtime runs it. This stage does not score (the score stage does) and does not
//! change the model.

use crate::analysis::activation_stats::{activation_stats, calibration_batches};
use crate::analysis::channels::ChannelGroups;
use crate::analysis::importance::ActivationStats;
use crate::data::{Dataset, Preprocess};
use crate::error::Result;
use crate::ir::Model;
use crate::runtime::{BackendKind, RuntimeOptions};

use super::reporter::Reporter;
use super::score::Scoring;

/// Opens the calibration dataset with its preprocessing. Called once per round (batches
/// consume the dataset); an error here (e.g. no dataset given) ends the run.
pub trait OpenDataset {
    /// The dataset and how to preprocess it.
    fn open(&self) -> Result<(Box<dyn Dataset>, Preprocess)>;
}

impl<F: Fn() -> Result<(Box<dyn Dataset>, Preprocess)>> OpenDataset for F {
    fn open(&self) -> Result<(Box<dyn Dataset>, Preprocess)> {
        self()
    }
}

/// Calibration data and the runtime that runs it.
pub struct Calibration<'a> {
    /// The dataset.
    pub data: &'a dyn OpenDataset,
    /// The runtime.
    pub backend: BackendKind,
    /// Its device and threads (spinning is turned off while gathering).
    pub runtime: RuntimeOptions,
    /// Samples per batch (`None`: 32, or the model's fixed batch).
    pub batch_size: Option<usize>,
    /// Samples used, spread evenly over the dataset.
    pub samples: usize,
}

impl Calibration<'_> {
    /// Activation statistics of `model` (simplified, BN kept) for `groups`; the reporter is
    /// told the samples done.
    pub fn gather(
        &self,
        model: &Model,
        groups: &ChannelGroups,
        reporter: &mut dyn Reporter,
    ) -> Result<ActivationStats> {
        let (dataset, pre) = self.data.open()?;
        let mut batches =
            calibration_batches(model, dataset, &pre, self.batch_size, Some(self.samples))?;
        let total = batches.samples();
        reporter.count(0, total);
        let rt = RuntimeOptions {
            spinning: Some(false),
            ..self.runtime
        };
        activation_stats(model, groups, self.backend, &rt, &mut batches, &mut |n| {
            reporter.count(n, total)
        })
    }
}

/// The stage: statistics when the scoring reads them and calibration data is given, else
/// `None` (a criterion that needs data then says so when it scores).
pub fn gather(
    scoring: &Scoring,
    calibration: Option<&Calibration>,
    model: &Model,
    groups: &ChannelGroups,
    reporter: &mut dyn Reporter,
) -> Result<Option<ActivationStats>> {
    match calibration {
        Some(c) if scoring.needs_data() => {
            reporter.stage("gathering activations");
            Ok(Some(c.gather(model, groups, reporter)?))
        }
        _ => Ok(None),
    }
}
