//! STUB: `Slice` (to be implemented).
use super::Op;

/// Stub.
pub struct Slice {
    name: &'static str,
}

impl Op for Slice {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Slice`.
pub static SLICE: Slice = Slice { name: "Slice" };
