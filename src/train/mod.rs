//! The training compiler: turns an inference graph into an ONNX *train-step* graph (forward,
//! loss, backward, optimizer update) that ONNX Runtime runs, and the loop that drives it.
//!
//! The step's pieces: [`autodiff`] (reverse-mode differentiation through the ops' backward
//! rules), [`bn_train`] (BatchNormalization in training mode), [`dropout`] (Dropout with
//! host-fed noise), [`loss`], [`regularize`], [`optim`], and [`step`] (which assembles them
//! into one graph); [`block_convolutions`] lowers its convolutions to ONNX Runtime's blocked CPU
//! kernels. The run around it: [`options`] (what a run is given and reports, and the
//! commands' defaults), [`sparsity`] (the `--sparsity` specs) and [`masks`] (masked L1 from a
//! pruning plan), [`init`] (preparing and re-initialising the model), [`samples`] (the
//! training split in memory, batches, augmentation), [`schedule`] (learning rate and
//! regularizer strength per step), [`checkpoint`] (the per-epoch state and sidecar), and
//! [`runner`] (the loop); [`diagnose`] finds where a step first goes non-finite.

pub mod autodiff;
pub mod block_convolutions;
pub mod bn_train;
pub mod check;
pub mod checkpoint;
pub mod diagnose;
pub mod dropout;
pub(crate) mod emit;
pub mod init;
pub mod loss;
pub mod mask_file;
pub mod masks;
pub mod optim;
pub mod options;
pub mod regularize;
pub mod runner;
pub mod saliency;
pub mod samples;
pub mod schedule;
pub mod sparsity;
pub mod step;

pub use autodiff::gradients;
pub use dropout::DropoutNoise;
pub use step::{compile_train_step, StepOptions, TrainStep};
