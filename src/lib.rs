//! lopper: a compiler that prunes channels/filters of trained ONNX models.
//!
//! Layers, bottom up: [`onnx`] (file format), [`ir`] (graph IR), [`ops`] (one file per op:
//! shapes, costs), [`analysis`] (side tables: shapes, costs), [`passes`] (graph rewrites),
//! [`runtime`] (ONNX Runtime and tract backends), and the `lopper` CLI on top.

pub mod analysis;
pub mod error;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod passes;
pub mod runtime;

pub use error::{Error, Result};
