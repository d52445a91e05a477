//! Element types, numbered as ONNX's `TensorProto.DataType`.

use std::fmt;

/// A tensor element type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[allow(missing_docs)]
pub enum DType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    C64,
    C128,
    BF16,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    U4,
    I4,
    F4E2M1,
    F8E8M0,
    U2,
    I2,
}

impl DType {
    const ALL: [DType; 26] = [
        DType::F32,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::String,
        DType::Bool,
        DType::F16,
        DType::F64,
        DType::U32,
        DType::U64,
        DType::C64,
        DType::C128,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::U4,
        DType::I4,
        DType::F4E2M1,
        DType::F8E8M0,
        DType::U2,
        DType::I2,
    ];

    /// From the ONNX `DataType` number (0 = undefined gives `None`).
    pub fn from_onnx(code: i32) -> Option<DType> {
        if code >= 1 && code as usize <= Self::ALL.len() {
            Some(Self::ALL[code as usize - 1])
        } else {
            None
        }
    }

    /// The ONNX `DataType` number.
    pub fn to_onnx(self) -> i32 {
        Self::ALL
            .iter()
            .position(|d| *d == self)
            .map_or(0, |p| p as i32 + 1)
    }

    /// Storage bits per element in `raw_data` (0 for strings).
    pub fn bits(self) -> usize {
        use DType::*;
        match self {
            String => 0,
            U2 | I2 => 2,
            U4 | I4 | F4E2M1 => 4,
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 8,
            U16 | I16 | F16 | BF16 => 16,
            F32 | I32 | U32 => 32,
            F64 | I64 | U64 | C64 => 64,
            C128 => 128,
        }
    }

    /// Bytes needed for `n` elements in `raw_data` (sub-byte types packed); saturates at
    /// `usize::MAX` for counts no file can hold.
    pub fn storage_bytes(self, n: usize) -> usize {
        n.saturating_mul(self.bits()).div_ceil(8)
    }

    /// Whether this is a floating-point type (including 8/4-bit and complex types).
    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(
            self,
            F32 | F16
                | F64
                | BF16
                | C64
                | C128
                | F8E4M3FN
                | F8E4M3FNUZ
                | F8E5M2
                | F8E5M2FNUZ
                | F4E2M1
                | F8E8M0
        )
    }

    /// The lower-case ONNX name (`float`, `int64`, ...).
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "float",
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            String => "string",
            Bool => "bool",
            F16 => "float16",
            F64 => "double",
            U32 => "uint32",
            U64 => "uint64",
            C64 => "complex64",
            C128 => "complex128",
            BF16 => "bfloat16",
            F8E4M3FN => "float8e4m3fn",
            F8E4M3FNUZ => "float8e4m3fnuz",
            F8E5M2 => "float8e5m2",
            F8E5M2FNUZ => "float8e5m2fnuz",
            U4 => "uint4",
            I4 => "int4",
            F4E2M1 => "float4e2m1",
            F8E8M0 => "float8e8m0",
            U2 => "uint2",
            I2 => "int2",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
