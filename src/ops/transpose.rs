//! STUB: `Transpose` (to be implemented).
use super::Op;

/// Stub.
pub struct Transpose {
    name: &'static str,
}

impl Op for Transpose {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Transpose`.
pub static TRANSPOSE: Transpose = Transpose { name: "Transpose" };
