//! The published methods as named lists of [`compress`](super::compress) stages: each
//! method file turns the user's budget and overrides ([`Settings`]) into the stages it runs,
//! the pruning selection it uses and how its recovery trains ([`Composition`]). A method
//! adds no stage of its own kind: everything it runs is a stage of
//! [`super::compress::Stage`]. Nothing here runs a stage; `--dry-run` prints
//! [`Composition::describe`].
//!
//! - [`slimming`]: network slimming with augmented sparse training and a protect threshold;
//! - [`masksparsity`]: L1 only on the channels the pruning will remove;
//! - [`adapruner`]: block allocation by mean BN scale, bisection on the width multiplier,
//!   adaptive weight inheritance;
//! - [`epruner`]: exemplar filters by affinity propagation, which also pick the count;
//! - [`mending`]: pre-pruning by filter norms, then a search over width moves around it;
//! - [`panning`]: pruning at initialisation by saliency masks an agent chooses;
//! - `plain`: exactly the flags given (the baseline: `--criterion l1`, `--recover kd`).
//!
//! The epoch budget is the whole run's: a method with sparse training spends part of it
//! there and the rest on recovery.

pub mod adapruner;
pub mod epruner;
pub mod masksparsity;
pub mod mending;
pub mod panning;
pub mod slimming;

use crate::error::{Error, Result};

use super::compress::{CompressOptions, Recovery, Stage};
use super::options::{Scored, Selection};

/// A method: the stages it runs and the defaults it gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// The flags as given: prune, then `--recover`.
    #[default]
    Plain,
    /// Network slimming (augmented sparse training, global |γ| threshold, protect threshold).
    Slimming,
    /// MaskSparsity (L1 on the channels to remove only).
    MaskSparsity,
    /// AdaPruner (block importance, width-multiplier bisection, weight inheritance).
    AdaPruner,
    /// EPruner (exemplars decide which filters and how many).
    EPruner,
    /// Automatic mending (pre-pruning, then a width search around it).
    Mending,
    /// Neural Network Panning (saliency masks at initialisation, chosen by an agent).
    Panning,
}

impl Method {
    /// Every method, in the order `--help` lists them.
    pub const ALL: [Method; 7] = [
        Method::Plain,
        Method::Slimming,
        Method::MaskSparsity,
        Method::AdaPruner,
        Method::EPruner,
        Method::Mending,
        Method::Panning,
    ];

    /// The method's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Plain => "plain",
            Method::Slimming => "slimming",
            Method::MaskSparsity => "masksparsity",
            Method::AdaPruner => "adapruner",
            Method::EPruner => "epruner",
            Method::Mending => "mending",
            Method::Panning => "panning",
        }
    }

    /// Parses a method name.
    pub fn parse(s: &str) -> Result<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                Error::Usage(format!(
                    "unknown method '{s}' (expected {})",
                    names.join(", ")
                ))
            })
    }

    /// Whether the method decides how many channels go without a budget (EPruner).
    pub fn picks_its_own_amount(self) -> bool {
        self == Method::EPruner
    }

    /// Composes the method from the user's `settings`, changing the pruning `selection` as
    /// the method prunes.
    pub fn compose(self, selection: &mut Selection, settings: &Settings) -> Result<Composition> {
        type Compose = fn(&mut Scored, &Settings) -> Result<Composition>;
        let compose: Compose = match self {
            Method::Plain => {
                return Ok(Composition {
                    stages: Stage::plain(&settings.recover),
                    recovery_epochs: settings.epochs,
                    recovery_lr: None,
                    from_scratch: settings.from_scratch,
                })
            }
            Method::Slimming => slimming::compose,
            Method::MaskSparsity => masksparsity::compose,
            Method::AdaPruner => adapruner::compose,
            Method::EPruner => epruner::compose,
            Method::Mending => mending::compose,
            Method::Panning => panning::compose,
        };
        let Selection::Scored(scored) = selection else {
            return Err(Error::Usage(format!(
                "--method {} chooses the channels itself: give a budget (--target) instead of \
                 a plan or --remove-dead",
                self.name()
            )));
        };
        compose(scored, settings)
    }
}

/// What the user asked of a method run: the epoch budget and the overrides of the method's
/// defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Training epochs of the whole run (sparse training and recovery together).
    pub epochs: usize,
    /// Epochs of sparse training, overriding the method's share of the budget.
    pub sparse_epochs: Option<usize>,
    /// L1 weight λ of sparse training, overriding the method's budget-sized strength.
    pub sparsity_weight: Option<f32>,
    /// Re-initialise the pruned architecture before recovery (slimming's alternative to
    /// fine-tuning the inherited weights).
    pub from_scratch: bool,
    /// Brief-recovery steps of each candidate (AdaPruner's inheritance, mending's search).
    pub inherit_steps: Option<usize>,
    /// Candidates mending scores, or pulls panning's agent makes, in all.
    pub mend_evaluations: Option<usize>,
    /// Training samples held out to score each candidate (adapruner, mending, panning),
    /// overriding the method's default.
    pub holdout: Option<usize>,
    /// Panning: the fraction of filter-bank weights masked (weight granularity).
    pub weight_sparsity: Option<f64>,
    /// Panning: mask whole channels to the `--target` budget instead of single weights.
    pub channel_granularity: bool,
    /// Panning: this saliency index alone, in one shot, instead of the agent.
    pub pan_index: Option<crate::train::saliency::Index>,
    /// The recovery stages (`--recover`).
    pub recover: Vec<Recovery>,
    /// Base learning rate of fine-tuning (sparse training uses it too).
    pub lr: f64,
    /// Whether the model has BatchNormalization scales (the sparsity methods penalise them;
    /// without, slimming penalises filter norms).
    pub batch_norm: bool,
}

impl Settings {
    /// The learning rate of training a re-initialised network: `lopper train`'s (0.1 for
    /// SGD), a third of it without BatchNormalization (see
    /// [`crate::train::options::Recipe::lr_for`]).
    pub fn scratch_lr(&self) -> f64 {
        let lr = crate::train::options::Recipe::Train.lr(&Default::default());
        if self.batch_norm {
            lr
        } else {
            lr * 0.3
        }
    }

    /// Splits the budget: `(sparse epochs, recovery epochs)`, the sparse part `share` of the
    /// whole (at least one epoch each) unless overridden. Errors when nothing is left for
    /// recovery although it trains.
    pub fn split(&self, share: f64) -> Result<(usize, usize)> {
        let trains = self
            .recover
            .iter()
            .any(|r| matches!(r, Recovery::Finetune | Recovery::Kd));
        let sparse = self
            .sparse_epochs
            .unwrap_or_else(|| ((self.epochs as f64 * share).round() as usize).max(1));
        let rest = self.epochs.saturating_sub(sparse);
        if trains && rest == 0 {
            return Err(Error::Usage(format!(
                "--epochs {} is the whole budget, sparse training and recovery together: \
                 {sparse} go to sparse training and none is left to recover (give --epochs \
                 {} or more, or --sparse-epochs)",
                self.epochs,
                sparse + 1
            )));
        }
        Ok((sparse, rest))
    }
}

/// A composed method: its stages and how its recovery trains.
#[derive(Clone, Debug)]
pub struct Composition {
    /// The stages after the original's evaluation.
    pub stages: Vec<Stage>,
    /// Epochs of each training recovery stage.
    pub recovery_epochs: usize,
    /// Learning rate of recovery when the method sets it (from scratch: the training rate).
    pub recovery_lr: Option<f64>,
    /// Re-initialise the pruned model before its first training stage.
    pub from_scratch: bool,
}

impl Composition {
    /// The stages of `opts` (already holding this composition) as numbered lines, each
    /// with its settings: what `--dry-run` prints.
    pub fn describe(opts: &CompressOptions) -> Vec<String> {
        let mut lines = vec!["original: evaluate the given model".to_string()];
        for s in &opts.stages {
            lines.push(super::compress::describe_stage(s, opts));
        }
        lines.push("verify: the final model in every runtime found".into());
        if opts.latency.is_some() {
            lines.push("latency: the final model timed against the original".into());
        }
        lines
            .into_iter()
            .enumerate()
            .map(|(k, l)| format!("{:>2}. {l}", k + 1))
            .collect()
    }
}

/// The recovery stages of `settings` after `first`.
fn then_recover(first: Vec<Stage>, settings: &Settings) -> Vec<Stage> {
    first
        .into_iter()
        .chain(settings.recover.iter().map(|&r| Stage::Recover(r)))
        .collect()
}

/// Sparse training on `share` of the budget (penalty `penalty`, default strength `shift`
/// unless `--sparsity-weight`), then pruning and the recovery stages, which get the rest.
fn sparse_then_prune(
    s: &Settings,
    share: f64,
    penalty: super::compress::Penalty,
    shift: f32,
    augmented: bool,
) -> Result<Composition> {
    use super::compress::{SparseTraining, Strength};
    let (sparse, rest) = s.split(share)?;
    let sparse = Stage::Sparse(SparseTraining {
        penalty,
        strength: s
            .sparsity_weight
            .map_or(Strength::Shift(shift), Strength::Weight),
        augmented,
        epochs: sparse,
        lr: s.lr,
    });
    Ok(Composition {
        stages: then_recover(vec![sparse, Stage::Prune], s),
        recovery_epochs: rest,
        recovery_lr: s.from_scratch.then(|| s.scratch_lr()),
        from_scratch: s.from_scratch,
    })
}

/// Refuses a selection without a budget for a method that needs one.
fn needs_budget(method: Method, scored: &Scored) -> Result<()> {
    use crate::plan::allocate::Amount;
    match scored.allocate.amount {
        Amount::Target(_) | Amount::Ratio(_) => Ok(()),
        _ => Err(Error::Usage(format!(
            "--method {} needs a budget: --target flops=R|params=R or --ratio R",
            method.name()
        ))),
    }
}
