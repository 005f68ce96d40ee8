//! `thex bench ...`: measured comparisons, printed as a table or JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

/// Baselines `thex bench ckks` can compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// TenSEAL 0.3.18 (SEAL 4) from PyPI, driven by `scripts/tenseal_bench.py`.
    Tenseal,
}

/// Model shapes for `thex bench linalg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// all-MiniLM-L6-v2: 64 tokens, hidden 384, 12 heads, FFN 1536.
    Minilm,
    /// BERT-tiny: 128 tokens, hidden 128, 2 heads, FFN 512.
    BertTiny,
}

/// Subcommands of `thex bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CKKS multiply+relinearize+rescale and rotate, optionally against TenSEAL on matched parameters.
    Ckks {
        /// Run the same operations in this baseline library and report ratios.
        #[arg(long, value_enum)]
        compare: Option<Baseline>,
        /// Threads for our operations (TenSEAL is single-threaded).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed repetitions per operation; medians are reported.
        #[arg(long, default_value_t = 10)]
        repeats: usize,
        /// Ring degrees as log2 N (14: log Q ~ 400, 15: log Q ~ 840).
        #[arg(long = "log-n", value_delimiter = ',', default_values_t = [14, 15])]
        log_n: Vec<u32>,
        /// Python interpreter with tenseal==0.3.18 installed.
        #[arg(long, default_value = "python3", env = "THEX_PYTHON")]
        python: String,
        /// Path of the TenSEAL driver script (default: the repository's scripts/tenseal_bench.py).
        #[arg(long)]
        script: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// BERT-shaped encrypted linear algebra against the plain diagonal method.
    Linalg {
        /// Shapes to run (default: both).
        #[arg(long, value_enum, value_delimiter = ',')]
        model: Vec<Shape>,
        /// Timed repetitions per operation; medians are reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Encrypted inference end to end: the default model at 16/32/64 tokens and a BERT-tiny-shaped
    /// random model at 128 tokens (client and server in this process; bytes as on the wire).
    E2e {
        /// THE-X model directory (default: the default model, installed if needed).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Token counts (length buckets, powers of two) for the model.
        #[arg(long, value_delimiter = ',', default_values_t = thex_engine::DEFAULT_BUCKETS)]
        tokens: Vec<usize>,
        /// Token counts for the BERT-tiny-shaped model (2 layers, hidden 128, 2 heads, FFN 512).
        #[arg(long, value_delimiter = ',', default_values_t = [128])]
        tiny_tokens: Vec<usize>,
        /// Skip the THE-X model directory (only the BERT-tiny shape).
        #[arg(long)]
        tiny_only: bool,
        /// Round protocols to measure, each on every configuration (`blinded`, `thex`).
        #[arg(long, value_delimiter = ',', default_values = ["blinded", "thex"])]
        rounds: Vec<thex_client::Rounds>,
        /// Inferences per configuration; the median is reported.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Print JSON (`{"runs":[{"model","tokens","protocol","total_s","rounds","bytes_up",
        /// "bytes_down","key_bytes","phases",...}],"blinding":[{"model","tokens","time_ratio",
        /// "bytes_ratio","key_bytes_ratio"}]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `thex bench` subcommand.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ckks {
            compare,
            threads,
            repeats,
            log_n,
            python,
            script,
            json,
        } => {
            let mut opts = ckks_bench::CompareOptions {
                threads,
                repeats,
                log_n,
                python,
                ours_only: compare.is_none(),
                ..Default::default()
            };
            if let Some(script) = script {
                opts.script = script;
            }
            let report = ckks_bench::compare_tenseal(&opts).context("CKKS benchmark failed")?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
        }
        BenchCommand::Linalg {
            model,
            repeats,
            json,
        } => {
            let mut cfg = he_linalg::bench::BenchConfig {
                repeats,
                ..Default::default()
            };
            if !model.is_empty() {
                cfg.models = model
                    .iter()
                    .map(|m| match m {
                        Shape::Minilm => he_linalg::bench::ModelShape::minilm(),
                        Shape::BertTiny => he_linalg::bench::ModelShape::bert_tiny(),
                    })
                    .collect();
            }
            let report = he_linalg::bench::run(&cfg).context("linear algebra benchmark failed")?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
        }
        BenchCommand::E2e {
            model,
            tokens,
            tiny_tokens,
            tiny_only,
            rounds,
            repeats,
            json,
        } => {
            let mut targets = Vec::new();
            if !tiny_only {
                let (name, m) = super::bench_e2e::load_model(model, json)?;
                targets.push((name, m, tokens));
            }
            if !tiny_tokens.is_empty() {
                let tiny = thex_model::synthetic::model(thex_model::synthetic::BERT_TINY, 1)?;
                targets.push(("bert-tiny-shape".to_string(), tiny, tiny_tokens));
            }
            let spinner = crate::progress::spinner(json);
            let mut runs = Vec::new();
            for (name, m, tokens) in &targets {
                for &t in tokens {
                    for &protocol in &rounds {
                        runs.extend(super::bench_e2e::measure(
                            name,
                            m,
                            (&[t], protocol),
                            repeats,
                            &mut |msg| spinner.set_message(msg.to_string()),
                        )?);
                    }
                }
            }
            spinner.finish_and_clear();
            if json {
                let blinding = super::bench_e2e::blinding_costs(&runs);
                println!(
                    "{}",
                    serde_json::json!({ "runs": runs, "blinding": blinding })
                );
            } else {
                super::bench_e2e::print_table(&runs);
            }
        }
    }
    Ok(())
}
