//! STUB: `MaxPool, AveragePool` (to be implemented).
use super::Op;

/// Stub.
pub struct Pool {
    name: &'static str,
}

impl Op for Pool {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `MaxPool`.
pub static MAX_POOL: Pool = Pool { name: "MaxPool" };

/// `AveragePool`.
pub static AVERAGE_POOL: Pool = Pool {
    name: "AveragePool",
};
