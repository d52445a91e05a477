//! Broadcasting element-wise ops: arithmetic (`Add`, `Sub`, `Mul`, `Div`, `Pow`), variadic
//! (`Sum`, `Max`, `Min`, `Mean`), comparisons (`Equal`, `Less`, `Greater`, bool output) and
//! `Where` (condition, x, y). One FLOP per output element.

use crate::error::Result;
use crate::ir::{DType, Fact, Node, Tensor};

use super::{numel_or_one, util, Cost, Cx, Op};

/// What the op computes, for folding.
#[derive(Clone, Copy)]
enum Kind {
    Arith(fn(i64, i64) -> i64, fn(f64, f64) -> f64),
    Compare(fn(f64, f64) -> bool),
    Mean,
    Where,
}

/// A broadcasting element-wise op.
pub struct Binary {
    name: &'static str,
    kind: Kind,
}

impl Op for Binary {
    fn op_type(&self) -> &'static str {
        self.name
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let facts: Vec<&Fact> = (0..cx.inputs.len())
            .map(|i| cx.input(i))
            .collect::<Result<_>>()?;
        if facts.is_empty() {
            return Err(cx.err("needs at least one input"));
        }
        let dtype = match self.kind {
            Kind::Compare(_) => Some(DType::Bool),
            Kind::Where => facts.get(1).and_then(|f| f.dtype),
            _ => facts[0].dtype,
        };
        let shapes: Option<Vec<&crate::ir::Shape>> =
            facts.iter().map(|f| f.shape.as_ref()).collect();
        let Some(shapes) = shapes else {
            return Ok(Some(vec![Fact {
                dtype,
                shape: None,
                value: None,
            }]));
        };
        let shape = util::broadcast(&shapes).map_err(|e| cx.err(e))?;
        Ok(Some(vec![Fact::new(dtype, shape)]))
    }

    fn eval(
        &self,
        _node: &Node,
        inputs: &[Option<&Tensor>],
        _opset: i64,
    ) -> Option<Result<Vec<Tensor>>> {
        match self.kind {
            Kind::Arith(fi, ff) => util::eval_elementwise(
                inputs,
                None,
                |a| a[1..].iter().fold(a[0], |acc, &b| fi(acc, b)),
                |a| a[1..].iter().fold(a[0], |acc, &b| ff(acc, b)),
            ),
            Kind::Mean => util::eval_elementwise(
                inputs,
                None,
                |_| 0,
                |a| a.iter().sum::<f64>() / a.len() as f64,
            )
            .filter(|_| inputs.iter().flatten().all(|t| t.dtype().is_float())),
            Kind::Compare(f) => util::eval_elementwise(
                inputs,
                Some(DType::Bool),
                |a| i64::from(f(a[0] as f64, a[1] as f64)),
                |a| if f(a[0], a[1]) { 1.0 } else { 0.0 },
            ),
            Kind::Where => {
                let dtype = inputs.get(1).copied().flatten()?.dtype();
                util::eval_elementwise(
                    inputs,
                    Some(dtype),
                    |a| if a[0] != 0 { a[1] } else { a[2] },
                    |a| {
                        if a[0] != 0.0 {
                            a[1]
                        } else {
                            a[2]
                        }
                    },
                )
            }
        }
    }

    fn cost(&self, _cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let n = outputs
            .first()
            .copied()
            .flatten()
            .and_then(|f| f.shape.as_ref())
            .map_or(0, |s| numel_or_one(s));
        Cost { macs: 0, flops: n }
    }
}

fn int_div(a: i64, b: i64) -> i64 {
    if b == 0 {
        0
    } else {
        a / b
    }
}

/// `Add`.
pub static ADD: Binary = Binary {
    name: "Add",
    kind: Kind::Arith(i64::wrapping_add, |a, b| a + b),
};
/// `Sub`.
pub static SUB: Binary = Binary {
    name: "Sub",
    kind: Kind::Arith(i64::wrapping_sub, |a, b| a - b),
};
/// `Mul`.
pub static MUL: Binary = Binary {
    name: "Mul",
    kind: Kind::Arith(i64::wrapping_mul, |a, b| a * b),
};
/// `Div` (integer division truncates, as ONNX Runtime does).
pub static DIV: Binary = Binary {
    name: "Div",
    kind: Kind::Arith(int_div, |a, b| a / b),
};
/// `Pow`.
pub static POW: Binary = Binary {
    name: "Pow",
    kind: Kind::Arith(|a, b| a.wrapping_pow(b.clamp(0, 63) as u32), f64::powf),
};
/// `Sum` (variadic).
pub static SUM: Binary = Binary {
    name: "Sum",
    kind: Kind::Arith(i64::wrapping_add, |a, b| a + b),
};
/// `Max` (variadic).
pub static MAX: Binary = Binary {
    name: "Max",
    kind: Kind::Arith(i64::max, f64::max),
};
/// `Min` (variadic).
pub static MIN: Binary = Binary {
    name: "Min",
    kind: Kind::Arith(i64::min, f64::min),
};
/// `Mean` (variadic).
pub static MEAN: Binary = Binary {
    name: "Mean",
    kind: Kind::Mean,
};
/// `Equal`.
pub static EQUAL: Binary = Binary {
    name: "Equal",
    kind: Kind::Compare(|a, b| a == b),
};
/// `Less`.
pub static LESS: Binary = Binary {
    name: "Less",
    kind: Kind::Compare(|a, b| a < b),
};
/// `Greater`.
pub static GREATER: Binary = Binary {
    name: "Greater",
    kind: Kind::Compare(|a, b| a > b),
};
/// `Where`.
pub static WHERE: Binary = Binary {
    name: "Where",
    kind: Kind::Where,
};
