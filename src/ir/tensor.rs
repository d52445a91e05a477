//! Constant tensors (initializers, `Constant` values, folded results).
//!
//! Contents are kept as little-endian bytes exactly as ONNX's `raw_data` lays them out, in a
//! shared [`Bytes`] buffer: a weight loaded from a file is a slice of the file buffer, never
//! copied. Typed fields (`float_data`, `int32_data`, ...) are converted to that layout on import.

use bytes::Bytes;
use half::{bf16, f16};

use super::dtype::DType;
use crate::error::{Error, Result};
use crate::onnx::proto::TensorProto;

/// A dense constant tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Bytes,
    strings: Vec<Bytes>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}>{:?}", self.dtype, self.shape)
    }
}

impl Tensor {
    /// Hints that this tensor's bytes will not be read soon (see [`crate::onnx::mapped`]): when
    /// they are a slice of a mapped file their pages leave the resident set; reading them
    /// again still gives the same bytes.
    pub fn release_pages(&self) {
        crate::onnx::mapped::release(&self.data);
    }

    /// Builds a tensor from raw little-endian bytes, checking the length against the shape.
    pub fn from_raw(dtype: DType, shape: Vec<usize>, data: Bytes) -> Result<Tensor> {
        let n =
            checked_numel(&shape).ok_or_else(|| Error::tensor("", "element count overflows"))?;
        let want = dtype.storage_bytes(n);
        if dtype == DType::String || data.len() != want {
            return Err(Error::tensor(
                "",
                format!(
                    "{dtype} tensor of shape {shape:?} needs {want} bytes, has {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            dtype,
            shape,
            data,
            strings: Vec::new(),
        })
    }

    /// A float32 tensor. Panics if `values.len()` does not match `shape` (programming error).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape/data mismatch"
        );
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            dtype: DType::F32,
            shape,
            data: data.into(),
            strings: Vec::new(),
        }
    }

    /// An int64 tensor. Panics if `values.len()` does not match `shape` (programming error).
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape/data mismatch"
        );
        let mut data = Vec::with_capacity(values.len() * 8);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            dtype: DType::I64,
            shape,
            data: data.into(),
            strings: Vec::new(),
        }
    }

    /// Converts float values (as f64) into a tensor of a float or integer `dtype`.
    pub fn from_f64_as(dtype: DType, shape: Vec<usize>, values: &[f64]) -> Result<Tensor> {
        let mut data = Vec::with_capacity(dtype.storage_bytes(values.len()));
        for &v in values {
            match dtype {
                DType::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                DType::F64 => data.extend_from_slice(&v.to_le_bytes()),
                DType::F16 => data.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
                DType::BF16 => data.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
                DType::I64 => data.extend_from_slice(&(v as i64).to_le_bytes()),
                DType::I32 => data.extend_from_slice(&(v as i32).to_le_bytes()),
                DType::I16 => data.extend_from_slice(&(v as i16).to_le_bytes()),
                DType::I8 => data.push(v as i8 as u8),
                DType::U8 => data.push(v as u8),
                DType::U16 => data.extend_from_slice(&(v as u16).to_le_bytes()),
                DType::U32 => data.extend_from_slice(&(v as u32).to_le_bytes()),
                DType::U64 => data.extend_from_slice(&(v as u64).to_le_bytes()),
                DType::Bool => data.push(u8::from(v != 0.0)),
                other => {
                    return Err(Error::tensor(
                        "",
                        format!("cannot build a {other} tensor from numbers"),
                    ))
                }
            }
        }
        Tensor::from_raw(dtype, shape, data.into())
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes (empty for strings).
    pub fn raw(&self) -> &Bytes {
        &self.data
    }

    /// The same data with another shape of equal element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.len() {
            return Err(Error::tensor(
                "",
                format!("cannot reshape {:?} to {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape,
            ..self.clone()
        })
    }

    /// The entries at `indices` along `axis` (in that order), as a new tensor.
    pub fn select(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        let bits = self.dtype.bits();
        if bits < 8 || axis >= self.shape.len() {
            return Err(Error::tensor(
                "",
                format!("cannot select along axis {axis} of a {self:?}"),
            ));
        }
        let len = self.shape[axis];
        if let Some(bad) = indices.iter().find(|&&i| i >= len) {
            return Err(Error::tensor(
                "",
                format!(
                    "index {bad} out of range for axis {axis} of {:?}",
                    self.shape
                ),
            ));
        }
        let esize = bits / 8;
        let inner: usize = self.shape[axis + 1..].iter().product::<usize>() * esize;
        let outer: usize = self.shape[..axis].iter().product();
        let mut data = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            let base = o * len * inner;
            for &i in indices {
                data.extend_from_slice(&self.data[base + i * inner..base + (i + 1) * inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape[axis] = indices.len();
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data: data.into(),
            strings: Vec::new(),
        })
    }

    /// The same tensor with the entries at `indices` along `axis` set to zero.
    pub fn zero_along(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        let bits = self.dtype.bits();
        if bits < 8 || axis >= self.shape.len() {
            return Err(Error::tensor(
                "",
                format!("cannot zero along axis {axis} of a {self:?}"),
            ));
        }
        let len = self.shape[axis];
        let esize = bits / 8;
        let inner: usize = self.shape[axis + 1..].iter().product::<usize>() * esize;
        let outer: usize = self.shape[..axis].iter().product();
        let mut data = self.data.to_vec();
        for o in 0..outer {
            for &i in indices.iter().filter(|&&i| i < len) {
                let start = (o * len + i) * inner;
                data[start..start + inner].fill(0);
            }
        }
        Ok(Tensor {
            data: data.into(),
            ..self.clone()
        })
    }

    /// Values as f64 (any real numeric type); `None` for strings, complex and sub-byte types.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let b = &self.data[..];
        Some(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            _ => self.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
        })
    }

    /// Values as f32 (any real numeric type); `None` otherwise.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.dtype == DType::F32 {
            return Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        Some(self.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
    }

    /// Values as i64 (integer and bool types); `None` otherwise.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = &self.data[..];
        Some(match self.dtype {
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
            DType::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::U64 => b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64)
                .collect(),
            _ => return None,
        })
    }

    /// Decodes a `TensorProto` whose bytes are inline (`raw_data` or typed fields; external data
    /// must have been resolved by [`crate::onnx::load_model`]). Checks the data length.
    pub fn from_proto(t: &TensorProto) -> Result<Tensor> {
        let name = t.name();
        let err = |msg: std::string::String| Error::tensor(name, msg);
        let dtype = DType::from_onnx(t.data_type())
            .ok_or_else(|| err(format!("unknown or undefined data_type {}", t.data_type())))?;
        let mut shape = Vec::with_capacity(t.dims.len());
        for &d in &t.dims {
            if d < 0 {
                return Err(err(format!("negative dimension {d} in dims {:?}", t.dims)));
            }
            shape.push(d as usize);
        }
        let n = checked_numel(&shape).ok_or_else(|| err(format!("dims {:?} overflow", t.dims)))?;
        if t.segment.is_some() {
            return Err(err("segmented tensors are not supported".into()));
        }
        if dtype == DType::String {
            if t.string_data.len() != n {
                return Err(err(format!(
                    "dims {:?} need {n} strings, string_data has {}",
                    t.dims,
                    t.string_data.len()
                )));
            }
            return Ok(Tensor {
                dtype,
                shape,
                data: Bytes::new(),
                strings: t.string_data.clone(),
            });
        }
        let want = dtype.storage_bytes(n);
        if let Some(raw) = &t.raw_data {
            if raw.len() != want {
                return Err(err(format!(
                    "dims {:?} ({dtype}) need {want} bytes of data, raw_data has {}",
                    t.dims,
                    raw.len()
                )));
            }
            return Ok(Tensor {
                dtype,
                shape,
                data: raw.clone(),
                strings: Vec::new(),
            });
        }
        let data = typed_data(t, dtype, n, want)?;
        Ok(Tensor {
            dtype,
            shape,
            data: data.into(),
            strings: Vec::new(),
        })
    }

    /// Encodes as a `TensorProto` with `raw_data` (or `string_data`) and the given name.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        let mut t = TensorProto {
            dims: self.shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(self.dtype.to_onnx()),
            name: Some(name.to_string()),
            ..Default::default()
        };
        if self.dtype == DType::String {
            t.string_data = self.strings.clone();
        } else {
            t.raw_data = Some(self.data.clone());
        }
        t
    }
}

fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The bytes of `t`'s typed fields (`float_data`, `int64_data`, ...) for `n` elements of
/// `dtype` (`want` bytes), checking each field's count.
fn typed_data(t: &TensorProto, dtype: DType, n: usize, want: usize) -> Result<Vec<u8>> {
    let name = t.name();
    let err = |msg: std::string::String| Error::tensor(name, msg);
    // Grown as the checked fields are copied: `want` comes from the declared dims, which a
    // broken file can make as large as it likes (2^43 bytes aborted the process).
    let mut data: Vec<u8> = Vec::new();
    let count_err = |have: usize, field: &str, per: usize| {
        err(format!(
            "dims {:?} need {n} elements, {field} holds {}",
            t.dims,
            have * per
        ))
    };
    use DType::*;
    match dtype {
        F32 | C64 => {
            let per = if dtype == C64 { 2 } else { 1 };
            if t.float_data.len() != n * per {
                return Err(count_err(t.float_data.len() / per.max(1), "float_data", 1));
            }
            t.float_data
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        }
        F64 | C128 => {
            let per = if dtype == C128 { 2 } else { 1 };
            if t.double_data.len() != n * per {
                return Err(count_err(
                    t.double_data.len() / per.max(1),
                    "double_data",
                    1,
                ));
            }
            t.double_data
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        }
        I64 => {
            if t.int64_data.len() != n {
                return Err(count_err(t.int64_data.len(), "int64_data", 1));
            }
            t.int64_data
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        }
        U32 | U64 => {
            if t.uint64_data.len() != n {
                return Err(count_err(t.uint64_data.len(), "uint64_data", 1));
            }
            for v in &t.uint64_data {
                if dtype == U32 {
                    data.extend_from_slice(&(*v as u32).to_le_bytes());
                } else {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        U4 | I4 | F4E2M1 | U2 | I2 => {
            // Each int32 holds one packed byte.
            if t.int32_data.len() != want {
                return Err(err(format!(
                    "dims {:?} need {want} packed bytes, int32_data has {}",
                    t.dims,
                    t.int32_data.len()
                )));
            }
            t.int32_data.iter().for_each(|v| data.push(*v as u8));
        }
        _ => {
            if t.int32_data.len() != n {
                return Err(count_err(t.int32_data.len(), "int32_data", 1));
            }
            let width = dtype.bits() / 8;
            for v in &t.int32_data {
                data.extend_from_slice(&v.to_le_bytes()[..width]);
            }
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dtype: DType, dims: Vec<i64>) -> TensorProto {
        TensorProto {
            name: Some("t".into()),
            dims,
            data_type: Some(dtype.to_onnx()),
            ..Default::default()
        }
    }

    #[test]
    fn typed_fields_under_huge_dims_are_refused_without_allocating() {
        // 2^40 int64 elements declared, one present: an error, not a 8 TiB allocation.
        let mut t = proto(DType::I64, vec![1 << 40]);
        t.int64_data = vec![7];
        let e = Tensor::from_proto(&t).unwrap_err().to_string();
        assert!(e.contains("int64_data"), "{e}");
    }

    #[test]
    fn typed_fields_decode_to_raw_layout() {
        let mut t = proto(DType::F16, vec![2]);
        t.int32_data = vec![
            f16::from_f32(1.5).to_bits() as i32,
            f16::from_f32(-2.0).to_bits() as i32,
        ];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_f32_vec().unwrap(),
            vec![1.5, -2.0]
        );

        let mut t = proto(DType::BF16, vec![1]);
        t.int32_data = vec![bf16::from_f32(3.0).to_bits() as i32];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_f32_vec().unwrap(),
            vec![3.0]
        );

        let mut t = proto(DType::I8, vec![3]);
        t.int32_data = vec![-1, 0, 127];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_i64_vec().unwrap(),
            vec![-1, 0, 127]
        );

        let mut t = proto(DType::Bool, vec![2]);
        t.int32_data = vec![1, 0];
        assert_eq!(Tensor::from_proto(&t).unwrap().raw().as_ref(), &[1, 0]);

        let mut t = proto(DType::I64, vec![2, 1]);
        t.int64_data = vec![7, -9];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_i64_vec().unwrap(),
            vec![7, -9]
        );

        let mut t = proto(DType::U32, vec![1]);
        t.uint64_data = vec![4_000_000_000];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_i64_vec().unwrap(),
            vec![4_000_000_000]
        );

        let mut t = proto(DType::F64, vec![1]);
        t.double_data = vec![0.25];
        assert_eq!(
            Tensor::from_proto(&t).unwrap().to_f64_vec().unwrap(),
            vec![0.25]
        );
    }

    #[test]
    fn select_and_zero_along_an_axis() {
        let t = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let s = t.select(1, &[2, 0]).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.to_f32_vec().unwrap(), vec![3.0, 1.0, 6.0, 4.0]);
        assert_eq!(
            t.select(0, &[1]).unwrap().to_f32_vec().unwrap(),
            vec![4.0, 5.0, 6.0]
        );
        assert!(t.select(1, &[3]).is_err());
        assert_eq!(
            t.zero_along(1, &[1]).unwrap().to_f32_vec().unwrap(),
            vec![1.0, 0.0, 3.0, 4.0, 0.0, 6.0]
        );
    }

    #[test]
    fn raw_and_typed_agree() {
        let a = Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let mut t = proto(DType::F32, vec![2, 2]);
        t.float_data = vec![1.0, 2.0, 3.0, 4.0];
        assert_eq!(Tensor::from_proto(&t).unwrap(), a);
        assert_eq!(Tensor::from_proto(&a.to_proto("t")).unwrap(), a);
    }

    #[test]
    fn length_mismatches_are_errors_naming_the_tensor() {
        let mut t = proto(DType::F32, vec![2, 3]);
        t.float_data = vec![0.0; 5];
        let e = Tensor::from_proto(&t).unwrap_err().to_string();
        assert!(e.contains("'t'") && e.contains("6"), "{e}");
        let mut t = proto(DType::F32, vec![4]);
        t.raw_data = Some(Bytes::from_static(&[0; 15]));
        assert!(Tensor::from_proto(&t).is_err());
        let t = proto(DType::F32, vec![-1]);
        assert!(Tensor::from_proto(&t).is_err());
        let t = TensorProto {
            data_type: Some(0),
            ..Default::default()
        };
        assert!(Tensor::from_proto(&t).is_err());
        let t = proto(DType::F32, vec![i64::MAX, 4]);
        assert!(Tensor::from_proto(&t).is_err());
    }
}
