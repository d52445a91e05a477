//! STUB: `ConstantOfShape` (to be implemented).
use super::Op;

/// Stub.
pub struct ConstantOfShape {
    name: &'static str,
}

impl Op for ConstantOfShape {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `ConstantOfShape`.
pub static CONSTANT_OF_SHAPE: ConstantOfShape = ConstantOfShape {
    name: "ConstantOfShape",
};
