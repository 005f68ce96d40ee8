//! `thex attack extract`: a curious client against a `thex serve` server, recovering layer-1
//! weights from what the rounds decrypt (see `docs/security.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use thex_client::BucketLayouts;
use thex_net::{Client, ClientOptions};

use crate::attack::{Reference, extract, observe};

/// Attacks on a running server, measuring what the protocol gives away.
#[derive(Debug, Subcommand)]
pub enum AttackCommand {
    /// Recover layer-1 weights (FFN input, reciprocal network, per-head Q·Kᵀ form) by
    /// regression on what a client decrypts; report each matrix's relative error.
    Extract(ExtractArgs),
}

/// Arguments of `thex attack extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: String,
    /// Inferences to run, each of random word pieces (no special tokens) filling the bucket.
    #[arg(long, default_value_t = 60)]
    queries: usize,
    /// Length bucket of the queries (default: the server's largest).
    #[arg(long)]
    bucket: Option<usize>,
    /// The served model's directory, to score the recovered matrices against (default: the
    /// built-in SST-2 model).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Seed of the random queries (default: from the OS).
    #[arg(long)]
    seed: Option<u64>,
    /// Print JSON: rounds, queries, bucket, matrices [{name, layer, head, relative_error}].
    #[arg(long)]
    json: bool,
    /// API token of a server started with --tokens.
    #[arg(long, env = "THEX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the certificate authority an https:// server's certificate chains to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Runs `thex attack …`.
pub fn run(command: AttackCommand) -> anyhow::Result<()> {
    match command {
        AttackCommand::Extract(args) => extract_weights(args),
    }
}

fn extract_weights(args: ExtractArgs) -> anyhow::Result<()> {
    if args.queries == 0 {
        bail!("--queries must be at least 1");
    }
    let quiet = args.json;
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => crate::default_model::ensure(quiet)?,
    };
    let loaded = thex_model::load_model_dir(&dir, &Default::default())
        .with_context(|| format!("loading the reference model {}", dir.display()))?;
    let (weights, embeddings) = thex_engine::split_model(&loaded.model)?;
    let truth = Reference::of(&weights, &embeddings)?;

    let options = ClientOptions {
        token: args.token,
        ca_file: args.ca,
        ..Default::default()
    };
    let mut client = Client::prepare(&args.server, &options)
        .with_context(|| format!("connecting to {}", args.server))?;
    let bundle = client.bundle().clone();
    if bundle.dims != weights.dims {
        bail!(
            "the reference model {} is not the served one (its shapes or constants differ)",
            dir.display()
        );
    }
    let buckets = bundle.buckets();
    let bucket = match args.bucket {
        Some(b) if buckets.contains(&b) => b,
        Some(b) => bail!("the server has no bucket {b} (it offers {buckets:?})"),
        None => *buckets.last().context("the server offers no bucket")?,
    };
    let params = bundle.validate()?;
    let layouts = BucketLayouts::new(&bundle.dims, params.max_slots(), bucket)?;
    client.open_session(&[bucket])?;
    client.record_transcript();

    // Queries of random word pieces, as a text could give (no special tokens: their
    // embeddings can lie outside what the server calibrated, and the client would refuse).
    let special: Vec<u32> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter_map(|t| client.tokenizer().token_to_id(t))
        .chain([bundle.embeddings.pad_id])
        .collect();
    let words: Vec<u32> = (0..bundle.embeddings.vocab as u32)
        .filter(|id| !special.contains(id))
        .collect();
    if words.is_empty() {
        bail!("the vocabulary has only special tokens");
    }
    let mut rng = match args.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_entropy(),
    };
    let bar = ProgressBar::new(args.queries as u64).with_style(
        ProgressStyle::with_template("queries [{bar:30}] {pos}/{len} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let mut observations = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let ids: Vec<u32> = (0..bucket)
            .map(|_| words[rng.gen_range(0..words.len())])
            .collect();
        client.infer_ids(&ids)?;
        let transcript = client.take_transcript();
        observations.push(observe(&bundle, &layouts, &ids, &transcript)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let query_seconds = start.elapsed().as_secs_f64();
    client.close()?;

    let start = Instant::now();
    let result = extract(&observations, &bundle.dims, &truth)?;
    let fit_seconds = start.elapsed().as_secs_f64();
    if args.json {
        let matrices: Vec<_> = result
            .matrices
            .iter()
            .map(|m| {
                let mut v = json!({
                    "name": m.name,
                    "layer": m.layer,
                    "relative_error": m.relative_error,
                });
                if let Some(h) = m.head {
                    v["head"] = json!(h);
                }
                v
            })
            .collect();
        let out = json!({
            "rounds": "thex",
            "queries": args.queries,
            "bucket": bucket,
            "input_rank": result.input_rank,
            "bilinear_iterations": result.bilinear.iterations,
            "bilinear_residual": result.bilinear.residual,
            "query_seconds": query_seconds,
            "fit_seconds": fit_seconds,
            "matrices": matrices,
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{} queries of {bucket} tokens ({query_seconds:.1} s), fitted in {fit_seconds:.1} s; layer inputs span {} of {} dimensions",
        args.queries,
        result.input_rank,
        bundle.dims.hidden + 1
    );
    println!(
        "{:<8} {:>5} {:>5}  relative error",
        "matrix", "layer", "head"
    );
    for m in &result.matrices {
        let head = m.head.map_or("-".to_string(), |h| h.to_string());
        println!(
            "{:<8} {:>5} {:>5}  {:.3e}",
            m.name, m.layer, head, m.relative_error
        );
    }
    Ok(())
}
