//! STUB: `Cast` (to be implemented).
use super::Op;

/// Stub.
pub struct Cast {
    name: &'static str,
}

impl Op for Cast {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Cast`.
pub static CAST: Cast = Cast { name: "Cast" };
