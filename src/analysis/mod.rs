//! Analyses: read the IR, return side tables indexed by id, never mutate the graph.

pub mod cost;
pub mod shapes;

pub use cost::{costs, Costs};
pub use shapes::{infer_shapes, Shapes};
