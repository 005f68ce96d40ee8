//! `thex infer`: classify a text on a `thex serve` server; the secret key stays here.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use thex_net::{Client, ClientOptions, Inference};

/// Arguments of `thex infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: String,
    /// Text to classify.
    #[arg(long)]
    text: String,
    /// Secret-key file: used if it exists, else created (mode 0600). Default: a fresh key
    /// for this run only.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Cache for the client bundle and tokenizer (default:
    /// $XDG_CACHE_HOME/thex/client or ~/.cache/thex/client).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Download the bundle even if a verified copy is cached.
    #[arg(long)]
    no_cache: bool,
    /// Upload rotation keys for these buckets (default: only the one this text needs).
    #[arg(long, value_delimiter = ',')]
    buckets: Vec<usize>,
    /// Print JSON: label, probabilities, logits, rounds, bytes up/down, time per phase.
    #[arg(long)]
    json: bool,
    /// API token of a server started with --tokens.
    #[arg(long, env = "THEX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the certificate authority an https:// server's certificate chains to
    /// (default: the bundled Mozilla roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// `$XDG_CACHE_HOME/thex/client`, else `~/.cache/thex/client`.
fn default_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("thex").join("client"))
}

/// The JSON fields shared by `thex infer --json` and `thex demo --json`.
pub fn result_json(r: &Inference) -> serde_json::Value {
    let phases: serde_json::Map<String, serde_json::Value> = r
        .phases
        .iter()
        .map(|p| (p.name.clone(), json!(p.seconds)))
        .collect();
    json!({
        "label": r.label,
        "label_id": r.label_id,
        "labels": r.labels,
        "probabilities": r.probabilities,
        "logits": r.logits,
        "tokens": r.tokens,
        "bucket": r.bucket,
        "rounds": r.rounds,
        "bytes_up": r.bytes_up,
        "bytes_down": r.bytes_down,
        "seconds": r.total_seconds,
        "phases": phases,
        "exchanges": r.exchanges,
    })
}

/// Runs `thex infer`.
pub fn infer(args: InferArgs) -> anyhow::Result<()> {
    let options = ClientOptions {
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir.or_else(default_cache)
        },
        key_file: args.key,
        buckets: args.buckets,
        token: args.token,
        ca_file: args.ca,
        ..Default::default()
    };
    if let Some(w) = thex_net::plain_http_warning(&args.server) {
        eprintln!("{w}");
    }
    let mut client = Client::prepare(&args.server, &options)
        .with_context(|| format!("connecting to {}", args.server))?;
    let buckets = if options.buckets.is_empty() {
        vec![client.bucket_for(&args.text)?]
    } else {
        options.buckets.clone()
    };
    client.open_session(&buckets)?;
    let r = client.infer(&args.text)?;
    let setup = client.connect_report().clone();
    // The session's keys are released on the server now rather than at its idle timeout.
    client.close()?;
    if args.json {
        let mut v = result_json(&r);
        v["key_bytes"] = json!(setup.key_bytes);
        v["setup"] = serde_json::to_value(&setup)?;
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("label {} ({})", r.label, r.label_id);
    for ((name, p), logit) in r.labels.iter().zip(&r.probabilities).zip(&r.logits) {
        println!("  {name:<12} p={p:.4}  logit={logit:+.4}");
    }
    println!(
        "{} tokens (bucket {}), {} rounds, {:.2} MB up, {:.2} MB down, {:.2} s; keys {:.1} MB uploaded once",
        r.tokens,
        r.bucket,
        r.rounds,
        r.bytes_up as f64 / 1e6,
        r.bytes_down as f64 / 1e6,
        r.total_seconds,
        setup.key_bytes as f64 / 1e6
    );
    Ok(())
}
