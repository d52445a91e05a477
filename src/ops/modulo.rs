//! `Mod`: element-wise remainder (`fmod` = 0: the sign of the divisor, integers only; 1: the
//! sign of the dividend, as C's `fmod`). Known here for its rules only: two inputs, and an
//! integer divisor that is a constant holding 0, or −1 under a constant dividend holding the
//! type's minimum, is refused, since the runtimes' kernels trap on it (SIGFPE) instead of
//! erroring (the fuzz harness found the second). Not handled: shape inference (the model's declarations
//! are used), folding, channels (a channel slot through it blocks), backward.

use super::{CheckCx, Op};

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
        super::util::integer_division_traps(cx)
    }
}
