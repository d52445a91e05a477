//! STUB: `ConvTranspose` (to be implemented).
use super::Op;

/// Stub.
pub struct ConvTranspose {
    name: &'static str,
}

impl Op for ConvTranspose {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `ConvTranspose`.
pub static CONV_TRANSPOSE: ConvTranspose = ConvTranspose {
    name: "ConvTranspose",
};
