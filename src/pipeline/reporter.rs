//! The one way stages report progress: a [`Reporter`] told each stage as it starts (one short
//! line, e.g. `round 2/3: scoring (l1)`) and, in long stages, how many units are done. It is
//! for people watching; nothing in a run's result depends on it.

/// Receives progress from the pipeline's stages.
pub trait Reporter {
    /// A stage starts; `what` is one short line.
    fn stage(&mut self, what: &str);

    /// A long stage has done `done` of `total` units (calibration samples, the latency
    /// table's rounds). Ignored by default.
    fn count(&mut self, done: usize, total: usize) {
        let _ = (done, total);
    }
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn stage(&mut self, _: &str) {}
}

/// A function told each stage's line (counts are ignored).
impl<F: FnMut(&str)> Reporter for F {
    fn stage(&mut self, what: &str) {
        self(what)
    }
}

/// Passes lines on to another reporter with a prefix (a round's `round i/n: `).
pub struct Tagged<'r> {
    inner: &'r mut dyn Reporter,
    tag: String,
}

impl<'r> Tagged<'r> {
    /// Lines to `inner`, each starting with `tag`.
    pub fn new(inner: &'r mut dyn Reporter, tag: String) -> Self {
        Tagged { inner, tag }
    }
}

impl Reporter for Tagged<'_> {
    fn stage(&mut self, what: &str) {
        self.inner.stage(&format!("{}{what}", self.tag))
    }

    fn count(&mut self, done: usize, total: usize) {
        self.inner.count(done, total)
    }
}
