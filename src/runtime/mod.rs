//! Runtimes that execute models: ONNX Runtime (`ort`, library loaded at run time) and tract
//! (pure Rust, always available). Both take and return IR [`Tensor`]s by name.
//!
//! This module only runs models; it does not check or change them. [`load`] uses each runtime's
//! defaults; [`load_with`] takes [`RuntimeOptions`] (device, threads), and [`resolve`] turns the
//! command line's `--backend ort|tract|auto` into a concrete [`BackendKind`].

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Tensor;

pub mod inputs;
pub mod kernels;
pub mod ort;
pub mod tract;

pub use inputs::{model_inputs, model_outputs, InputSpec};

/// Which runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// ONNX Runtime through `ort` (CPU unless another device is configured).
    Ort,
    /// tract (embedded, pure Rust).
    Tract,
}

impl BackendKind {
    /// The backend's name (`"ort"`, `"tract"`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ort => "ort",
            BackendKind::Tract => "tract",
        }
    }
}

/// The runtime asked for: one backend, or `Auto` (ONNX Runtime when its library is found and
/// loads, tract otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// ONNX Runtime; an error when its library is missing.
    Ort,
    /// tract.
    Tract,
    /// ONNX Runtime if available, else tract.
    #[default]
    Auto,
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU (every backend).
    #[default]
    Cpu,
    /// An NVIDIA GPU through ONNX Runtime's CUDA execution provider.
    Cuda,
}

impl Device {
    /// `"cpu"` or `"cuda"`.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// How a model is loaded into a runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The device (ONNX Runtime only; tract runs on the CPU).
    pub device: Device,
    /// Intra-op threads (ONNX Runtime; `None`: its default, one per core). tract runs
    /// single-threaded and ignores it.
    pub threads: Option<usize>,
    /// Whether idle ONNX Runtime threads busy-wait for work (`None`: its default, on). Off
    /// helps when other threads (a data loader) share the cores.
    pub spinning: Option<bool>,
}

/// A model loaded into a runtime, ready to run.
pub trait Session {
    /// The backend's name (`"ort"`, `"tract"`).
    fn backend(&self) -> &'static str;

    /// Runs the model: inputs by name; returns every graph output, by name, in graph order.
    fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>>;
}

/// Loads a model file into a runtime with its default settings (CPU).
pub fn load(kind: BackendKind, path: &Path) -> Result<Box<dyn Session>> {
    load_with(kind, path, &RuntimeOptions::default())
}

/// Loads a model file into a runtime with the given device and threads.
pub fn load_with(
    kind: BackendKind,
    path: &Path,
    opts: &RuntimeOptions,
) -> Result<Box<dyn Session>> {
    let inner: Box<dyn Session> = contain(kind.name(), || match kind {
        BackendKind::Ort => Ok(Box::new(ort::OrtSession::load_opts(path, opts)?) as Box<_>),
        BackendKind::Tract => {
            check_tract(opts)?;
            // A model tract would crash on is refused (one lopper cannot read is left to
            // tract's own loader).
            if let Some(why) = crate::ir::Model::load(path)
                .ok()
                .and_then(|m| tract::hazard(&m))
            {
                return Err(Error::Runtime {
                    backend: "tract",
                    msg: format!("{}: {why}", path.display()),
                });
            }
            Ok(Box::new(tract::TractSession::load(path)?) as Box<_>)
        }
    })?;
    Ok(Box::new(Contained(inner)))
}

/// Graphs with more nodes than this are loaded by [`load_for_check`] without ONNX Runtime's
/// basic graph rewrites: they cost more than the few runs of a check gain.
pub const CHECK_OPTIMIZE_NODES: usize = 500;

/// [`load`] for a model of `nodes` nodes that runs only a few times (the equivalence oracle).
/// tract runs its typed plan, never the optimised one (its decluttering grows quadratically
/// with depth: a 2,000-node chain took 80 s to verify; and its packed weights are a second
/// copy: the mobilenet_v2, EfficientNet-B0, RegNet and VGG exports of `../shared` all pruned
/// and verified 25–35% faster and 10–25% leaner with typed plans). ONNX Runtime does its basic
/// rewrites only, without weight pre-packing, and none above [`CHECK_OPTIMIZE_NODES`].
pub fn load_for_check(kind: BackendKind, path: &Path, nodes: usize) -> Result<Box<dyn Session>> {
    load_for_check_with(kind, path, nodes, &RuntimeOptions::default())
}

/// [`load_for_check`] with ONNX Runtime's threads and spinning set by `opts`.
pub fn load_for_check_with(
    kind: BackendKind,
    path: &Path,
    nodes: usize,
    opts: &RuntimeOptions,
) -> Result<Box<dyn Session>> {
    let optimize = nodes <= CHECK_OPTIMIZE_NODES;
    let inner: Box<dyn Session> = contain(kind.name(), || match kind {
        BackendKind::Ort => {
            Ok(Box::new(ort::OrtSession::load_for_check(path, opts, optimize)?) as Box<_>)
        }
        BackendKind::Tract => Ok(Box::new(tract::TractSession::load_opts(path, false)?) as Box<_>),
    })?;
    Ok(Box::new(Contained(inner)))
}

thread_local! {
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a runtime call whose panics become errors: a panic hook
/// should stay quiet then (the panic is reported as that error).
pub fn panic_is_contained() -> bool {
    CONTAINING.with(std::cell::Cell::get)
}

/// Runs `f`, turning a panic inside a runtime (tract dividing by a zero `Range` step,
/// allocating a 2^40-element tensor; the ONNX Runtime bindings' "infallible" on a negative
/// dim) into an error naming the runtime: the model is what is wrong, not lopper.
fn contain<T>(backend: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = CONTAINING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(before));
    out.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Runtime {
            backend,
            msg: format!(
                "failed on this model ({}); it is probably invalid (a zero divisor or Range step, a negative or huge shape)",
                msg.lines().next().unwrap_or("")
            ),
        })
    })
}

/// A session whose runtime panics become errors (see [`contain`]).
struct Contained(Box<dyn Session>);

impl Session for Contained {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let backend = self.0.backend();
        contain(backend, || self.0.run(inputs))
    }
}

/// The backend to use for a choice: `Ort` needs ONNX Runtime's library (the error says what is
/// missing); `Auto` takes ONNX Runtime when its library loads, else tract, except that
/// `--device cuda` needs ONNX Runtime either way.
pub fn resolve(choice: BackendChoice, opts: &RuntimeOptions) -> Result<BackendKind> {
    match choice {
        BackendChoice::Ort => {
            ort::library()?;
            Ok(BackendKind::Ort)
        }
        BackendChoice::Tract => {
            check_tract(opts)?;
            Ok(BackendKind::Tract)
        }
        BackendChoice::Auto => match ort::library() {
            Ok(_) => Ok(BackendKind::Ort),
            Err(e) if opts.device == Device::Cuda => Err(e),
            Err(_) => Ok(BackendKind::Tract),
        },
    }
}

fn check_tract(opts: &RuntimeOptions) -> Result<()> {
    if opts.device == Device::Cuda {
        return Err(Error::Usage(
            "tract runs on the CPU only: --device cuda needs --backend ort (or auto)".into(),
        ));
    }
    Ok(())
}
