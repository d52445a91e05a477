//! A temporary folder that is removed when dropped: where models are written to be run by a
//! runtime (oracle, activation statistics, latency timing). Nothing in it outlives the value.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A fresh folder under the system's temporary directory, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `lopper-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "lopper-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(TempDir(p))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
