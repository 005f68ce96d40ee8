//! `thex serve`: the THE-X HTTP server on a model directory.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use thex_engine::{EngineParams, ResolvedPlan};
use thex_net::{ApiTokens, ServedModel, ServerConfig, ServerHandle, ServerLimits, TlsIdentity};

/// Arguments of `thex serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// THE-X model directory (e.g. from `thex model fetch --name sst2-thex`).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Length buckets to compile (powers of two; inputs are padded to the next one).
    #[arg(long, value_delimiter = ',', default_values_t = EngineParams::default().buckets)]
    buckets: Vec<usize>,
    /// Encode the weights for every request instead of once at start (far less memory).
    #[arg(long)]
    lazy_encode: bool,
    /// Keep the pre-encoded weights in NTT form (faster products) while they take at most this
    /// many GiB (bounded by the compact size times the number of primes); compact otherwise.
    #[arg(long, value_name = "GIB", default_value_t = EngineParams::default().ntt_weights_max_bytes >> 30)]
    ntt_weights_max_gib: usize,
    /// Round protocol: `blinded` (every value a client decrypts carries a random sign and
    /// magnitude, so clients learn neither; two more primes) or `thex` (the paper's rounds:
    /// clients decrypt the activations and can extract the weights, `thex attack extract`).
    #[arg(long, default_value = "blinded")]
    rounds: thex_client::Rounds,
    /// Blinded rounds: bits the random magnitude spans (precision of the smallest-factor
    /// values drops by as many bits).
    #[arg(long, value_name = "BITS", default_value_t = EngineParams::default().blind_bits)]
    blind_bits: u32,
    /// Compile by a plan saved with --save-plan (its buckets and weight settings; no
    /// calibration) instead of resolving the options above.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["buckets", "lazy_encode", "ntt_weights_max_gib", "rounds", "blind_bits"])]
    plan: Option<PathBuf>,
    /// Write the resolved plan (configuration, calibration, CKKS parameters, maskings) as JSON.
    #[arg(long, value_name = "FILE")]
    save_plan: Option<PathBuf>,
    /// Most open sessions.
    #[arg(long, default_value_t = ServerLimits::default().max_sessions)]
    max_sessions: usize,
    /// Seconds without a request after which a session (and its running inference) is dropped.
    #[arg(long, default_value_t = ServerLimits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Largest request body in MiB (evaluation keys included).
    #[arg(long, default_value_t = ServerLimits::default().max_body_bytes >> 20)]
    max_body_mib: usize,
    /// Most memory of expanded evaluation keys over all sessions, in MiB.
    #[arg(long, default_value_t = ServerLimits::default().max_key_memory >> 20)]
    max_key_mib: usize,
    /// Threads for the homomorphic work (default: one per CPU).
    #[arg(long, default_value_t = ServerLimits::default().compute_threads)]
    threads: usize,
    /// Most requests computing or waiting for a thread; more get 503.
    #[arg(long, default_value_t = ServerLimits::default().compute_queue)]
    compute_queue: usize,
    /// Most open connections; more are closed at once.
    #[arg(long, default_value_t = ServerLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a request's headers (and a TLS handshake) may take.
    #[arg(long, default_value_t = ServerLimits::default().header_timeout.as_secs())]
    header_timeout: u64,
    /// Slowest accepted upload, in KiB/s (a body of n bytes must arrive within the header
    /// timeout plus n / rate).
    #[arg(long, default_value_t = ServerLimits::default().min_upload_rate >> 10)]
    min_upload_kib: u64,
    /// File of API tokens, one per line (`#` comments): every route but /v1/info and
    /// /v1/bundle then needs `Authorization: Bearer TOKEN` (thex infer --token).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Most sessions per API token.
    #[arg(long, default_value_t = ServerLimits::default().sessions_per_client)]
    sessions_per_token: usize,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Runs `thex serve` until the process is stopped.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .init();
    let engine = EngineParams {
        buckets: args.buckets.clone(),
        pre_encode: !args.lazy_encode,
        ntt_weights_max_bytes: args.ntt_weights_max_gib.saturating_mul(1 << 30),
        rounds: args.rounds,
        blind_bits: args.blind_bits,
        ..Default::default()
    };
    let t = Instant::now();
    let loaded = thex_model::load_model_dir(&args.model, &Default::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let served = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let plan = ResolvedPlan::from_json(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            ServedModel::compile_plan(&loaded, &plan)
        }
        None => ServedModel::compile(&loaded, &engine),
    }
    .with_context(|| format!("compiling {}", args.model.display()))?;
    drop(loaded);
    let m = &served.model;
    if let Some(path) = &args.save_plan {
        std::fs::write(path, m.resolved().to_json())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plan saved to {}", path.display());
    }
    eprintln!(
        "compiled {} ({} layers, N = 2^{}, {} levels, log QP = {:.0}, buckets {:?}, {} {} rounds) in {:.1} s",
        args.model.display(),
        m.layers(),
        m.params().log_n(),
        m.params().max_level(),
        m.params().log_qp(),
        m.buckets(),
        m.rounds(),
        m.resolved().config.rounds.name(),
        t.elapsed().as_secs_f64()
    );
    let weight_bytes: usize = m
        .buckets()
        .iter()
        .filter_map(|&b| m.plan(b).ok())
        .map(|p| p.weight_bytes)
        .sum();
    eprintln!(
        "encoded weights {:.1} GB ({})",
        weight_bytes as f64 / 1e9,
        if !m.resolved().config.pre_encode {
            "encoded per request, not held"
        } else {
            "held in memory; --lazy-encode trades them for encoding time per request"
        }
    );
    let bundle_hash = served.bundle_sha256.clone();
    let limits = ServerLimits {
        max_body_bytes: args.max_body_mib << 20,
        max_sessions: args.max_sessions,
        max_key_memory: args.max_key_mib << 20,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        compute_threads: args.threads.max(1),
        compute_queue: args.compute_queue,
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout),
        min_upload_rate: args.min_upload_kib << 10,
        sessions_per_client: args.sessions_per_token,
        ..ServerLimits::default()
    };
    let tokens = args
        .tokens
        .as_deref()
        .map(ApiTokens::from_file)
        .transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_pem_files(cert, key)?),
        _ => None,
    };
    if tls.is_none() && !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: plain HTTP on {}: clients' ciphertexts and session ids cross the network \
             unencrypted and unauthenticated; serve with --tls-cert/--tls-key",
            args.addr
        );
    }
    if tokens.is_none() && !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: no --tokens: anyone who reaches {} can open sessions",
            args.addr
        );
    }
    let config = ServerConfig {
        limits,
        tokens,
        tls,
    };
    let server = ServerHandle::start(served, args.addr, config)?;
    // Scripts read the URL from the last line; a closed stdout must not stop the server.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "bundle sha256 {bundle_hash}");
    let _ = writeln!(out, "listening {}", server.url());
    let _ = out.flush();
    server.wait()?;
    Ok(())
}
