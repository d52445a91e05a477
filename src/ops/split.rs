//! STUB: `Split` (to be implemented).
use super::Op;

/// Stub.
pub struct Split {
    name: &'static str,
}

impl Op for Split {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Split`.
pub static SPLIT: Split = Split { name: "Split" };
