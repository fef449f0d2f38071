//! The `wengert` binary: parses arguments, runs the command, prints its
//! output, and on error prints the message and exits with status 1 (never a
//! panic backtrace).

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use wengert::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`wengert print big.wg | head`) is not an error.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
