//! STUB: `Pad` (to be implemented).
use super::Op;

/// Stub.
pub struct Pad {
    name: &'static str,
}

impl Op for Pad {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Pad`.
pub static PAD: Pad = Pad { name: "Pad" };
