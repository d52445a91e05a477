//! STUB: `Concat` (to be implemented).
use super::Op;

/// Stub.
pub struct Concat {
    name: &'static str,
}

impl Op for Concat {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Concat`.
pub static CONCAT: Concat = Concat { name: "Concat" };
