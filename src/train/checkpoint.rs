//! The checkpoint written after every epoch next to the output model `OUT`:
//!
//! * `OUT.state-eN.onnx`: every carried tensor (parameters, optimizer state, running
//!   statistics) as an initializer of an otherwise empty ONNX graph, named by its step input;
//! * `OUT.train.json`: the sidecar (`"format": "lopper-train/1"`) with the epoch, the global
//!   step, the splitmix64 state, the seed and the state file's name (relative to the sidecar).
//!
//! Each file is written atomically, the state file under a new name per epoch and the sidecar
//! last (then the previous state file is removed), so an interrupted run leaves the previous
//! checkpoint usable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::Tensor;
use crate::onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto};
use crate::onnx::save::write_atomic;
use crate::rng::SplitMix64;

/// The sidecar's format tag.
pub const CHECKPOINT_FORMAT: &str = "lopper-train/1";

/// The sidecar of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sidecar {
    format: String,
    /// Epochs completed.
    epoch: usize,
    /// Steps completed (the next step feeds `step + 1`).
    step: usize,
    /// The splitmix64 state after `epoch` epochs.
    rng: u64,
    seed: u64,
    /// The state file, relative to the sidecar's folder.
    state: String,
    /// The inference model written with it.
    model: String,
    /// Top-1 on the held-out split after this epoch.
    eval_top1: Option<f64>,
}

/// `OUT.train.json` for the output `OUT`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".train.json");
    PathBuf::from(s)
}

fn write_state(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let proto = ModelProto {
        ir_version: Some(8),
        producer_name: Some("lopper train (checkpoint state)".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("train_state".into()),
            initializer: tensors.iter().map(|(n, t)| t.to_proto(n)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::onnx::save_model(&proto, path, &Default::default())
}

fn read_state(path: &Path) -> Result<HashMap<String, Tensor>> {
    let proto = crate::onnx::load_model(path)?;
    let graph = proto
        .graph
        .ok_or_else(|| Error::data(path.display(), "no graph in the state file"))?;
    let mut out = HashMap::new();
    for t in &graph.initializer {
        out.insert(t.name().to_string(), Tensor::from_proto(t)?);
    }
    Ok(out)
}

/// Reads a checkpoint: the sidecar (given, or next to the output model given) and its state.
fn read_checkpoint(path: &Path) -> Result<(Sidecar, HashMap<String, Tensor>)> {
    let side = if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        sidecar_path(path)
    };
    let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
    let sc: Sidecar = serde_json::from_str(&text)
        .map_err(|e| Error::data(side.display(), format!("not a checkpoint sidecar: {e}")))?;
    if sc.format != CHECKPOINT_FORMAT {
        return Err(Error::data(
            side.display(),
            format!("format '{}', expected '{CHECKPOINT_FORMAT}'", sc.format),
        ));
    }
    let dir = side.parent().unwrap_or(Path::new("."));
    let state = read_state(&dir.join(&sc.state))?;
    Ok((sc, state))
}

/// Where a resumed run continues: after `epoch` epochs and `step` steps, with the stream in
/// the state it had then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed.
    pub step: usize,
    /// The run's stream.
    pub rng: SplitMix64,
}

/// Reads the checkpoint at `path` (sidecar or output model) into `carried` (every step input
/// the run carries, by name; each must be in the state file with the same shape and type) and
/// returns where the run continues. `epochs`: the run's total, which must be above the
/// checkpoint's.
pub(crate) fn restore(
    path: &Path,
    epochs: usize,
    carried: &mut [(String, Tensor)],
) -> Result<Position> {
    let (sc, mut state) = read_checkpoint(path)?;
    if sc.epoch >= epochs {
        return Err(Error::Usage(format!(
            "the checkpoint is at epoch {}; pass --epochs above it to continue",
            sc.epoch
        )));
    }
    for (name, t) in carried.iter_mut() {
        let v = state.remove(name.as_str()).ok_or_else(|| {
            Error::data(
                path.display(),
                format!(
                    "the checkpoint has no tensor '{name}' (made with another model, \
                     optimizer or --freeze?)"
                ),
            )
        })?;
        if v.shape() != t.shape() || v.dtype() != t.dtype() {
            return Err(Error::data(
                path.display(),
                format!(
                    "'{name}' is {} {:?} in the checkpoint, the step wants {} {:?}",
                    v.dtype(),
                    v.shape(),
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        *t = v;
    }
    Ok(Position {
        epoch: sc.epoch,
        step: sc.step,
        rng: SplitMix64(sc.rng),
    })
}

/// Writes the checkpoint of the run whose output model is `output` at `at` (the epoch just
/// finished): the state file of `carried`, then the sidecar, then removes the previous
/// state file.
pub(crate) fn save(
    output: &Path,
    at: Position,
    seed: u64,
    eval_top1: Option<f64>,
    carried: &[(String, Tensor)],
) -> Result<()> {
    let side = sidecar_path(output);
    let file_name = output.file_name().map(|n| n.to_string_lossy().into_owned());
    let state_name = format!(
        "{}.state-e{}.onnx",
        file_name.clone().unwrap_or_else(|| "trained.onnx".into()),
        at.epoch
    );
    let dir_out = side.parent().unwrap_or(Path::new("."));
    write_state(&dir_out.join(&state_name), carried)?;
    let previous = read_checkpoint(&side).ok().map(|(s, _)| s.state);
    let sc = Sidecar {
        format: CHECKPOINT_FORMAT.into(),
        epoch: at.epoch,
        step: at.step,
        rng: at.rng.0,
        seed,
        state: state_name.clone(),
        model: file_name.unwrap_or_default(),
        eval_top1,
    };
    let json = serde_json::to_string_pretty(&sc)
        .map_err(|e| Error::Usage(format!("writing the checkpoint sidecar: {e}")))?;
    write_atomic(&side, json.as_bytes())?;
    if let Some(prev) = previous.filter(|p| *p != state_name) {
        let _ = std::fs::remove_file(dir_out.join(prev));
    }
    Ok(())
}
