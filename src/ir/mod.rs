//! The graph IR: typed ids into arenas, constant tensors, compile-time facts, import/export to
//! ONNX protobuf, the verifier and a text dump.

pub mod display;
pub mod dtype;
pub mod export;
pub mod fact;
pub mod graph;
pub mod ids;
pub mod import;
pub mod tensor;
pub mod verify;

pub use dtype::DType;
pub use fact::{Dim, Fact, Shape, SymInt};
pub use graph::{is_default_domain, Graph, Model, Node, Value};
pub use ids::{NodeId, ValueId};
pub use tensor::Tensor;
pub use verify::{verify, verify_model, verify_ops};

use std::path::Path;

use crate::error::Result;
use crate::onnx::{self, SaveOptions};

impl Model {
    /// Loads an ONNX file (external data included) into the IR.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        import::import(onnx::load_model(path)?)
    }

    /// Verifies the graph, exports it and writes it atomically to `path`.
    pub fn save(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<()> {
        verify(&self.graph)?;
        onnx::save_model(&export::export(self)?, path, opts)
    }
}
