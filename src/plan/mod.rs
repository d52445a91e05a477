//! Plans: which channels to remove. A plan is a list of classes (see
//! [`crate::analysis::channels`]) chosen from scores under a rule: a uniform ratio
//! ([`plan_ratio`]), dead channels ([`plan_dead`]), or a budget allocation ([`allocate()`]:
//! ratio, threshold or resource target, local/global/block, under constraints). Choices are
//! recorded in plan files ([`mod@file`]) to replay. This module chooses; it does not change
//! the model ([`crate::passes::remove_channels()`] does).

pub mod allocate;
pub mod dead;
pub mod file;
pub mod ratio;
mod search;
mod space;

pub use allocate::{
    allocate, AllocateOptions, Allocation, Amount, Budget, Constraints, Granularity, Measure, Scope,
};
pub use dead::plan_dead;
pub use file::{fingerprint, PlanFile, PlanGroup, PlanMeta, PlanStep, PLAN_FORMAT};
pub use ratio::plan_ratio;
pub(crate) use space::glob_match;
