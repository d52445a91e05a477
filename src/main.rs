//! The `lopper` command line. Thin: parses arguments, calls the library, and turns any error
//! into one line on stderr with exit code 2 (bad input) — never a panic trace.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // First, before any thread starts: interrupting signals remove this run's temporary files.
    lopper::temp_dir::install_signal_cleanup();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    // Temporary folders left by earlier runs that were killed outright.
    lopper::temp_dir::sweep_stale();
    std::panic::set_hook(Box::new(|info| {
        if lopper::runtime::panic_is_contained() {
            // A runtime crashing on a bad model: reported as that runtime's error.
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            // The reader went away (`lopper ... | head`): stop quietly, as a shell tool does.
            std::process::exit(141);
        }
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
            // One line: the error and its causes, joined; a cause the message already ends
            // with (an I/O error under its path) is not repeated.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.ends_with(&cause) {
                    msg.push_str(": ");
                    msg.push_str(&cause);
                }
            }
            eprintln!("lopper: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(3),
    }
}

/// Help and version go to stdout as clap prints them; argument errors become one line on
/// stderr with exit code 2, like every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = parts.join(" ");
    eprintln!("lopper: {}", msg.strip_prefix("error: ").unwrap_or(&msg));
    ExitCode::from(2)
}
