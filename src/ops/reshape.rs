//! STUB: `Reshape` (to be implemented).
use super::Op;

/// Stub.
pub struct Reshape {
    name: &'static str,
}

impl Op for Reshape {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Reshape`.
pub static RESHAPE: Reshape = Reshape { name: "Reshape" };
