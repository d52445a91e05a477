//! Runtimes that execute models: ONNX Runtime (`ort`, library loaded at run time) and tract
//! (pure Rust, always available). Both take and return IR [`Tensor`]s by name.
//!
//! This module only runs models; it does not check or change them.

use std::path::Path;

use crate::error::Result;
use crate::ir::Tensor;

pub mod ort;
pub mod tract;

/// Which runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// ONNX Runtime through `ort` (CPU unless another device is configured).
    Ort,
    /// tract (embedded, pure Rust).
    Tract,
}

/// A model loaded into a runtime, ready to run.
pub trait Session {
    /// The backend's name (`"ort"`, `"tract"`).
    fn backend(&self) -> &'static str;

    /// Runs the model: inputs by name; returns every graph output, by name, in graph order.
    fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>>;
}

/// Loads a model file into a runtime.
pub fn load(kind: BackendKind, path: &Path) -> Result<Box<dyn Session>> {
    match kind {
        BackendKind::Ort => Ok(Box::new(ort::OrtSession::load(path)?)),
        BackendKind::Tract => Ok(Box::new(tract::TractSession::load(path)?)),
    }
}
