//! The tract backend (pure Rust, always available).
//!
//! The model is parsed once at load; the runnable plan is built lazily at the first run, with
//! input facts set to the given tensors' types and concrete shapes, and cached per set of input
//! shapes. Declared shapes of other values (`value_info`, outputs) are ignored. Initializers that IR-3 models also list as graph inputs are constants to tract, so
//! only real inputs get facts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, TValue,
    TVec, Tensor as TractTensor, TypedRunnableModel,
};

use super::Session;
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

const BACKEND: &str = "tract";

fn err(msg: impl Into<String>) -> Error {
    Error::Runtime {
        backend: BACKEND,
        msg: msg.into(),
    }
}

/// Why tract (0.23.9) must not be handed `model`: it reads the channel axis of a
/// BatchNormalization input of rank 1 (which the spec allows, with one channel) out of
/// bounds, which is undefined behaviour (a crash, not an error). `None`: nothing known.
pub fn hazard(model: &crate::ir::Model) -> Option<String> {
    let g = &model.graph;
    let norms: Vec<_> = g
        .node_ids()
        .filter(|&n| g.node(n).op_type == "BatchNormalization")
        .collect();
    if norms.is_empty() {
        return None;
    }
    let shapes = crate::analysis::infer_shapes(model).ok()?;
    norms.into_iter().find_map(|n| {
        let node = g.node(n);
        let rank = shapes.get(node.input(0)?)?.shape.as_ref()?.len();
        (rank < 2).then(|| {
            format!(
                "node '{}' (BatchNormalization) has an input of rank {rank}, which tract reads out of bounds",
                node.name
            )
        })
    })
}

/// Key of a cached plan: each input's dtype and shape, in tract input order.
type PlanKey = Vec<(DType, Vec<usize>)>;

/// A model loaded into tract.
pub struct TractSession {
    model: InferenceModel,
    /// Whether plans are optimised (decluttered and compiled) or run as typed.
    optimize: bool,
    /// Real (non-initializer) input names, in tract input order.
    inputs: Vec<String>,
    /// Graph output names, in order.
    outputs: Vec<String>,
    plans: HashMap<PlanKey, Arc<TypedRunnableModel>>,
    path: String,
}

impl TractSession {
    /// Parses a model file (external data included). Nothing is optimised until the first run.
    pub fn load(path: &Path) -> Result<TractSession> {
        let shown = path.display().to_string();
        // Declared shapes of intermediate values and outputs may carry symbols (the batch) that
        // would clash with the concrete input facts set at run time: the inputs decide.
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true)
            .model_for_path(path)
            .map_err(|e| err(format!("{shown}: {e:#}")))?;
        let name_of = |o: &tract_onnx::prelude::OutletId| -> String {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        };
        let inputs = model
            .input_outlets()
            .map_err(|e| err(format!("{shown}: {e}")))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let outputs = model
            .output_outlets()
            .map_err(|e| err(format!("{shown}: {e}")))?
            .iter()
            .map(name_of)
            .collect();
        Ok(TractSession {
            model,
            optimize: true,
            inputs,
            outputs,
            plans: HashMap::new(),
            path: shown,
        })
    }

    /// [`load`](Self::load), with plans run as typed instead of optimised when `optimize` is
    /// false (slower runs; much faster to build on deep graphs, whose decluttering grows
    /// quadratically with depth: a 2,000-node chain takes 18 s).
    pub fn load_opts(path: &Path, optimize: bool) -> Result<TractSession> {
        let mut s = Self::load(path)?;
        s.optimize = optimize;
        Ok(s)
    }

    /// The plan for these input types and shapes, built on first use.
    fn plan(&mut self, key: &PlanKey) -> Result<Arc<TypedRunnableModel>> {
        if let Some(p) = self.plans.get(key) {
            return Ok(p.clone());
        }
        let ctx = |e: tract_onnx::prelude::TractError| err(format!("{}: {e:#}", self.path));
        let mut model = self.model.clone();
        for (ix, ((dtype, shape), name)) in key.iter().zip(&self.inputs).enumerate() {
            let dt = datum_type(*dtype)
                .ok_or_else(|| err(format!("input '{name}': {dtype} tensors are not supported")))?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, shape.as_slice()))
                .map_err(ctx)?;
        }
        let plan = if self.optimize {
            model.into_optimized().and_then(|m| m.into_runnable())
        } else {
            // Large graphs (checks): the plain evaluation order, since tract's memory-saving
            // one costs more than the run on long chains (20,000 nodes: seconds).
            let opts = tract_onnx::prelude::RunOptions {
                skip_order_opt_ram: true,
                ..Default::default()
            };
            model.into_typed().and_then(|m| {
                tract_onnx::tract_core::internal::SimplePlan::new_with_options(m, &opts)
            })
        }
        .map_err(ctx)?;
        self.plans.insert(key.clone(), plan.clone());
        Ok(plan)
    }
}

impl Session for TractSession {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut ordered: Vec<&Tensor> = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| err(format!("input '{name}' not given")))?;
            ordered.push(t);
        }
        if let Some((n, _)) = inputs.iter().find(|(n, _)| !self.inputs.contains(n)) {
            return Err(err(format!("'{n}' is not an input of the model")));
        }
        let key: PlanKey = ordered
            .iter()
            .map(|t| (t.dtype(), t.shape().to_vec()))
            .collect();
        let plan = self.plan(&key)?;
        let mut feed: TVec<TValue> = TVec::new();
        for (name, t) in self.inputs.iter().zip(&ordered) {
            feed.push(to_tract(name, t)?.into());
        }
        let outs = plan.run(feed).map_err(|e| err(format!("run: {e:#}")))?;
        if outs.len() != self.outputs.len() {
            return Err(err(format!(
                "{} outputs returned, the model has {}",
                outs.len(),
                self.outputs.len()
            )));
        }
        self.outputs
            .iter()
            .zip(outs.iter())
            .map(|(name, v)| Ok((name.clone(), from_tract(name, v)?)))
            .collect()
    }
}

/// The tract datum type of an IR dtype.
fn datum_type(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::I16 => DatumType::I16,
        DType::I8 => DatumType::I8,
        DType::U64 => DatumType::U64,
        DType::U32 => DatumType::U32,
        DType::U16 => DatumType::U16,
        DType::U8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
        _ => return None,
    })
}

/// The IR dtype of a tract datum type.
fn ir_dtype(d: DatumType) -> Option<DType> {
    Some(match d {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I64 => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::I16 => DType::I16,
        DatumType::I8 => DType::I8,
        DatumType::U64 => DType::U64,
        DatumType::U32 => DType::U32,
        DatumType::U16 => DType::U16,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        _ => return None,
    })
}

fn to_tract(name: &str, t: &Tensor) -> Result<TractTensor> {
    let dt = datum_type(t.dtype()).ok_or_else(|| {
        err(format!(
            "input '{name}': {} tensors are not supported",
            t.dtype()
        ))
    })?;
    if t.dtype() == DType::Bool && t.raw().iter().any(|&b| b > 1) {
        return Err(err(format!("input '{name}': bool bytes must be 0 or 1")));
    }
    // SAFETY: every datum type above is plain old data of the same little-endian layout as the
    // IR's raw bytes (bools checked to be 0/1); from_raw_dt checks the length against the shape.
    unsafe { TractTensor::from_raw_dt(dt, t.shape(), t.raw()) }
        .map_err(|e| err(format!("input '{name}': {e}")))
}

fn from_tract(name: &str, v: &TractTensor) -> Result<Tensor> {
    let ctx = |e: tract_onnx::prelude::TractError| err(format!("output '{name}': {e}"));
    let v = if v.datum_type() == DatumType::TDim {
        v.cast_to_dt(DatumType::I64).map_err(ctx)?
    } else {
        std::borrow::Cow::Borrowed(v)
    };
    let dtype = ir_dtype(v.datum_type()).ok_or_else(|| {
        err(format!(
            "output '{name}': {:?} tensors are not supported",
            v.datum_type()
        ))
    })?;
    let bytes = v.try_as_plain_ram().map_err(ctx)?.as_bytes().to_vec();
    Tensor::from_raw(dtype, v.shape().to_vec(), bytes.into())
        .map_err(|e| err(format!("output '{name}': {e}")))
}
