//! `thex`: privacy-preserving transformer inference with homomorphic encryption (THE-X).

use clap::{Parser, Subcommand};

mod cmd;
mod progress;

/// Privacy-preserving BERT inference with CKKS homomorphic encryption (THE-X).
#[derive(Debug, Parser)]
#[command(name = "thex", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Obtain and manage model directories.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(c) => cmd::model::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
