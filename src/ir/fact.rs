//! What is known about a value at compile time: element type, shape (dims may be symbolic),
//! and, for small computed tensors (shape arithmetic), the value itself, or element by element
//! ([`SymInt`]) when some elements are symbolic dims (like ONNX's symbolic shape inference).

use std::fmt;

use super::{DType, Tensor};
use crate::onnx::proto::{tensor_shape_proto::dimension::Value as DimValue, type_proto, TypeProto};

/// One dimension of a shape.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Dim {
    /// A fixed size.
    Known(usize),
    /// A named symbolic size (e.g. `batch`), equal wherever the same name appears.
    Sym(String),
    /// Nothing is known.
    Unknown,
}

impl Dim {
    /// The fixed size, if known.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(d) => Some(*d),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(d) => write!(f, "{d}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// One element of a small integer tensor that holds dimensions (shape arithmetic).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum SymInt {
    /// A known integer (may be negative, like the `-1` of a Reshape target).
    Int(i64),
    /// A named symbolic size, as in [`Dim::Sym`].
    Sym(String),
    /// Nothing is known.
    Unknown,
}

impl SymInt {
    /// The integer, if known.
    pub fn int(&self) -> Option<i64> {
        match self {
            SymInt::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// As a dimension: a negative integer is `Unknown`.
    pub fn to_dim(&self) -> Dim {
        match self {
            SymInt::Int(v) => usize::try_from(*v).map_or(Dim::Unknown, Dim::Known),
            SymInt::Sym(s) => Dim::Sym(s.clone()),
            SymInt::Unknown => Dim::Unknown,
        }
    }
}

impl From<&Dim> for SymInt {
    fn from(d: &Dim) -> SymInt {
        match d {
            Dim::Known(k) => i64::try_from(*k).map_or(SymInt::Unknown, SymInt::Int),
            Dim::Sym(s) => SymInt::Sym(s.clone()),
            Dim::Unknown => SymInt::Unknown,
        }
    }
}

impl fmt::Display for SymInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymInt::Int(v) => write!(f, "{v}"),
            SymInt::Sym(s) => f.write_str(s),
            SymInt::Unknown => f.write_str("?"),
        }
    }
}

/// Formats elements as `[N,-1]`.
pub fn sym_string(elems: &[SymInt]) -> String {
    let parts: Vec<String> = elems.iter().map(SymInt::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// Longest [`Fact::sym`] tracked (shape vectors are short).
pub const MAX_SYM_LEN: usize = 64;

/// A shape: one [`Dim`] per axis.
pub type Shape = Vec<Dim>;

/// Formats a shape as `[N,3,32,32]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// Compile-time knowledge of one value.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Fact {
    /// Element type, when known.
    pub dtype: Option<DType>,
    /// Shape, when the rank is known.
    pub shape: Option<Shape>,
    /// The value itself, when it is a compile-time constant.
    pub value: Option<Tensor>,
    /// For small (0-D/1-D) integer tensors whose elements are dimensions: each element known,
    /// symbolic or unknown; `None` when not tracked. See [`Fact::sym_elems`].
    pub sym: Option<Vec<SymInt>>,
}

impl Fact {
    /// A fact with type and shape.
    pub fn new(dtype: Option<DType>, shape: Shape) -> Fact {
        Fact {
            dtype,
            shape: Some(shape),
            ..Fact::default()
        }
    }

    /// A fact for a known constant.
    pub fn constant(t: Tensor) -> Fact {
        Fact {
            dtype: Some(t.dtype()),
            shape: Some(t.shape().iter().map(|&d| Dim::Known(d)).collect()),
            value: Some(t),
            sym: None,
        }
    }

    /// A 0-D (`scalar`) or 1-D integer tensor with elements `elems`: `sym` is set (when short
    /// enough), and `value` too when every element is known and `dtype` is an integer type.
    pub fn of_sym(dtype: Option<DType>, scalar: bool, elems: Vec<SymInt>) -> Fact {
        let shape = if scalar {
            vec![]
        } else {
            vec![Dim::Known(elems.len())]
        };
        let dims: Vec<usize> = shape.iter().filter_map(Dim::known).collect();
        let ints: Option<Vec<i64>> = elems.iter().map(SymInt::int).collect();
        let value = match (dtype, ints) {
            (Some(DType::I64), Some(v)) => Some(Tensor::from_i64(dims, &v)),
            (Some(d), Some(v)) if !d.is_float() && d != DType::Bool => {
                let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                Tensor::from_f64_as(d, dims, &v).ok()
            }
            _ => None,
        };
        Fact {
            dtype,
            shape: Some(shape),
            value,
            sym: (elems.len() <= MAX_SYM_LEN).then_some(elems),
        }
    }

    /// The elements of a 0-D/1-D integer tensor: from `value` when constant (and short), else
    /// from `sym`. `None`: not tracked.
    pub fn sym_elems(&self) -> Option<Vec<SymInt>> {
        if let Some(t) = &self.value {
            if t.shape().len() > 1 || t.len() > MAX_SYM_LEN || t.dtype() == DType::Bool {
                return None;
            }
            return Some(t.to_i64_vec()?.into_iter().map(SymInt::Int).collect());
        }
        self.sym.clone()
    }

    /// Rank, if the shape is known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// The fully known dimensions, if every one is known.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(Dim::known).collect()
    }

    /// Reads a tensor type (`TypeProto.tensor_type`); other types give an empty fact.
    pub fn from_type(tp: &TypeProto) -> Fact {
        let Some(type_proto::Value::TensorType(tt)) = &tp.value else {
            return Fact::default();
        };
        let dtype = DType::from_onnx(tt.elem_type());
        let shape = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(v)) if *v >= 0 => Dim::Known(*v as usize),
                    Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Sym(p.clone()),
                    _ => Dim::Unknown,
                })
                .collect()
        });
        Fact {
            dtype,
            shape,
            ..Fact::default()
        }
    }

    /// Writes this fact as a tensor `TypeProto` (unknown dims have no value; unknown rank has
    /// no shape).
    pub fn to_type(&self) -> TypeProto {
        use crate::onnx::proto::{tensor_shape_proto::Dimension, TensorShapeProto};
        let shape = self.shape.as_ref().map(|s| TensorShapeProto {
            dim: s
                .iter()
                .map(|d| Dimension {
                    value: match d {
                        Dim::Known(v) => Some(DimValue::DimValue(*v as i64)),
                        Dim::Sym(p) => Some(DimValue::DimParam(p.clone())),
                        Dim::Unknown => None,
                    },
                    denotation: None,
                })
                .collect(),
        });
        TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(self.dtype.map_or(0, DType::to_onnx)),
                shape,
            })),
            denotation: None,
        }
    }

    /// `float[N,3,32,32]`-style text.
    pub fn describe(&self) -> String {
        let t = self.dtype.map_or("?".to_string(), |d| d.to_string());
        match &self.shape {
            Some(s) => format!("{t}{}", shape_string(s)),
            None => format!("{t}[..]"),
        }
    }
}
