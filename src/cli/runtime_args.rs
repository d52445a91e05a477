//! Runtime flags shared by the commands that run models: `--backend`, `--device`, `--threads`.

use clap::ValueEnum;

use crate::runtime::{self, BackendChoice, BackendKind, Device, RuntimeOptions};

/// `--backend`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    /// ONNX Runtime (its library: ORT_DYLIB_PATH, .deps/python, or a Python install).
    Ort,
    /// tract (embedded, pure Rust, single-threaded).
    Tract,
    /// ONNX Runtime when its library is found, else tract.
    Auto,
}

/// `--device`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU through ONNX Runtime's CUDA execution provider (needs onnxruntime-gpu).
    Cuda,
}

/// Where and how models run.
#[derive(clap::Args, Debug)]
pub struct RuntimeArgs {
    /// Runtime backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Device (cuda: ONNX Runtime's CUDA execution provider).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Intra-op threads for ONNX Runtime (default: one per core); tract is single-threaded.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

impl RuntimeArgs {
    /// The library's options and the resolved backend (errors name what is missing).
    pub fn resolve(&self) -> crate::Result<(BackendKind, RuntimeOptions)> {
        let opts = RuntimeOptions {
            device: match self.device {
                DeviceArg::Cpu => Device::Cpu,
                DeviceArg::Cuda => Device::Cuda,
            },
            threads: self.threads.map(usize::from),
            spinning: None,
        };
        let choice = match self.backend {
            Backend::Ort => BackendChoice::Ort,
            Backend::Tract => BackendChoice::Tract,
            Backend::Auto => BackendChoice::Auto,
        };
        Ok((runtime::resolve(choice, &opts)?, opts))
    }
}
