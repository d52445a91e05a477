//! `lopper._native`: the Python extension. It runs lopper's commands in-process through
//! [`lopper::cli`], so that the Python API and the command line share every option, check and
//! error message. The Python package (`python/lopper/`) builds the argument lists; this file
//! only crosses the language boundary. The GIL is released while a command runs. It does not
//! convert models to or from `onnx.ModelProto`: the Python side passes files.

use std::ffi::OsString;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use lopper::cli::Failure;

create_exception!(
    _native,
    Error,
    PyException,
    "A lopper command failed: bad input or a failed check. The message is the line the \
     command line prints (where it exits 2)."
);
create_exception!(
    _native,
    InternalError,
    PyException,
    "A bug inside lopper (the command line exits 3): please report it with the model."
);

/// Runs one command (`args` without the program name) and returns what it printed to stdout
/// when `capture` is true (else prints it and returns ""). Raises `Error` with the command
/// line's one-line message.
#[pyfunction]
#[pyo3(signature = (args, capture = false))]
fn call(py: Python<'_>, args: Vec<String>, capture: bool) -> PyResult<String> {
    match py.detach(|| lopper::cli::call(args, capture)) {
        Ok(out) => Ok(out),
        Err(Failure::Error(msg)) => Err(Error::new_err(msg)),
        Err(Failure::Internal(msg)) => Err(InternalError::new_err(format!(
            "internal error: {msg} (this is a bug; please report it with the model)"
        ))),
    }
}

/// The `lopper` program: runs `argv` (program name first) as the binary does, signal handling
/// and exit codes included, and returns the exit code. For the `lopper` console script.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| lopper::cli::main(argv))
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(call, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("InternalError", m.py().get_type::<InternalError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
