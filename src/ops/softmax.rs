//! STUB: `Softmax, LogSoftmax` (to be implemented).
use super::Op;

/// Stub.
pub struct Softmax {
    name: &'static str,
}

impl Op for Softmax {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Softmax`.
pub static SOFTMAX: Softmax = Softmax { name: "Softmax" };

/// `LogSoftmax`.
pub static LOG_SOFTMAX: Softmax = Softmax { name: "LogSoftmax" };
