//! Analyses: read the IR, return side tables indexed by id, never mutate the graph.

pub mod activation_stats;
pub mod channels;
pub mod constant_channels;
pub mod cost;
pub mod importance;
pub mod latency_model;
pub mod masked_cost;
pub mod shapes;

pub use channels::{channel_groups, ChannelGroups};
pub use cost::{costs, Costs};
pub use masked_cost::MaskedCost;
pub use shapes::{infer_shapes, Shapes};
