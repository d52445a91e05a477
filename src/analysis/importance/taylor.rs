//! `taylor` (first-order Taylor |g·a|): needs gradients, which only the training compiler
//! can produce and which is not built yet. Scoring always fails with a Usage error naming
//! the alternatives; nothing is computed.

use super::{Criterion, ScoreCx, Scores};
use crate::error::{Error, Result};

/// The Taylor criterion (not available yet).
#[derive(Clone, Copy, Debug, Default)]
pub struct Taylor;

/// Why `taylor` cannot run yet.
pub const UNAVAILABLE: &str = "criterion 'taylor' needs gradients from the training compiler, which is not built yet; use activation or l1";

impl Criterion for Taylor {
    fn score(&self, _cx: &ScoreCx) -> Result<Scores> {
        Err(Error::Usage(UNAVAILABLE.into()))
    }
}
