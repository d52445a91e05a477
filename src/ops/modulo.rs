//! `Mod`: element-wise remainder (`fmod` = 0: the sign of the divisor, integers only; 1: the
//! sign of the dividend, as C's `fmod`). Known here for its rules only: two inputs, and an
//! integer divisor that is a constant holding 0 is refused, since the runtimes' kernels trap
//! on it (SIGFPE) instead of erroring. Not handled: shape inference (the model's declarations
//! are used), folding, channels (a channel slot through it blocks), backward.

use super::{CheckCx, Op};
use crate::ir::Tensor;

/// `Mod`.
pub struct Modulo;
/// `Mod`.
pub static MOD: Modulo = Modulo;

impl Op for Modulo {
    fn op_type(&self) -> &'static str {
        "Mod"
    }

    fn arity(&self, _opset: i64) -> Option<(usize, usize)> {
        Some((2, 2))
    }

    fn check(&self, cx: &CheckCx) -> Vec<String> {
        let divisor = cx
            .consts
            .get(1)
            .copied()
            .flatten()
            .filter(|t| !t.dtype().is_float())
            .and_then(Tensor::to_i64_vec);
        if divisor.is_some_and(|y| y.contains(&0)) {
            vec!["integer division by zero (undefined; runtimes trap on it)".into()]
        } else {
            Vec::new()
        }
    }
}
