//! STUB: `BatchNormalization, InstanceNormalization` (to be implemented).
use super::Op;

/// Stub.
pub struct BatchNorm {
    name: &'static str,
}

impl Op for BatchNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// Stub.
pub struct InstanceNorm {
    name: &'static str,
}

impl Op for InstanceNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `BatchNormalization`.
pub static BATCH_NORM: BatchNorm = BatchNorm {
    name: "BatchNormalization",
};

/// `InstanceNormalization`.
pub static INSTANCE_NORM: InstanceNorm = InstanceNorm {
    name: "InstanceNormalization",
};
