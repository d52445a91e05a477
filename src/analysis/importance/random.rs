//! `random`: uniform scores in [0, 1), a baseline. Class `i` scores the `i`-th output of a
//! splitmix64 stream started at the context's seed, so scores depend only on the seed and
//! the class numbering: the same on every run and platform. Reads nothing from the model.

use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;
/// The crate's splitmix64 stream, re-exported where the criteria always found it.
pub use crate::rng::SplitMix64;

/// The seeded random criterion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Random;

impl Criterion for Random {
    fn score(&self, cx: &ScoreCx) -> Result<Scores> {
        let n = cx.groups.class_atoms.len();
        let mut rng = SplitMix64::new(cx.seed);
        Ok(Scores {
            values: (0..n).map(|_| rng.next_f64()).collect(),
            ..Default::default()
        })
    }
}
