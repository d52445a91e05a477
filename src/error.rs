//! The library's error type. Every variant says where the problem is (file, tensor, node/op),
//! so the CLI can print one line that names it.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, checking, transforming or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf (truncated, random, wrong file).
    #[error("{path}: not a valid ONNX model: {msg}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        msg: String,
    },
    /// A tensor whose contents do not match its declaration, or whose external data is unusable.
    #[error("tensor '{tensor}': {msg}")]
    Tensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// A structural problem of the graph (dangling name, cycle, duplicate definition).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// The verifier found invariant violations (all of them are listed).
    #[error("graph verification failed with {} violation(s):\n  {}", .0.len(), .0.join("\n  "))]
    Verify(Vec<String>),
    /// A node that an analysis or pass cannot handle.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A runtime (ONNX Runtime or tract) failed to load or run a model.
    #[error("{backend}: {msg}")]
    Runtime {
        /// Which backend.
        backend: &'static str,
        /// Its message.
        msg: String,
    },
    /// A bad option or argument.
    #[error("{0}")]
    Usage(String),
    /// A dataset that cannot be read or does not fit the model (`place`: the file, or file and
    /// member, like `cifar.zip:test/cat/0001.jpg`).
    #[error("{place}: {msg}")]
    Data {
        /// The file (and member) concerned.
        place: String,
        /// What is wrong.
        msg: String,
    },
}

impl Error {
    /// A node-located error.
    pub fn node(node: &str, op: &str, msg: impl Into<String>) -> Self {
        Error::Node {
            node: node.to_string(),
            op: op.to_string(),
            msg: msg.into(),
        }
    }

    /// A tensor-located error.
    pub fn tensor(tensor: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    /// A dataset error at `place` (a path, or `archive:member`).
    pub fn data(place: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Data {
            place: place.to_string(),
            msg: msg.into(),
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
