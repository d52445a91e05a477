//! The `lopper` command line. Thin: parses arguments, calls the library, and turns any error
//! into one line on stderr with exit code 2 (bad input) — never a panic trace.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "lopper: internal error{at}: {msg} (this is a bug; please report it with the model)"
        );
    }));
    match std::panic::catch_unwind(|| cli::run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            // One line: the error and its causes, joined.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(": ");
                msg.push_str(&cause.to_string());
            }
            eprintln!("lopper: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(3),
    }
}
