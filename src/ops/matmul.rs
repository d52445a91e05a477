//! STUB: `MatMul` (to be implemented).
use super::Op;

/// Stub.
pub struct MatMul {
    name: &'static str,
}

impl Op for MatMul {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `MatMul`.
pub static MATMUL: MatMul = MatMul { name: "MatMul" };
