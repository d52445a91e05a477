//! Plans: which channels to remove. A plan is a list of classes (see
//! [`crate::analysis::channels`]) chosen from scores under a rule. This module chooses and records
//! choices ([`mod@file`]: plan files to replay); it does not change the model
//! ([`crate::passes::remove_channels()`] does).

pub mod dead;
pub mod file;
pub mod ratio;

pub use dead::plan_dead;
pub use file::{fingerprint, PlanFile, PlanGroup, PlanMeta, PlanStep, PLAN_FORMAT};
pub use ratio::plan_ratio;
