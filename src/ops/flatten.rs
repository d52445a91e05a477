//! STUB: `Flatten` (to be implemented).
use super::Op;

/// Stub.
pub struct Flatten {
    name: &'static str,
}

impl Op for Flatten {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Flatten`.
pub static FLATTEN: Flatten = Flatten { name: "Flatten" };
