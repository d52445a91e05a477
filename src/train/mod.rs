//! The training compiler: turns an inference graph into an ONNX *train-step* graph (forward,
//! loss, backward, optimizer update) that ONNX Runtime runs. This module holds the pieces:
//! [`autodiff`] (reverse-mode differentiation through the ops' backward rules), [`bn_train`]
//! (BatchNormalization in training mode), [`dropout`] (Dropout with host-fed noise),
//! [`loss`], [`regularize`], [`optim`], and [`step`] (which assembles them into one graph);
//! [`runner`] is the training loop that drives a step in ONNX Runtime, [`diagnose`] finds
//! where a step first goes non-finite.

pub mod autodiff;
pub mod bn_train;
pub mod check;
pub mod diagnose;
pub mod dropout;
pub(crate) mod emit;
pub mod loss;
pub mod optim;
pub mod regularize;
pub mod runner;
pub mod step;

pub use autodiff::gradients;
pub use dropout::DropoutNoise;
pub use step::{compile_train_step, StepOptions, TrainStep};
