//! Plans: which channels to remove. A plan is a list of classes (see
//! [`crate::analysis::channels`]) chosen from scores under a rule: a uniform ratio
//! ([`plan_ratio`]), dead channels ([`plan_dead`]), or a budget allocation ([`allocate()`]:
//! ratio, threshold or resource target, local/global/block, under constraints). Choices are
//! recorded in plan files ([`mod@file`]) to replay. Each way of choosing is also a
//! [`Selector`] (one round's classes from the model, its groups and scores), which the
//! pruning pipeline ([`crate::pipeline`]) calls once per round: [`UniformRatio`], [`Dead`],
//! [`Explicit`], [`Replay`] and [`Budgeted`]. This module chooses; it does not score, and it
//! does not change the model ([`crate::passes::remove_channels()`] does).

pub mod allocate;
pub mod budget;
pub mod dead;
pub mod file;
pub mod ratio;
mod search;
pub mod select;
mod space;

pub use allocate::{
    allocate, AllocateOptions, Allocation, Amount, Budget, Constraints, Granularity, Measure,
    Predict, Scope, Timing,
};
pub use budget::Budgeted;
pub use dead::{plan_dead, Dead};
pub use file::{fingerprint, PlanFile, PlanGroup, PlanMeta, PlanStep, Replay, PLAN_FORMAT};
pub use ratio::{plan_ratio, UniformRatio};
pub use search::MEASURED_TOLERANCE;
pub use select::{Choice, Explicit, Round, Selector};
pub(crate) use space::glob_match;
