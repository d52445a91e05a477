//! `Identity` and `Dropout` (inference: output 0 = input 0; the optional mask has the input's
//! shape and type bool). Folding passes the constant through.

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::{util, Cx, Op};

/// `Identity`.
pub struct Identity;
/// `Identity`.
pub static IDENTITY: Identity = Identity;

impl Op for Identity {
    fn op_type(&self) -> &'static str {
        "Identity"
    }
    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        util::like_input(cx, 0)
    }
    fn eval(
        &self,
        _node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        Some(Ok(vec![inputs.first().copied().flatten()?.clone()]))
    }
}

/// `Dropout` (inference mode).
pub struct Dropout;
/// `Dropout`.
pub static DROPOUT: Dropout = Dropout;

impl Op for Dropout {
    fn op_type(&self) -> &'static str {
        "Dropout"
    }
    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = cx.input(0)?;
        let y = Fact {
            dtype: x.dtype,
            shape: x.shape.clone(),
            value: None,
        };
        let mask = Fact {
            dtype: Some(DType::Bool),
            shape: x.shape.clone(),
            value: None,
        };
        Ok(Some(vec![y, mask]))
    }
}
