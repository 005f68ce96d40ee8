//! `thex`: privacy-preserving transformer inference with homomorphic encryption (THE-X).

use clap::{Parser, Subcommand};

mod attack;
mod cmd;
mod default_model;
mod encrypted_eval;
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
    /// Sentence embedding (and optionally hidden states) of a text, in plaintext.
    Encode(cmd::infer_plain::EncodeArgs),
    /// Classify a text in plaintext with a model that has a classification head.
    Predict(cmd::infer_plain::PredictArgs),
    /// Convert a pre-trained BERT into a THE-X model (resumable stages; see docs/results.md).
    Train(cmd::train::TrainArgs),
    /// Accuracy of a classifier on a labelled TSV (GLUE format).
    Eval(cmd::train::EvalArgs),
    /// Serve encrypted inference over HTTP on a THE-X model directory.
    Serve(cmd::serve::ServeArgs),
    /// Classify a text on a `thex serve` server (the secret key stays local).
    Infer(cmd::infer::InferArgs),
    /// Encrypted inference end to end on this machine (server and client over loopback HTTP).
    Demo(cmd::demo::DemoArgs),
    /// Benchmarks with medians and ratios against a baseline run in the same process or script.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Attacks on a running server that measure what the protocol reveals to a client.
    #[command(subcommand)]
    Attack(cmd::attack::AttackCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(c) => cmd::model::run(c),
        Command::Encode(a) => cmd::infer_plain::encode(a),
        Command::Predict(a) => cmd::infer_plain::predict(a),
        Command::Train(a) => cmd::train::train(a),
        Command::Eval(a) => cmd::train::eval(a),
        Command::Serve(a) => cmd::serve::serve(a),
        Command::Infer(a) => cmd::infer::infer(a),
        Command::Demo(a) => cmd::demo::demo(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Attack(c) => cmd::attack::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
