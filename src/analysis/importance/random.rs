//! `random`: uniform scores in [0, 1), a baseline. Class `i` scores the `i`-th output of a
//! splitmix64 stream started at the context's seed, so scores depend only on the seed and
//! the class numbering: the same on every run and platform. Reads nothing from the model.

use super::{Criterion, ScoreCx, Scores};
use crate::error::Result;

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

/// The splitmix64 generator (Steele, Lea and Flood): 64-bit state, full period, portable.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started at `seed` (any value).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
