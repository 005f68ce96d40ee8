//! `thex attack extract`: a curious client against a `thex serve` server, recovering layer-1
//! weights from what the rounds decrypt (see `docs/security.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use he_linalg::Matrix;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use thex_client::BucketLayouts;
use thex_net::{Client, ClientOptions};

use crate::attack::{BlindedQuery, Reference, extract, observe, suite};

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
    /// Send every input this many times (the queries are split into queries / repeats
    /// distinct inputs): the averaging attacks on blinded rounds use the repeats.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
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
    /// Print JSON: rounds, queries, repeats, bucket, matrices [{name, layer, head, attack,
    /// relative_error}].
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
    if args.repeats == 0 || args.queries < args.repeats {
        bail!("--queries must be at least --repeats, and --repeats at least 1");
    }
    let inputs = args.queries / args.repeats;
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
    let mut observations = Vec::with_capacity(inputs);
    let mut blinded = Vec::with_capacity(inputs);
    for _ in 0..inputs {
        let ids: Vec<u32> = (0..bucket)
            .map(|_| words[rng.gen_range(0..words.len())])
            .collect();
        let (mut seen_s1, mut seen_u) = (Vec::new(), Vec::new());
        for r in 0..args.repeats {
            client.infer_ids(&ids)?;
            let transcript = client.take_transcript();
            let obs = observe(&bundle, &layouts, &ids, &transcript)?;
            let (s1, u) = &obs.ffn[0];
            seen_s1.push(s1.columns(0, s1.cols() - 1));
            seen_u.push(u.clone());
            if r == 0 {
                observations.push(obs);
            }
            bar.inc(1);
        }
        blinded.push(BlindedQuery {
            s1: true_residual(&loaded.model, &ids)?,
            seen_s1,
            seen_u,
        });
    }
    bar.finish_and_clear();
    let query_seconds = start.elapsed().as_secs_f64();
    client.close()?;

    let start = Instant::now();
    let result = extract(&observations, &bundle.dims, &truth)?;
    let fitted = suite(&blinded, &truth.ffn[0])?;
    let fit_seconds = start.elapsed().as_secs_f64();
    let mut matrices: Vec<(&str, usize, Option<usize>, &str, f64)> = result
        .matrices
        .iter()
        .map(|m| (m.name, m.layer, m.head, "regression", m.relative_error))
        .collect();
    for r in &fitted {
        matrices.push(("W1", 0, None, r.attack, r.w1));
        matrices.push(("b1", 0, None, r.attack, r.b1));
    }
    if args.json {
        let matrices: Vec<_> = matrices
            .iter()
            .map(|&(name, layer, head, attack, relative_error)| {
                let mut v = json!({
                    "name": name,
                    "layer": layer,
                    "attack": attack,
                    "relative_error": relative_error,
                });
                if let Some(h) = head {
                    v["head"] = json!(h);
                }
                v
            })
            .collect();
        let out = json!({
            "rounds": bundle.rounds.name(),
            "queries": inputs * args.repeats,
            "repeats": args.repeats,
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
        "{} queries ({inputs} inputs x {}) of {bucket} tokens against {} rounds ({query_seconds:.1} s), fitted in {fit_seconds:.1} s; layer inputs span {} of {} dimensions",
        inputs * args.repeats,
        args.repeats,
        bundle.rounds.name(),
        result.input_rank,
        bundle.dims.hidden + 1
    );
    println!(
        "{:<8} {:>5} {:>5}  {:<14} relative error",
        "matrix", "layer", "head", "attack"
    );
    for &(name, layer, head, attack, err) in &matrices {
        let head = head.map_or("-".to_string(), |h| h.to_string());
        println!("{name:<8} {layer:>5} {head:>5}  {attack:<14} {err:.3e}");
    }
    Ok(())
}

/// Layer 1's true residual stream `S₁` for `ids`, with a trailing 1, from the plaintext
/// model (granted to the attacks on blinded rounds).
fn true_residual(model: &thex_model::ThexModel, ids: &[u32]) -> anyhow::Result<Matrix> {
    let batch = thex_model::Batch::new(&[ids.to_vec()], 0, &candle_core::Device::Cpu)?;
    let (_, trace) = model.forward_traced(&batch)?;
    let layer = trace.layers.first().context("the model has no layers")?;
    let s: Vec<f64> = layer
        .attention_norm_input
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let h = s.len() / ids.len();
    Ok(Matrix::from_fn(ids.len(), h + 1, |r, c| {
        if c < h { s[r * h + c] } else { 1.0 }
    }))
}
