//! What is known about a value at compile time: element type, shape (dims may be symbolic),
//! and, for small computed tensors (shape arithmetic), the value itself.

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
}

impl Fact {
    /// A fact with type and shape.
    pub fn new(dtype: Option<DType>, shape: Shape) -> Fact {
        Fact {
            dtype,
            shape: Some(shape),
            value: None,
        }
    }

    /// A fact for a known constant.
    pub fn constant(t: Tensor) -> Fact {
        Fact {
            dtype: Some(t.dtype()),
            shape: Some(t.shape().iter().map(|&d| Dim::Known(d)).collect()),
            value: Some(t),
        }
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
            value: None,
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
