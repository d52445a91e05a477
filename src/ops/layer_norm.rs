//! STUB: `LayerNormalization` (to be implemented).
use super::Op;

/// Stub.
pub struct LayerNorm {
    name: &'static str,
}

impl Op for LayerNorm {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `LayerNormalization`.
pub static LAYER_NORM: LayerNorm = LayerNorm {
    name: "LayerNormalization",
};
