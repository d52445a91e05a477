//! STUB: `Gather` (to be implemented).
use super::Op;

/// Stub.
pub struct Gather {
    name: &'static str,
}

impl Op for Gather {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Gather`.
pub static GATHER: Gather = Gather { name: "Gather" };
