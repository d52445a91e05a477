//! STUB: `Resize, Upsample` (to be implemented).
use super::Op;

/// Stub.
pub struct Resize {
    name: &'static str,
}

impl Op for Resize {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Resize`.
pub static RESIZE: Resize = Resize { name: "Resize" };

/// `Upsample`.
pub static UPSAMPLE: Resize = Resize { name: "Upsample" };
