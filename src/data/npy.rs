//! The NumPy `.npy` format: header parsing and element conversion. Arrays are read as a stream
//! of samples (the first axis), never loaded whole; see [`super::array_stream`].
//!
//! Supported: format versions 1–3, C order, little- or big-endian booleans, integers and
//! floats (`b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8`).

use std::io::Read;

use half::f16;

/// Element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyType {
    /// `b1`.
    Bool,
    /// `i1`.
    I8,
    /// `u1`.
    U8,
    /// `i2`.
    I16,
    /// `u2`.
    U16,
    /// `i4`.
    I32,
    /// `u4`.
    U32,
    /// `i8`.
    I64,
    /// `u8`.
    U64,
    /// `f2`.
    F16,
    /// `f4`.
    F32,
    /// `f8`.
    F64,
}

impl NpyType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyType::Bool | NpyType::I8 | NpyType::U8 => 1,
            NpyType::I16 | NpyType::U16 | NpyType::F16 => 2,
            NpyType::I32 | NpyType::U32 | NpyType::F32 => 4,
            NpyType::I64 | NpyType::U64 | NpyType::F64 => 8,
        }
    }

    /// Whether values are integers (labels must be).
    pub fn is_integer(self) -> bool {
        !matches!(self, NpyType::F16 | NpyType::F32 | NpyType::F64)
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyType,
    /// Whether elements are big-endian.
    pub big_endian: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// Elements in the whole array (`None` on overflow).
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Converts raw elements of this array to `f32` (`out.len()` elements).
    pub fn to_f32(&self, raw: &[u8], out: &mut [f32]) {
        let size = self.dtype.size();
        for (o, chunk) in out.iter_mut().zip(raw.chunks_exact(size)) {
            *o = self.element(chunk) as f32;
        }
    }

    /// Converts raw integer elements to `i64`; `None` for float arrays or out-of-range values.
    pub fn to_i64(&self, raw: &[u8]) -> Option<Vec<i64>> {
        if !self.dtype.is_integer() {
            return None;
        }
        let size = self.dtype.size();
        raw.chunks_exact(size)
            .map(|c| {
                if self.dtype == NpyType::U64 {
                    i64::try_from(u64::from_le_bytes(self.bytes8(c))).ok()
                } else {
                    Some(self.element(c) as i64)
                }
            })
            .collect()
    }

    /// The element's bytes, little-endian, zero-extended to 8 (sign is handled by the caller).
    fn bytes8(&self, c: &[u8]) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        if self.big_endian {
            b[..c.len()].reverse();
        }
        b
    }

    /// One element as `f64` (exact for every type but 64-bit integers above 2^53).
    fn element(&self, c: &[u8]) -> f64 {
        let b = self.bytes8(c);
        match self.dtype {
            NpyType::Bool => f64::from(u8::from(b[0] != 0)),
            NpyType::U8 => f64::from(b[0]),
            NpyType::I8 => f64::from(b[0] as i8),
            NpyType::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            NpyType::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            NpyType::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            NpyType::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            NpyType::U64 => u64::from_le_bytes(b) as f64,
            NpyType::I64 => i64::from_le_bytes(b) as f64,
            NpyType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            NpyType::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            NpyType::F64 => f64::from_le_bytes(b),
        }
    }
}

/// Reads the magic, version and header dict from the start of a `.npy` stream, leaving the
/// reader at the first element. `total`, the stream's size in bytes when known (the file's, or
/// the archive member's), bounds what the header may declare: a shape claiming more data than
/// follows the header is refused before anything is allocated for it.
pub fn read_header<R: Read>(r: &mut R, total: Option<u64>) -> Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| format!("not a .npy array: {e}"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| format!(".npy header: {e}"))?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| format!(".npy header: {e}"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    if len > 1 << 20 {
        return Err(format!(".npy header of {len} bytes is implausible"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| format!(".npy header: {e}"))?;
    let h = parse_dict(&String::from_utf8_lossy(&text))?;
    if let Some(total) = total {
        let prefix = if pre[6] == 1 { 10 } else { 12 };
        let follows = total.saturating_sub((prefix + len) as u64);
        let need = h
            .numel()
            .and_then(|n| n.checked_mul(h.dtype.size()))
            .map(|b| b as u64);
        if need.is_none_or(|b| b > follows) {
            return Err(format!(
                ".npy header declares shape {:?} ({} bytes of data) but {follows} bytes follow it",
                h.shape,
                need.map_or("more than 2^64".into(), |b| b.to_string())
            ));
        }
    }
    Ok(h)
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_dict(text: &str) -> Result<NpyHeader, String> {
    let value = |key: &str| -> Result<&str, String> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!(".npy header has no '{key}': {}", text.trim()))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest
            .find(':')
            .ok_or_else(|| format!(".npy header: no value for '{key}'"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| format!(".npy dtype {descr:.20} is not supported (structured arrays)"))?;
    let (big_endian, code) = match descr.split_at_checked(1) {
        Some(("<" | "|" | "=", c)) => (false, c),
        Some((">", c)) => (true, c),
        _ => return Err(format!(".npy dtype '{descr}' is not supported")),
    };
    let dtype = match code {
        "b1" => NpyType::Bool,
        "i1" => NpyType::I8,
        "u1" => NpyType::U8,
        "i2" => NpyType::I16,
        "u2" => NpyType::U16,
        "i4" => NpyType::I32,
        "u4" => NpyType::U32,
        "i8" => NpyType::I64,
        "u8" => NpyType::U64,
        "f2" => NpyType::F16,
        "f4" => NpyType::F32,
        "f8" => NpyType::F64,
        _ => return Err(format!(".npy dtype '{descr}' is not supported")),
    };
    if value("fortran_order")?.starts_with("True") {
        return Err(".npy array in Fortran order is not supported (save it C-contiguous)".into());
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!(".npy shape {shape:.30} is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!(".npy shape has a bad dim '{s}'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        dtype,
        big_endian,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_header_and_converts() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
            &data,
        );
        let mut r = bytes.as_slice();
        let h = read_header(&mut r, Some(bytes.len() as u64)).unwrap();
        assert_eq!(h.dtype, NpyType::F32);
        assert_eq!(h.shape, vec![2]);
        let mut out = [0f32; 2];
        h.to_f32(r, &mut out);
        assert_eq!(out, [1.5, -2.0]);
        assert_eq!(h.to_i64(r), None);
        // One byte short of the data: refused from the header alone.
        let e = read_header(&mut bytes.as_slice(), Some(bytes.len() as u64 - 1)).unwrap_err();
        assert!(
            e.contains("declares shape [2] (8 bytes of data) but 7 bytes"),
            "{e}"
        );
        let huge = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 4), }\n",
            &data,
        );
        let e = read_header(&mut huge.as_slice(), Some(huge.len() as u64)).unwrap_err();
        assert!(e.contains("17592186044416 bytes of data"), "{e}");
    }

    #[test]
    fn big_endian_integers_and_scalars() {
        let h = parse_dict("{'descr': '>i2', 'fortran_order': False, 'shape': (), }").unwrap();
        assert!(h.big_endian);
        assert_eq!(h.shape, Vec::<usize>::new());
        assert_eq!(h.to_i64(&[0xff, 0xfe, 0x01, 0x00]), Some(vec![-2, 256]));
        let h = parse_dict("{'descr': '|u1', 'fortran_order': False, 'shape': (3, 4), }").unwrap();
        assert_eq!((h.dtype, h.shape.clone()), (NpyType::U8, vec![3, 4]));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for (dict, needle) in [
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }",
                "'<c8'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
                "Fortran",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
                "structured",
            ),
            ("{'descr': '<f4', 'fortran_order': False}", "'shape'"),
        ] {
            let e = parse_dict(dict).unwrap_err();
            assert!(e.contains(needle), "{dict}: {e}");
        }
        assert!(read_header(&mut &b"PK\x03\x04....."[..], None)
            .unwrap_err()
            .contains("magic"));
    }
}
