//! The weight-mask file shipped beside a model pruned at weight granularity: a NumPy `.npz`
//! (uncompressed zip) holding, per filter bank, a `uint8` array of the bank's shape, 1 where
//! the weight is kept (`numpy.load(path)[name]`). [`save`] writes it atomically, [`load`]
//! reads it back (what `--resume` and training with masks read).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Per bank: its shape and one 0/1 entry per element, row-major.
pub type MaskArrays = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes `masks` to `path` atomically.
pub fn save(path: &Path, masks: &MaskArrays) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, (shape, m)) in masks {
            if shape.iter().product::<usize>() != m.len() {
                return Err(Error::tensor(name, "mask size differs from its shape"));
            }
            zip.start_file(format!("{name}.npy"), opts)
                .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let tuple = match dims.len() {
                1 => format!("({},)", dims[0]),
                _ => format!("({})", dims.join(", ")),
            };
            let mut header =
                format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple}, }}");
            // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(' ');
            }
            header.push('\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend((header.len() as u16).to_le_bytes());
            bytes.extend(header.as_bytes());
            bytes.extend(m.iter().map(|&v| u8::from(v != 0.0)));
            zip.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        }
        zip.finish()
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    }
    crate::onnx::save::write_atomic(path, buf.get_ref())
}

/// Reads a mask file written by [`save`] (any `.npz` of `uint8`/`bool` arrays).
pub fn load(path: &Path) -> Result<MaskArrays> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: String| Error::data(path.display().to_string(), e);
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a mask file (.npz): {e}")))?;
    let mut out = MaskArrays::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        let total = entry.size();
        let header = crate::data::npy::read_header(&mut entry, Some(total))
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if header.dtype.size() != 1 {
            return Err(bad(format!("{name}: masks are uint8 or bool arrays")));
        }
        let n = header
            .numel()
            .ok_or_else(|| bad(format!("{name}: shape too large")))?;
        let mut raw = Vec::new();
        entry
            .take(n as u64)
            .read_to_end(&mut raw)
            .map_err(|e| Error::io(path, e))?;
        if raw.len() != n {
            return Err(bad(format!("{name}: {} bytes for {n} entries", raw.len())));
        }
        let m = raw.iter().map(|&b| f32::from(u8::from(b != 0))).collect();
        out.insert(name, (header.shape.clone(), m));
    }
    if out.is_empty() {
        return Err(bad("holds no mask".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = crate::temp_dir::TempDir::new("mask-file").unwrap();
        let path = dir.path().join("m.npz");
        let mut masks = MaskArrays::new();
        masks.insert(
            "conv/w".into(),
            (vec![2, 1, 3], vec![1., 0., 1., 0., 0., 1.]),
        );
        masks.insert("fc.w".into(), (vec![3], vec![0., 1., 1.]));
        save(&path, &masks).unwrap();
        assert_eq!(load(&path).unwrap(), masks);
        masks.insert("bad".into(), (vec![4], vec![1.0]));
        assert!(save(&path, &masks).is_err());
        std::fs::write(&path, b"not a zip").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a mask file"));
    }
}
