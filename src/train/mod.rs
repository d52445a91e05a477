//! The training compiler: turns an inference graph into an ONNX *train-step* graph (forward,
//! loss, backward, optimizer update) that ONNX Runtime runs. This module holds the pieces:
//! [`autodiff`] (reverse-mode differentiation through the ops' backward rules).

pub mod autodiff;
pub mod check;

pub use autodiff::gradients;
