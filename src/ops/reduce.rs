//! STUB: `ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL2` (to be implemented).
use super::Op;

/// Stub.
pub struct Reduce {
    name: &'static str,
}

impl Op for Reduce {
    fn op_type(&self) -> &'static str {
        self.name
    }
}

/// `ReduceMean`.
pub static REDUCE_MEAN: Reduce = Reduce { name: "ReduceMean" };

/// `ReduceSum`.
pub static REDUCE_SUM: Reduce = Reduce { name: "ReduceSum" };

/// `ReduceMax`.
pub static REDUCE_MAX: Reduce = Reduce { name: "ReduceMax" };

/// `ReduceMin`.
pub static REDUCE_MIN: Reduce = Reduce { name: "ReduceMin" };

/// `ReduceProd`.
pub static REDUCE_PROD: Reduce = Reduce { name: "ReduceProd" };

/// `ReduceL2`.
pub static REDUCE_L2: Reduce = Reduce { name: "ReduceL2" };
