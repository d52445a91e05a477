//! STUB: `Gemm` (to be implemented).
use super::Op;

/// Stub.
pub struct Gemm {
    name: &'static str,
}

impl Op for Gemm {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Gemm`.
pub static GEMM: Gemm = Gemm { name: "Gemm" };
