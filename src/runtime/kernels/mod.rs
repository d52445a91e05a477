//! lopper's own ONNX Runtime CPU kernels, in the `ai.lopper` domain: ops that standard ONNX
//! can only express with copies ONNX Runtime cannot avoid. One file per op: its math (plain
//! Rust, tested against the definition) and its binding to ONNX Runtime's custom-op API.
//! [`domain`] is registered in every CPU session lopper creates, so models that use these
//! ops run in lopper's sessions only; the step compiler emits them only when asked
//! ([`crate::train::StepOptions::kernels`]), never in models it ships.

pub mod conv_weight_grad;

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
    OperatorDomain::new(DOMAIN)?.add(conv_weight_grad::Operator)
}
