//! STUB: `Constant` (to be implemented).
use super::Op;

/// Stub.
pub struct Constant {
    name: &'static str,
}

impl Op for Constant {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Constant`.
pub static CONSTANT: Constant = Constant { name: "Constant" };
