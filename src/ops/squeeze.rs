//! STUB: `Squeeze` (to be implemented).
use super::Op;

/// Stub.
pub struct Squeeze {
    name: &'static str,
}

impl Op for Squeeze {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Squeeze`.
pub static SQUEEZE: Squeeze = Squeeze { name: "Squeeze" };
