//! The `sigsoftmax` program: the benchmark (the default) and `run`, which applies one op to
//! .npy files.
//!
//! Exit status: 0 on success, 1 when the work failed (bad input, no GPU), 2 for a command line
//! that does not parse. Every failure is one line on stderr that starts with `error:`.

mod cli;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let parsed = match Cli::try_parse() {
        Ok(parsed) => parsed,
        Err(error) => return report_parse_error(&error),
    };
    let result = match parsed.command {
        None => cli::bench::bench(&parsed.bench),
        Some(Command::Bench(args)) => cli::bench::bench(&args),
        Some(Command::Run(args)) => cli::run::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints help and version as clap does, and squeezes a usage error into one line.
fn report_parse_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        // `print` writes help and version to stdout; nothing sensible remains to do if it fails.
        let _ = error.print();
        return ExitCode::SUCCESS;
    }

    // clap renders the message, the usage and a pointer to --help on separate lines. Keep the
    // message and any tip, and point to --help on the same line.
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    let mut joined = String::new();
    for line in message {
        // A list that a line introduces ("not provided:", "[possible values: ...]") stays in the
        // same clause; separate lines become separate clauses.
        if !joined.is_empty() {
            joined.push_str(if joined.ends_with(':') || line.starts_with('[') {
                " "
            } else {
                "; "
            });
        }
        joined.push_str(line);
    }
    let message = joined;
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let help = match std::env::args().nth(1).as_deref() {
        Some("run") => "sigsoftmax run --help",
        Some("bench") => "sigsoftmax bench --help",
        _ => "sigsoftmax --help",
    };
    eprintln!("error: {message}; see `{help}`");
    ExitCode::from(2)
}
