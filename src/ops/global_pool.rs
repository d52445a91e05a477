//! STUB: `GlobalAveragePool, GlobalMaxPool` (to be implemented).
use super::Op;

/// Stub.
pub struct GlobalPool {
    name: &'static str,
}

impl Op for GlobalPool {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `GlobalAveragePool`.
pub static GLOBAL_AVERAGE_POOL: GlobalPool = GlobalPool {
    name: "GlobalAveragePool",
};

/// `GlobalMaxPool`.
pub static GLOBAL_MAX_POOL: GlobalPool = GlobalPool {
    name: "GlobalMaxPool",
};
