//! lopper: a compiler that prunes channels/filters of trained ONNX models.
//!
//! Layers, bottom up: [`onnx`] (file format), [`ir`] (graph IR), [`ops`] (one file per op:
//! shapes, costs), [`analysis`] (side tables: shapes, costs), [`passes`] (graph rewrites),
//! [`runtime`] (ONNX Runtime and tract backends), [`data`] (datasets and preprocessing),
//! [`eval`] (accuracy against data or a reference), [`mod@bench`] (interleaved latency) and
//! [`report`] (before/after tables, charts, JSON), and the command line on top ([`cli`]).

pub mod analysis;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod oracle;
pub mod passes;
pub mod pipeline;
pub mod plan;
pub mod prune;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod temp_dir;
pub mod train;

pub use error::{Error, Result};
