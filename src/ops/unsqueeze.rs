//! STUB: `Unsqueeze` (to be implemented).
use super::Op;

/// Stub.
pub struct Unsqueeze {
    name: &'static str,
}

impl Op for Unsqueeze {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Unsqueeze`.
pub static UNSQUEEZE: Unsqueeze = Unsqueeze { name: "Unsqueeze" };
