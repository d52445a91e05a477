//! STUB: `Shape` (to be implemented).
use super::Op;

/// Stub.
pub struct ShapeOp {
    name: &'static str,
}

impl Op for ShapeOp {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `Shape`.
pub static SHAPE: ShapeOp = ShapeOp { name: "Shape" };
