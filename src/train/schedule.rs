//! The per-step scalars: the learning rate (linear warm-up, then cosine, step or constant) and
//! the regularizer strength `l1_lambda` (constant, or growing linearly from 0).

use super::options::{LambdaSchedule, Schedule};

/// The learning rate at step `t` (from 0) of `total`, with `warmup` warm-up steps.
pub fn lr_at(base: f64, schedule: Schedule, t: usize, total: usize, warmup: usize) -> f64 {
    if t < warmup {
        return base * (t + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = (t - warmup) as f64 / span;
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        Schedule::Step if p >= 0.75 => base * 0.01,
        Schedule::Step if p >= 0.5 => base * 0.1,
        Schedule::Step => base,
    }
}

/// The regularizer strength `l1_lambda` at step `t` (from 0) of `total`.
pub fn lambda_at(schedule: LambdaSchedule, t: usize, total: usize) -> f64 {
    match schedule {
        LambdaSchedule::Constant => 1.0,
        LambdaSchedule::Augmented => t as f64 / total.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = |t| lr_at(1.0, Schedule::Cosine, t, 110, 10);
        assert!((c(0) - 0.1).abs() < 1e-12 && (c(9) - 1.0).abs() < 1e-12);
        assert!((c(10) - 1.0).abs() < 1e-12 && (c(60) - 0.5).abs() < 1e-12);
        assert!(c(109) < 0.001);
        let s = |t| lr_at(1.0, Schedule::Step, t, 100, 0);
        assert_eq!((s(49), s(50), s(75)), (1.0, 0.1, 0.01));
        assert_eq!(lr_at(0.3, Schedule::Constant, 99, 100, 0), 0.3);
    }
}
