//! The ONNX Runtime backend, through the `ort` crate with the library loaded at run time.
//!
//! The shared library is looked up, in order: `ORT_DYLIB_PATH`; the project's install folder
//! `.deps/python/onnxruntime/capi/libonnxruntime.so*` (under the crate root, then under the
//! current directory), as `scripts/setup-test-env.sh` leaves it; an `onnxruntime` Python package
//! that `python3` can import. It is loaded once per process.
//!
//! Tensors cross the boundary as raw bytes: inputs are copied into ORT-allocated tensors of the
//! same element type, outputs are copied back byte for byte, so results can be compared exactly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session as OrtInner};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType};

use ort::ep::{ExecutionProvider, CUDA};

use super::{Device, RuntimeOptions, Session};
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

const BACKEND: &str = "ort";
const NOT_FOUND: &str =
    "ONNX Runtime library not found: run `make setup` in the lopper checkout (installs it into .deps/), `pip install onnxruntime`, or set ORT_DYLIB_PATH to a libonnxruntime";

fn err(msg: impl Into<String>) -> Error {
    Error::Runtime {
        backend: BACKEND,
        msg: msg.into(),
    }
}

/// The process-wide ORT environment and the library it came from (created once; later calls
/// repeat the first error).
static ENV: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

fn environment() -> Result<&'static (ort::environment::Environment, PathBuf)> {
    ENV.get_or_init(|| {
        let lib = find_library().ok_or_else(|| NOT_FOUND.to_string())?;
        if !lib.is_file() {
            return Err(format!(
                "ONNX Runtime library not found: {} does not exist (from ORT_DYLIB_PATH)",
                lib.display()
            ));
        }
        let builder =
            ort::init_from(&lib).map_err(|e| format!("loading {}: {e}", lib.display()))?;
        let env = builder
            .with_name("lopper")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("creating the environment ({}): {e}", lib.display()))?;
        // Failures come back as errors, which lopper reports on one line; ONNX Runtime's own
        // log would print them a second time, over several lines.
        env.set_log_level(ort::logging::LogLevel::Fatal);
        Ok((env, lib))
    })
    .as_ref()
    .map_err(|e| err(e.clone()))
}

/// Loads ONNX Runtime's library (once per process) and returns its path; the error says what
/// is missing.
pub fn library() -> Result<&'static Path> {
    environment().map(|(_, lib)| lib.as_path())
}

/// Finds `libonnxruntime.so*` (see the module documentation for the order).
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut roots = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    for root in roots {
        if let Some(lib) = lib_in(&root.join(".deps/python/onnxruntime/capi")) {
            return Some(lib);
        }
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    lib_in(&Path::new(&dir).join("capi"))
}

/// The first `libonnxruntime.so*` in `dir` (by name, so `libonnxruntime.so` before versions).
fn lib_in(dir: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.into_iter().next()
}

/// A model loaded into ONNX Runtime.
pub struct OrtSession {
    session: OrtInner,
    outputs: Vec<String>,
}

impl OrtSession {
    /// Loads a model file with ONNX Runtime's default threading.
    pub fn load(path: &Path) -> Result<OrtSession> {
        OrtSession::load_opts(path, &RuntimeOptions::default())
    }

    /// Loads a model file; `threads` sets the intra-op thread count (`None`: ORT's default).
    pub fn load_with(path: &Path, threads: Option<usize>) -> Result<OrtSession> {
        OrtSession::load_opts(
            path,
            &RuntimeOptions {
                threads,
                ..RuntimeOptions::default()
            },
        )
    }

    /// Loads a model file on a device with a thread count. `Device::Cuda` registers the CUDA
    /// execution provider and fails, naming the library, when that provider is not available.
    pub fn load_opts(path: &Path, opts: &RuntimeOptions) -> Result<OrtSession> {
        Self::load_level(path, opts, Level::Full)
    }

    /// [`load_opts`](Self::load_opts) for a model run only a few times (the equivalence
    /// oracle): ONNX Runtime's basic graph rewrites only, or none when `optimize` is false (a
    /// 20,000-node chain loads in 1.1 s instead of 6.1 s), and no weight pre-packing. The
    /// layout rewrites and pre-packing of full optimisation copy every convolution weight:
    /// a ResNet-50 (102 MB) loaded in 0.35 s holding 257 MB, against 0.01 s and 110 MB after
    /// its runs with basic rewrites and its weights in external data (which ONNX Runtime
    /// maps instead of reading), for runs at most 1.3 times slower.
    pub fn load_for_check(
        path: &Path,
        opts: &RuntimeOptions,
        optimize: bool,
    ) -> Result<OrtSession> {
        Self::load_level(
            path,
            opts,
            if optimize { Level::Basic } else { Level::None },
        )
    }

    fn load_level(path: &Path, opts: &RuntimeOptions, level: Level) -> Result<OrtSession> {
        let session = build(path, opts, level)?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(OrtSession { session, outputs })
    }
}

/// The channel block of ONNX Runtime's blocked (NCHWc) CPU convolution kernels on this
/// machine, or `None` when they do not run here (no such kernels for the CPU, or no ONNX
/// Runtime). Found once per process by running
/// [`crate::train::block_convolutions::probe_model`] for blocks 16 and 8 and keeping the one
/// whose blocked convolution reproduces the plain one: no CPU feature table to keep in step
/// with ONNX Runtime's own dispatch. `LOPPER_BLOCKED_CONV=0` turns the lowering off.
pub fn channel_block() -> Option<usize> {
    static BLOCK: OnceLock<Option<usize>> = OnceLock::new();
    *BLOCK.get_or_init(|| {
        if std::env::var("LOPPER_BLOCKED_CONV").is_ok_and(|v| v == "0") {
            return None;
        }
        find_library()?;
        [16, 8]
            .into_iter()
            .find(|&b| probe_block(b).unwrap_or(false))
    })
}

/// Whether every blocked convolution of the probe model lowered with block `b` agrees with its
/// plain twin.
fn probe_block(b: usize) -> Result<bool> {
    let model = crate::train::block_convolutions::probe_model(b)?;
    let dir = crate::temp_dir::TempDir::new("nchwc-probe")?;
    let path = dir.path().join("probe.onnx");
    model.save(&path, &Default::default())?;
    let opts = RuntimeOptions {
        threads: Some(1),
        ..RuntimeOptions::default()
    };
    let mut s = OrtSession::load_for_check(&path, &opts, true)?;
    let out = s.run(&crate::oracle::random_inputs(&model, 1)?)?;
    // Outputs in pairs: each form's plain convolution, then its blocked one.
    if out.is_empty() || out.len() % 2 != 0 {
        return Ok(false);
    }
    for pair in out.chunks(2) {
        if crate::oracle::rel_error(&pair[1].0, &pair[0].1, &pair[1].1)? > 1e-4 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How much of ONNX Runtime's graph optimisation a session gets.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// All of it, with weight pre-packing (ONNX Runtime's default: sessions that run often).
    Full,
    /// Basic rewrites, no pre-packing (sessions that run a few times).
    Basic,
    /// None (very deep graphs run a few times).
    None,
}

/// An ORT session for `path` with `opts` (threads, spinning, device) at an optimisation level.
fn build(path: &Path, opts: &RuntimeOptions, level: Level) -> Result<OrtInner> {
    {
        let (env, lib) = environment()?;
        let ctx = |e: &dyn std::fmt::Display| err(format!("{}: {e}", path.display()));
        let mut builder = OrtInner::builder(env).map_err(|e| ctx(&e))?;
        let graph_level = match level {
            Level::Full => None,
            Level::Basic => Some(GraphOptimizationLevel::Level1),
            Level::None => Some(GraphOptimizationLevel::Disable),
        };
        if let Some(l) = graph_level {
            builder = builder
                .with_optimization_level(l)
                .map_err(|e| ctx(&e))?
                .with_prepacking(false)
                .map_err(|e| ctx(&e))?;
        }
        // A developer's hook: `LOPPER_ORT_PROFILE=PREFIX` makes ONNX Runtime write each
        // session's per-kernel profile to `PREFIX_<date>.json` when the session ends.
        if let Some(prefix) = std::env::var_os("LOPPER_ORT_PROFILE") {
            builder = builder.with_profiling(prefix).map_err(|e| ctx(&e))?;
        }
        // lopper's own kernels (`ai.lopper`), for train steps that use them.
        let kernels = super::kernels::domain().map_err(|e| ctx(&e))?;
        builder = builder.with_operators(kernels).map_err(|e| ctx(&e))?;
        if let Some(n) = opts.threads {
            builder = builder.with_intra_threads(n).map_err(|e| ctx(&e))?;
        }
        if let Some(spin) = opts.spinning {
            builder = builder.with_intra_op_spinning(spin).map_err(|e| ctx(&e))?;
        }
        if opts.device == Device::Cuda {
            let available = CUDA::is_available().map_err(|e| ctx(&e))?;
            if !available {
                return Err(err(format!(
                    "CUDA execution provider not available in {}: install onnxruntime-gpu \
                     and point ORT_DYLIB_PATH at its libonnxruntime.so",
                    lib.display()
                )));
            }
            CUDA::default().register(&mut builder).map_err(|e| {
                err(format!(
                    "CUDA execution provider of {} failed to start (CUDA/cuDNN libraries, \
                     driver): {e}",
                    lib.display()
                ))
            })?;
        }
        builder.commit_from_file(path).map_err(|e| ctx(&e))
    }
}

/// A session whose *carried* tensors (each input fed, from the second run on, by one output
/// of the run before: weights, optimizer state, running statistics of a train step) stay in
/// ONNX Runtime's memory between runs, on the session's device (the GPU with
/// `Device::Cuda`). Two buffer sets are bound alternately through an I/O binding: a run reads
/// set *k* and writes set *1−k*, so nothing crosses to the host unless [`Self::fetch`] asks.
/// Per-run inputs (the batch, scalars) are copied in each run; the other outputs come back to
/// the host. It does not check that a carried output has its input's shape and type (the
/// train-step compiler guarantees it).
pub struct CarriedSession {
    session: OrtInner,
    binding: IoBinding,
    /// `(input, output)` names per carried tensor.
    pairs: Vec<(String, String)>,
    /// The two buffer sets, one tensor per pair; `sets[current]` holds the latest values.
    sets: [Vec<DynTensor>; 2],
    current: usize,
    /// Outputs returned to the host, in graph order.
    returned: Vec<String>,
    cpu: MemoryInfo<'static>,
    on_device: bool,
}

impl CarriedSession {
    /// Loads `path` with `opts`; `carried` lists `(input, output, initial value)`.
    pub fn new(
        path: &Path,
        opts: &RuntimeOptions,
        carried: &[(String, String, Tensor)],
    ) -> Result<CarriedSession> {
        let session = build(path, opts, Level::Full)?;
        let ctx = |e: &dyn std::fmt::Display| err(format!("{}: {e}", path.display()));
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for (i, o, _) in carried {
            if !outputs.contains(o) {
                return Err(err(format!(
                    "{}: carried input '{i}' names output '{o}', which the model lacks",
                    path.display()
                )));
            }
        }
        let returned = outputs
            .into_iter()
            .filter(|o| !carried.iter().any(|(_, c, _)| c == o))
            .collect();
        let on_device = opts.device == Device::Cuda;
        let device_alloc = if on_device {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(|e| ctx(&e))?;
            Some(Allocator::new(&session, info).map_err(|e| ctx(&e))?)
        } else {
            None
        };
        let mut sets: [Vec<DynTensor>; 2] = [Vec::new(), Vec::new()];
        for (name, _, t) in carried {
            let host = to_ort(name, t)?;
            match &device_alloc {
                None => {
                    sets[1].push(to_ort(name, t)?);
                    sets[0].push(host);
                }
                Some(alloc) => {
                    for set in sets.iter_mut() {
                        let mut dev =
                            DynTensor::new(alloc, *host.data_type(), host.shape().clone())
                                .map_err(|e| err(format!("'{name}' on the device: {e}")))?;
                        host.copy_into(&mut dev)
                            .map_err(|e| err(format!("'{name}' to the device: {e}")))?;
                        set.push(dev);
                    }
                }
            }
        }
        let binding = session.create_binding().map_err(|e| ctx(&e))?;
        let cpu = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| ctx(&e))?;
        Ok(CarriedSession {
            session,
            binding,
            pairs: carried
                .iter()
                .map(|(i, o, _)| (i.clone(), o.clone()))
                .collect(),
            sets,
            current: 0,
            returned,
            cpu,
            on_device,
        })
    }

    /// One run with the per-run `inputs`; returns the outputs that are not carried, by name, in
    /// graph order. The carried tensors advance to this run's outputs.
    pub fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let (cur, next) = (self.current, 1 - self.current);
        let b = &mut self.binding;
        b.clear();
        for (name, t) in inputs {
            let v = to_ort(name, t)?;
            b.bind_input(name.as_str(), &v)
                .map_err(|e| err(format!("binding '{name}': {e}")))?;
        }
        let [s0, s1] = &mut self.sets;
        let (read, write) = if cur == 0 { (s0, s1) } else { (s1, s0) };
        for (((input, output), r), w) in self.pairs.iter().zip(read.iter()).zip(write.iter_mut()) {
            b.bind_input(input.as_str(), r)
                .map_err(|e| err(format!("binding '{input}': {e}")))?;
            b.bind_output(output.as_str(), w)
                .map_err(|e| err(format!("binding '{output}': {e}")))?;
        }
        for o in &self.returned {
            b.bind_output_to_device(o.as_str(), &self.cpu)
                .map_err(|e| err(format!("binding '{o}': {e}")))?;
        }
        let mut outs = self
            .session
            .run_binding(&self.binding)
            .map_err(|e| err(format!("run: {e}")))?;
        let mut result = Vec::with_capacity(self.returned.len());
        for name in &self.returned {
            let v = outs
                .remove(name.as_str())
                .ok_or_else(|| err(format!("output '{name}' missing from the results")))?;
            result.push((name.clone(), from_ort(name, v)?));
        }
        self.current = next;
        Ok(result)
    }

    /// The latest value of every carried tensor, by input name, copied to the host.
    pub fn fetch(&self) -> Result<Vec<(String, Tensor)>> {
        self.fetch_set(self.current)
    }

    /// The carried values the last run read (before its update), by input name, copied to
    /// the host: with the run's other inputs, what reproduces that run.
    pub fn fetch_previous(&self) -> Result<Vec<(String, Tensor)>> {
        self.fetch_set(1 - self.current)
    }

    fn fetch_set(&self, set: usize) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.pairs.len());
        for ((input, _), v) in self.pairs.iter().zip(&self.sets[set]) {
            let t = if self.on_device {
                let host = v
                    .to(AllocationDevice::CPU, 0)
                    .map_err(|e| err(format!("'{input}' to the host: {e}")))?;
                from_ort(input, host.into_dyn())?
            } else {
                from_ort(input, v.clone().into_dyn())?
            };
            out.push((input.clone(), t));
        }
        Ok(out)
    }
}

impl Session for OrtSession {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut feed: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            feed.push((name.clone(), to_ort(name, t)?.into_dyn()));
        }
        let mut outs = self
            .session
            .run(feed)
            .map_err(|e| err(format!("run: {e}")))?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let v = outs
                .remove(name.as_str())
                .ok_or_else(|| err(format!("output '{name}' missing from the results")))?;
            result.push((name.clone(), from_ort(name, v)?));
        }
        Ok(result)
    }
}

/// The ORT element type of an IR dtype.
fn ort_type(d: DType) -> Option<TensorElementType> {
    use TensorElementType as T;
    Some(match d {
        DType::F32 => T::Float32,
        DType::U8 => T::Uint8,
        DType::I8 => T::Int8,
        DType::U16 => T::Uint16,
        DType::I16 => T::Int16,
        DType::I32 => T::Int32,
        DType::I64 => T::Int64,
        DType::Bool => T::Bool,
        DType::F16 => T::Float16,
        DType::F64 => T::Float64,
        DType::U32 => T::Uint32,
        DType::U64 => T::Uint64,
        DType::BF16 => T::Bfloat16,
        DType::F8E4M3FN => T::Float8E4M3FN,
        DType::F8E4M3FNUZ => T::Float8E4M3FNUZ,
        DType::F8E5M2 => T::Float8E5M2,
        DType::F8E5M2FNUZ => T::Float8E5M2FNUZ,
        _ => return None,
    })
}

/// The IR dtype of an ORT element type.
fn ir_type(t: TensorElementType) -> Option<DType> {
    use TensorElementType as T;
    Some(match t {
        T::Float32 => DType::F32,
        T::Uint8 => DType::U8,
        T::Int8 => DType::I8,
        T::Uint16 => DType::U16,
        T::Int16 => DType::I16,
        T::Int32 => DType::I32,
        T::Int64 => DType::I64,
        T::Bool => DType::Bool,
        T::Float16 => DType::F16,
        T::Float64 => DType::F64,
        T::Uint32 => DType::U32,
        T::Uint64 => DType::U64,
        T::Bfloat16 => DType::BF16,
        T::Float8E4M3FN => DType::F8E4M3FN,
        T::Float8E4M3FNUZ => DType::F8E4M3FNUZ,
        T::Float8E5M2 => DType::F8E5M2,
        T::Float8E5M2FNUZ => DType::F8E5M2FNUZ,
        _ => return None,
    })
}

/// Copies an IR tensor into a new ORT tensor of the same element type.
fn to_ort(name: &str, t: &Tensor) -> Result<DynTensor> {
    let ty = ort_type(t.dtype()).ok_or_else(|| {
        err(format!(
            "input '{name}': {} tensors are not supported",
            t.dtype()
        ))
    })?;
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let mut value = DynTensor::new(&Allocator::default(), ty, shape)
        .map_err(|e| err(format!("input '{name}': {e}")))?;
    let raw = t.raw();
    let want = ty.byte_size(t.len()).unwrap_or(usize::MAX);
    if raw.len() != want {
        return Err(err(format!(
            "input '{name}': {} bytes of data, ORT expects {want}",
            raw.len()
        )));
    }
    if !raw.is_empty() {
        let dst = value.data_ptr_mut().cast::<u8>();
        if dst.is_null() {
            return Err(err(format!("input '{name}': ORT gave no buffer")));
        }
        // SAFETY: `dst` is the CPU buffer ORT allocated for `want == raw.len()` bytes (checked
        // above), and it does not overlap `raw`.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), dst, raw.len()) };
    }
    Ok(value)
}

/// Copies an ORT output tensor into an IR tensor, byte for byte.
fn from_ort(name: &str, v: DynValue) -> Result<Tensor> {
    let v = v
        .downcast::<DynTensorValueType>()
        .map_err(|e| err(format!("output '{name}' is not a tensor: {e}")))?;
    let ty = *v.data_type();
    let dtype = ir_type(ty).ok_or_else(|| {
        err(format!(
            "output '{name}': element type {ty} is not supported"
        ))
    })?;
    let mut shape = Vec::with_capacity(v.shape().len());
    for &d in v.shape().iter() {
        shape.push(usize::try_from(d).map_err(|_| err(format!("output '{name}': dim {d}")))?);
    }
    let n: usize = shape.iter().product();
    let len = ty
        .byte_size(n)
        .ok_or_else(|| err(format!("output '{name}': element type {ty} has no size")))?;
    let mut data = vec![0u8; len];
    if len > 0 {
        if !v.memory_info().is_cpu_accessible() {
            return Err(err(format!("output '{name}' is not in CPU memory")));
        }
        let src = v.data_ptr().cast::<u8>();
        if src.is_null() {
            return Err(err(format!("output '{name}': ORT gave no buffer")));
        }
        // SAFETY: ORT's CPU buffer for this tensor holds `byte_size(numel) == len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), len) };
    }
    Tensor::from_raw(dtype, shape, data.into()).map_err(|e| err(format!("output '{name}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Graph;
    use crate::train::emit::{add_input, declare};

    /// `acc.next = acc + inc` carried over three runs, with `total = Σ acc.next` returned:
    /// the buffer sets alternate and `fetch` sees the latest values.
    #[test]
    fn carried_tensors_advance_between_runs() {
        if find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        let mut g = Graph::new();
        let acc = add_input(&mut g, "acc", DType::F32, &[3]);
        let inc = add_input(&mut g, "inc", DType::F32, &[3]);
        let n = g.add_node("add", "Add", &[Some(acc), Some(inc)], &["acc.next"], vec![]);
        let next = g.node(n).outputs[0].unwrap();
        let n = g.add_node(
            "sum",
            "ReduceSum",
            &[Some(next)],
            &["total"],
            vec![crate::ir::graph::attr_int("keepdims", 0)],
        );
        let total = g.node(n).outputs[0].unwrap();
        declare(&mut g, next, DType::F32, &[3]);
        declare(&mut g, total, DType::F32, &[]);
        g.outputs = vec![next, total];
        let m = crate::passes::testutil::model(g, 13);
        let dir = crate::temp_dir::TempDir::new("carried").unwrap();
        let path = dir.path().join("acc.onnx");
        m.save(&path, &Default::default()).unwrap();
        let init = Tensor::from_f32(vec![3], &[0.0, 10.0, 20.0]);
        let carried = [("acc".to_string(), "acc.next".to_string(), init)];
        let mut s = CarriedSession::new(&path, &RuntimeOptions::default(), &carried).unwrap();
        let inc = Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0]);
        let mut totals = Vec::new();
        for _ in 0..3 {
            let out = s.run(&[("inc".to_string(), inc.clone())]).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "total");
            totals.push(out[0].1.to_f64_vec().unwrap()[0]);
        }
        assert_eq!(totals, [36.0, 42.0, 48.0]);
        let now = s.fetch().unwrap();
        assert_eq!(now[0].0, "acc");
        assert_eq!(now[0].1.to_f64_vec().unwrap(), [3.0, 16.0, 29.0]);
        let bad = [("acc".to_string(), "nope".to_string(), carried[0].2.clone())];
        let e = CarriedSession::new(&path, &RuntimeOptions::default(), &bad)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'nope'"), "{e}");
    }
}
