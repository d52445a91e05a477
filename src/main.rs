//! The `lopper` command line: [`lopper::cli::main`] with the process's arguments. Any error
//! becomes one line on stderr with exit code 2 (bad input), never a panic trace.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(lopper::cli::main(std::env::args_os()))
}
