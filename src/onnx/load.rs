//! Reading ONNX files: one protobuf file, plus external-data files next to it.
//!
//! The whole model file is read (or mapped, see [`super::mapped`]) into one buffer and decoded with `raw_data` as `Bytes` slices of
//! that buffer (no copy). External data files are read once each and sliced the same way.
//! Paths in `external_data.location` are resolved relative to the model's folder; a path that
//! is absolute or leaves that folder is refused, also when it leaves through a symlink (the
//! real path must lie inside the folder's real path). Only regular files are read (no FIFOs or
//! devices), and a tensor's range must lie inside the file. This module does not validate the graph: see
//! [`crate::ir::verify()`].

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};
use crate::error::{Error, Result};

/// Loads a model file and resolves its external data into the tensors' `raw_data`.
///
/// After this call no tensor refers to an external file: each external tensor holds its bytes in
/// `raw_data` and keeps its `external_data` entries (so a writer can reproduce the layout).
pub fn load_model(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let buf = super::mapped::read_file(path).map_err(|e| Error::io(path, e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut model = decode(buf, path)?;
    resolve_external(&mut model, &dir)?;
    Ok(model)
}

/// Decodes a model from bytes; external data (if any) is resolved relative to `dir`.
pub fn load_model_bytes(bytes: Bytes, dir: &Path) -> Result<ModelProto> {
    let mut model = decode(bytes, Path::new("<memory>"))?;
    resolve_external(&mut model, dir)?;
    Ok(model)
}

fn decode(bytes: Bytes, path: &Path) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::Decode {
            path: path.into(),
            msg: "empty file".into(),
        });
    }
    let model = ModelProto::decode(bytes).map_err(|e| Error::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    if model.graph.is_none() {
        return Err(Error::Decode {
            path: path.into(),
            msg: "no graph in the model".into(),
        });
    }
    Ok(model)
}

/// Calls `f` on every tensor of the model: initializers, Constant/attribute tensors (also in
/// subgraphs), sparse tensors' parts, and tensors inside functions and training info.
pub fn for_each_tensor_mut(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    use super::proto::{AttributeProto, GraphProto, NodeProto, SparseTensorProto};
    fn sparse(
        s: &mut SparseTensorProto,
        f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
    ) -> Result<()> {
        if let Some(v) = s.values.as_mut() {
            f(v)?;
        }
        if let Some(i) = s.indices.as_mut() {
            f(i)?;
        }
        Ok(())
    }
    fn attr(
        a: &mut AttributeProto,
        f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
    ) -> Result<()> {
        if let Some(t) = a.t.as_mut() {
            f(t)?;
        }
        for t in &mut a.tensors {
            f(t)?;
        }
        if let Some(s) = a.sparse_tensor.as_mut() {
            sparse(s, f)?;
        }
        for s in &mut a.sparse_tensors {
            sparse(s, f)?;
        }
        if let Some(g) = a.g.as_mut() {
            graph(g, f)?;
        }
        for g in &mut a.graphs {
            graph(g, f)?;
        }
        Ok(())
    }
    fn nodes(
        ns: &mut [NodeProto],
        f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
    ) -> Result<()> {
        for n in ns {
            for a in &mut n.attribute {
                attr(a, f)?;
            }
        }
        Ok(())
    }
    fn graph(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
        for t in &mut g.initializer {
            f(t)?;
        }
        for s in &mut g.sparse_initializer {
            sparse(s, f)?;
        }
        nodes(&mut g.node, f)
    }
    if let Some(g) = model.graph.as_mut() {
        graph(g, f)?;
    }
    for func in &mut model.functions {
        nodes(&mut func.node, f)?;
    }
    for ti in &mut model.training_info {
        if let Some(g) = ti.initialization.as_mut() {
            graph(g, f)?;
        }
        if let Some(g) = ti.algorithm.as_mut() {
            graph(g, f)?;
        }
    }
    Ok(())
}

/// Where a tensor's external bytes are: `(location, offset, length)`.
pub fn external_location(t: &TensorProto) -> Result<(String, u64, Option<u64>)> {
    let name = t.name();
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let parse = |v: &str| {
            v.trim().parse::<u64>().map_err(|_| {
                Error::tensor(
                    name,
                    format!(
                        "external_data {}='{v}' is not a non-negative integer",
                        kv.key()
                    ),
                )
            })
        };
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => offset = parse(kv.value())?,
            "length" => length = Some(parse(kv.value())?),
            _ => {}
        }
    }
    let location =
        location.ok_or_else(|| Error::tensor(name, "external data without a 'location' entry"))?;
    Ok((location, offset, length))
}

/// Resolves `location` under `dir`, refusing absolute paths and `..` that leave the folder.
pub fn safe_join(dir: &Path, location: &str, tensor: &str) -> Result<PathBuf> {
    let rel = Path::new(location);
    let mut depth = 0i32;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::tensor(
                        tensor,
                        format!("external data path '{location}' escapes the model's folder"),
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::tensor(
                    tensor,
                    format!("external data path '{location}' is absolute; it must be relative to the model's folder"),
                ))
            }
        }
    }
    if depth == 0 {
        return Err(Error::tensor(
            tensor,
            format!("external data path '{location}' names no file"),
        ));
    }
    Ok(dir.join(rel))
}

/// The real path of `file` (`dir` joined with `location`), refused unless it lies inside the
/// real folder `dir`: a symlinked file or a symlinked folder on the way that leads outside is an
/// escape just like `..`. `real_dir` caches `dir`'s real path across tensors.
fn confine(
    dir: &Path,
    file: &Path,
    location: &str,
    tensor: &str,
    real_dir: &mut Option<PathBuf>,
) -> Result<PathBuf> {
    if real_dir.is_none() {
        let base = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let real = base
            .canonicalize()
            .map_err(|e| Error::tensor(tensor, format!("model folder {}: {e}", base.display())))?;
        *real_dir = Some(real);
    }
    let root = real_dir.as_deref().unwrap_or(dir);
    let real = file.canonicalize().map_err(|e| {
        Error::tensor(
            tensor,
            format!("external data file {}: {e}", file.display()),
        )
    })?;
    if real == root || !real.starts_with(root) {
        return Err(Error::tensor(
            tensor,
            format!(
                "external data path '{location}' escapes the model's folder through a symlink (it resolves to {})",
                real.display()
            ),
        ));
    }
    Ok(real)
}

fn resolve_external(model: &mut ModelProto, dir: &Path) -> Result<()> {
    let mut files: HashMap<PathBuf, Bytes> = HashMap::new();
    let mut real_dir: Option<PathBuf> = None;
    for_each_tensor_mut(model, &mut |t| {
        if t.data_location != Some(DataLocation::External as i32) {
            return Ok(());
        }
        let name = t.name().to_string();
        let (location, offset, length) = external_location(t)?;
        let joined = safe_join(dir, &location, &name)?;
        let file = confine(dir, &joined, &location, &name, &mut real_dir)?;
        if !files.contains_key(&file) {
            let data = super::mapped::read_file(&file).map_err(|e| {
                Error::tensor(&name, format!("external data file {}: {e}", file.display()))
            })?;
            files.insert(file.clone(), data);
        }
        let data = &files[&file];
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(data.len() as u64),
        };
        match end {
            Some(end) if offset <= end && end <= data.len() as u64 => {
                t.raw_data = Some(data.slice(offset as usize..end as usize));
                Ok(())
            }
            _ => Err(Error::tensor(
                &name,
                format!(
                    "external data range offset={offset} length={length:?} is outside {} ({} bytes)",
                    file.display(),
                    data.len()
                ),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let d = Path::new("/models");
        assert_eq!(
            safe_join(d, "w.data", "t").unwrap(),
            Path::new("/models/w.data")
        );
        assert_eq!(
            safe_join(d, "sub/../w.data", "t").unwrap(),
            Path::new("/models/sub/../w.data")
        );
        for bad in ["../w.data", "sub/../../w.data", "/etc/passwd", "", "."] {
            assert!(safe_join(d, bad, "t").is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn truncated_and_empty_bytes_fail_cleanly() {
        assert!(load_model_bytes(Bytes::new(), Path::new(".")).is_err());
        assert!(load_model_bytes(
            Bytes::from_static(&[0x3a, 0xff, 0xff, 0x01]),
            Path::new(".")
        )
        .is_err());
    }
}
