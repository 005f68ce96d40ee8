//! `thex encode` and `thex predict`: plaintext inference on a model directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Arguments of `thex encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Hugging Face BERT directory (e.g. the output of `thex model fetch`).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Text to embed.
    #[arg(long)]
    text: String,
    /// Also output the last hidden states (one row per token).
    #[arg(long)]
    hidden: bool,
    /// Print JSON (`input_ids`, `embedding`, `embedding_normalized`, `last_hidden_state`).
    #[arg(long)]
    json: bool,
}

/// Arguments of `thex predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A model directory with a classification head (e.g. a THE-X model).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Text to classify.
    #[arg(long)]
    text: String,
    /// Print JSON (`label`, `label_id`, `probabilities`, `logits`, `labels`).
    #[arg(long)]
    json: bool,
}

fn preview(values: &[f32]) -> String {
    let head: Vec<String> = values.iter().take(6).map(|v| format!("{v:.4}")).collect();
    format!(
        "[{}{}]",
        head.join(", "),
        if values.len() > 6 { ", ..." } else { "" }
    )
}

/// Runs `thex encode`.
pub fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let out = thex_model::encode(&args.model, &args.text, args.hidden)
        .with_context(|| format!("encoding with {}", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "tokens     {} ids: {:?}",
        out.input_ids.len(),
        out.input_ids
    );
    println!(
        "embedding  dim {} (mean pooled) {}",
        out.embedding.len(),
        preview(&out.embedding)
    );
    println!("normalized {}", preview(&out.embedding_normalized));
    if let Some(hidden) = &out.last_hidden_state {
        for (i, row) in hidden.iter().enumerate() {
            println!("hidden[{i:>3}] {}", preview(row));
        }
    }
    Ok(())
}

/// Runs `thex predict`.
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let out = thex_model::predict(&args.model, &args.text)
        .with_context(|| format!("predicting with {}", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("label {} ({})", out.label, out.label_id);
    for ((name, p), logit) in out.labels.iter().zip(&out.probabilities).zip(&out.logits) {
        println!("  {name:<12} p={p:.4}  logit={logit:+.4}");
    }
    Ok(())
}
