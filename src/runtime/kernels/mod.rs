//! lopper's own ONNX Runtime CPU kernels, in the `ai.lopper` domain: ops that standard ONNX
//! can only express with copies or extra passes over memory that ONNX Runtime cannot avoid.
//! One file per op: its math (plain Rust, tested against the definition) and its binding to
//! ONNX Runtime's custom-op API. [`domain`] is registered in every CPU session lopper creates,
//! so models that use these ops run in lopper's sessions only; the step compiler emits them
//! only when asked ([`crate::train::StepOptions::kernels`]), never in models it ships.

pub mod batch_norm_grad;
pub mod conv_weight_grad;
pub mod relu_grad;

use ort::operator::OperatorDomain;

/// The domain of lopper's kernels.
pub const DOMAIN: &str = "ai.lopper";

/// Whether train steps should use these kernels on this machine: their vectorised code runs
/// here (x86-64 with AVX2 and FMA) and `LOPPER_KERNELS` is not `0`.
pub fn enabled() -> bool {
    std::env::var("LOPPER_KERNELS").map_or(true, |v| v != "0") && conv_weight_grad::accelerated()
}

/// The ONNX Runtime operator domain with every kernel of this module.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(conv_weight_grad::Operator)?
        .add(batch_norm_grad::Operator)?
        .add(relu_grad::Operator)
}

/// Runs `f(0..items)`, possibly in parallel (ONNX Runtime's thread pool, or a plain loop).
pub type ParallelFor<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync + Send));

/// A sequential [`ParallelFor`].
pub fn sequential(items: usize, f: &(dyn Fn(usize) + Sync + Send)) {
    (0..items).for_each(f);
}

/// [`ParallelFor`] on a kernel call's intra-op threads (a plain loop when ONNX Runtime
/// refuses).
fn on_threads(
    ctx: &ort::operator::ComputeContext,
    items: usize,
    f: &(dyn Fn(usize) + Sync + Send),
) {
    if ctx.par_for(items, items, f).is_err() {
        sequential(items, f);
    }
}

/// `n` required float32 inputs, as every kernel here declares them.
fn f32_inputs(n: usize) -> Vec<ort::operator::OperatorInput> {
    let f = ort::value::TensorElementType::Float32;
    (0..n)
        .map(|_| ort::operator::OperatorInput::required(f))
        .collect()
}

/// `n` required float32 outputs.
fn f32_outputs(n: usize) -> Vec<ort::operator::OperatorOutput> {
    let f = ort::value::TensorElementType::Float32;
    (0..n)
        .map(|_| ort::operator::OperatorOutput::required(f))
        .collect()
}

/// The dimensions of a tensor shape as `usize`, `None` when one is negative.
fn dims(shape: &[i64]) -> Option<Vec<usize>> {
    shape.iter().map(|&d| usize::try_from(d).ok()).collect()
}

/// A raw pointer the work items share (each touches its own range).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every kernel hands each work item a disjoint range of the buffer.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
impl Shared {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(offset) }
    }
}
