//! Writing ONNX files, atomically, streaming, with optional external data.
//!
//! The protobuf is written field by field: the graph's initializers and each tensor's
//! `raw_data` go straight from their (shared) buffers to the file, so saving needs no second copy
//! of the weights in memory. Field order differs from a one-shot encode only in that large
//! fields come last, which protobuf readers accept. Files appear under their final name only
//! when complete (temporary file + rename). This module does not check the graph.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::load::for_each_tensor_mut;
use super::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};
use crate::error::{Error, Result};
use crate::temp_dir::Registered;

/// The highest IR version lopper writes (what ONNX Runtime 1.31 accepts).
pub const MAX_IR_VERSION: i64 = 13;

/// Protobuf's hard limit for one message; models above it need external data.
const PROTOBUF_LIMIT: u64 = 2 * 1024 * 1024 * 1024 - 1;

/// Where tensor bytes go when saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Inline, unless the file would pass protobuf's 2 GB limit or the source model used
    /// external data (then external, like the source).
    #[default]
    Auto,
    /// Always write tensors of at least `threshold` bytes to a `.data` file next to the model.
    Always,
    /// Always inline (fails above 2 GB).
    Never,
}

/// Options for [`save_model`].
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Inline or external tensor data.
    pub external: ExternalData,
    /// Tensors smaller than this stay inline even when writing external data.
    pub threshold: usize,
    /// With [`ExternalData::Auto`], tensor bytes above which the data goes external
    /// (default: protobuf's 2 GB limit less 64 MB for the graph itself).
    pub inline_limit: u64,
    /// Whether the files are synced to disk before the rename (default). Scratch copies that
    /// live only for one run (the oracle's) skip it: syncing 180 MB took most of a second.
    pub durable: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external: ExternalData::Auto,
            threshold: 1024,
            inline_limit: PROTOBUF_LIMIT - (64 << 20),
            durable: true,
        }
    }
}

/// Saves `model` to `path`. External data, when used, goes to `<file name>.data` beside it.
///
/// Tensors may carry their bytes in `raw_data` whatever their `data_location` says (that is how
/// [`super::load_model`] leaves them); this function decides the layout afresh.
pub fn save_model(model: &ModelProto, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<()> {
    let path = path.as_ref();
    let mut model = model.clone(); // cheap: tensor bytes are shared, not copied
    if model.ir_version.unwrap_or(0) > MAX_IR_VERSION {
        model.ir_version = Some(MAX_IR_VERSION);
    }
    let file_name = path
        .file_name()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
    let data_name = format!("{file_name}.data");
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };

    let (raw_total, had_external) = survey(&mut model)?;
    let external = match opts.external {
        ExternalData::Always => true,
        ExternalData::Never => false,
        ExternalData::Auto => had_external || raw_total as u64 > opts.inline_limit,
    };

    let data_path = dir.join(&data_name);
    let data_tmp = tmp_path(&data_path);
    // Removed on an interrupting signal while it exists (see `crate::temp_dir`).
    let _data_reg: Option<Registered>;
    if external {
        let (reg, file) = Registered::create(&data_tmp, |p| std::fs::File::create(p))
            .map_err(|e| Error::io(&data_tmp, e))?;
        _data_reg = Some(reg);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        let res = for_each_tensor_mut(&mut model, &mut |t| {
            let Some(raw) = t.raw_data.clone() else {
                return Ok(());
            };
            if raw.len() < opts.threshold.max(1) {
                make_inline(t);
                return Ok(());
            }
            let align = if raw.len() >= 65536 { 4096 } else { 16 };
            let pad = (align - offset % align) % align;
            w.write_all(&vec![0u8; pad as usize])
                .map_err(|e| Error::io(&data_tmp, e))?;
            offset += pad;
            w.write_all(&raw).map_err(|e| Error::io(&data_tmp, e))?;
            t.raw_data = None;
            t.data_location = Some(DataLocation::External as i32);
            t.external_data = vec![
                entry("location", &data_name),
                entry("offset", &offset.to_string()),
                entry("length", &raw.len().to_string()),
            ];
            offset += raw.len() as u64;
            Ok(())
        });
        let res = res.and_then(|_| {
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&data_tmp, e.into_error()))?;
            if opts.durable {
                file.sync_all().map_err(|e| Error::io(&data_tmp, e))?;
            }
            Ok(())
        });
        if let Err(e) = res {
            let _ = std::fs::remove_file(&data_tmp);
            return Err(e);
        }
    } else {
        _data_reg = None;
        if raw_total as u64 > PROTOBUF_LIMIT {
            return Err(Error::Usage(format!(
                "{}: {} bytes of tensors do not fit in one protobuf file (2 GB); save with external data",
                path.display(),
                raw_total
            )));
        }
        for_each_tensor_mut(&mut model, &mut |t| {
            make_inline(t);
            Ok(())
        })?;
    }

    let tmp = tmp_path(path);
    let mut _reg = None;
    let res = (|| {
        let (reg, file) = Registered::create(&tmp, |p| std::fs::File::create(p))
            .map_err(|e| Error::io(&tmp, e))?;
        _reg = Some(reg);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_model(&mut w, &model).map_err(|e| Error::io(&tmp, e))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        if opts.durable {
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        }
        if external {
            std::fs::rename(&data_tmp, &data_path).map_err(|e| Error::io(&data_path, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&data_tmp);
    }
    res
}

/// Encodes a model to bytes in memory (for small models and tests).
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.encoded_len());
    // Writing to a Vec cannot fail.
    let _ = write_model(&mut out, model);
    out
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed, so
/// the file appears only when complete and an existing one is replaced whole. Used for the
/// small side files (plans, reports, plots); it does not create missing folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut _reg = None;
    let res = (|| {
        let (reg, mut file) = Registered::create(&tmp, |p| std::fs::File::create(p))
            .map_err(|e| Error::io(&tmp, e))?;
        _reg = Some(reg);
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Checks, before a command computes or writes anything, that a file can be written at each
/// of `paths`: it is not a folder, and its folder exists and accepts a new file (probed by
/// creating and removing the temporary file an atomic write would use). The error names the
/// path; a run with one bad output path then writes none of the others.
pub fn check_writable<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    for path in paths {
        let bad =
            |why: String| Error::Usage(format!("{}: cannot be written: {why}", path.display()));
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return Err(bad("not a file name".into()));
        }
        if path.is_dir() {
            return Err(bad("it is a folder".into()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(bad(format!("no folder {}", parent.display())));
        }
        let probe = tmp_path(path);
        let (_reg, _file) = Registered::create(&probe, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
        })
        .map_err(|e| bad(format!("folder {}: {e}", parent.display())))?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

fn make_inline(t: &mut TensorProto) {
    if t.data_location == Some(DataLocation::External as i32) {
        t.data_location = None;
        t.external_data.clear();
    }
}

/// Total raw bytes of all tensors, and whether any tensor came from external data.
fn survey(model: &mut ModelProto) -> Result<(usize, bool)> {
    let mut total = 0usize;
    let mut external = false;
    for_each_tensor_mut(model, &mut |t| {
        total += t.raw_data.as_ref().map_or(0, Bytes::len);
        external |= t.data_location == Some(DataLocation::External as i32);
        Ok(())
    })?;
    Ok((total, external))
}

fn write_len_prefixed(w: &mut impl Write, tag: u32, len: usize) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(16);
    encode_key(tag, WireType::LengthDelimited, &mut head);
    encode_varint(len as u64, &mut head);
    w.write_all(&head)
}

fn write_model(w: &mut impl Write, m: &ModelProto) -> std::io::Result<()> {
    let mut head = m.clone();
    let graph = head.graph.take();
    w.write_all(&head.encode_to_vec())?;
    if let Some(g) = graph {
        write_len_prefixed(w, 7, g.encoded_len())?;
        write_graph(w, &g)?;
    }
    Ok(())
}

fn write_graph(w: &mut impl Write, g: &GraphProto) -> std::io::Result<()> {
    let mut head = g.clone();
    let inits = std::mem::take(&mut head.initializer);
    w.write_all(&head.encode_to_vec())?;
    for t in &inits {
        write_len_prefixed(w, 5, t.encoded_len())?;
        write_tensor(w, t)?;
    }
    Ok(())
}

fn write_tensor(w: &mut impl Write, t: &TensorProto) -> std::io::Result<()> {
    let mut head = t.clone();
    let raw = head.raw_data.take();
    w.write_all(&head.encode_to_vec())?;
    if let Some(raw) = raw {
        write_len_prefixed(w, 9, raw.len())?;
        w.write_all(&raw)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::load_model;
    use crate::onnx::proto::ValueInfoProto;

    fn model_with(weight: Vec<f32>) -> ModelProto {
        let t = TensorProto {
            name: Some("w".into()),
            dims: vec![weight.len() as i64],
            data_type: Some(1),
            raw_data: Some(
                weight
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(99),
            graph: Some(GraphProto {
                initializer: vec![t],
                output: vec![ValueInfoProto {
                    name: Some("w".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn auto_goes_external_above_the_limit_and_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let weight: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5).collect();
        let m = model_with(weight.clone());
        let path = dir.path().join("m.onnx");
        let opts = SaveOptions {
            inline_limit: 10_000,
            ..Default::default()
        };
        save_model(&m, &path, &opts).unwrap();
        assert!(
            dir.path().join("m.onnx.data").exists(),
            "20 kB of weights above a 10 kB limit go external"
        );
        let back = load_model(&path).unwrap();
        let t = &back.graph.as_ref().unwrap().initializer[0];
        assert_eq!(
            t.raw_data,
            m.graph.as_ref().unwrap().initializer[0].raw_data
        );
        assert_eq!(
            back.ir_version,
            Some(MAX_IR_VERSION),
            "IR version is capped"
        );
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // Saving the reloaded model inline again.
        let path2 = dir.path().join("inline.onnx");
        save_model(
            &back,
            &path2,
            &SaveOptions {
                external: ExternalData::Never,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!dir.path().join("inline.onnx.data").exists());
        let again = load_model(&path2).unwrap();
        assert_eq!(again.graph.unwrap().initializer[0].raw_data, t.raw_data);
    }

    #[test]
    fn failed_save_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no_such_dir").join("m.onnx");
        assert!(save_model(&model_with(vec![1.0]), &path, &SaveOptions::default()).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn streamed_encoding_decodes_to_the_same_message() {
        let m = model_with((0..100).map(|i| i as f32).collect());
        let bytes = encode_model(&m);
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), m);
    }
}
