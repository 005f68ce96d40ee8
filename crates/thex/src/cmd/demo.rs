//! `thex demo`: the whole THE-X protocol on this machine over real HTTP, next to the
//! plaintext prediction of the same model.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget};
use serde_json::json;
use thex_engine::{EngineParams, length_bucket};
use thex_model::{LoadOptions, load_model_dir};
use thex_net::{Client, ClientOptions, ServedModel, ServerHandle, ServerLimits};

use crate::cmd::infer::result_json;

/// Arguments of `thex demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Text to classify.
    #[arg(long, default_value = "a gripping, beautifully acted film")]
    text: String,
    /// THE-X model directory (default: the built-in SST-2 model, installed if needed).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Round protocol: `blinded` (the server blinds every value the client decrypts) or
    /// `thex` (the paper's rounds).
    #[arg(long, default_value = "blinded")]
    rounds: thex_client::Rounds,
    /// Print JSON: label, plaintext_label, probabilities, max_logit_diff, rounds, bytes_up,
    /// bytes_down, seconds, phases (and more).
    #[arg(long)]
    json: bool,
}

/// One step with a spinner on stderr, reported as `✓ message (seconds)` when done.
struct Step {
    bar: ProgressBar,
    start: Instant,
    quiet: bool,
}

impl Step {
    fn new(message: &str, quiet: bool) -> Self {
        let bar = ProgressBar::new_spinner().with_message(message.to_string());
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        } else {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Self {
            bar,
            start: Instant::now(),
            quiet,
        }
    }

    fn message(&self, message: String) {
        self.bar.set_message(message);
    }

    fn done(self, message: &str) -> f64 {
        let s = self.start.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        if !self.quiet {
            eprintln!("✓ {message} ({s:.2} s)");
        }
        s
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Runs `thex demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let quiet = args.json;
    let total = Instant::now();
    let mut setup: Vec<(&str, f64)> = Vec::new();
    let dir = match args.model {
        Some(d) => d,
        None => crate::cmd::model::ensure_default_model(quiet)?,
    };

    let step = Step::new("loading the model", quiet);
    let loaded = load_model_dir(&dir, &LoadOptions::default())
        .with_context(|| format!("loading {}", dir.display()))?;
    let tokens = loaded.tokenize(&args.text)?.len();
    let bucket = length_bucket(tokens);
    setup.push((
        "load_model",
        step.done(&format!("model {} ({tokens} tokens)", dir.display())),
    ));

    let step = Step::new("plaintext inference", quiet);
    let plain = loaded.predict_batch(&[args.text.as_str()])?.remove(0);
    let plain_logits: Vec<f64> = plain.logits.iter().map(|&x| x as f64).collect();
    setup.push((
        "plaintext",
        step.done(&format!("plaintext prediction: {}", plain.label)),
    ));

    let step = Step::new(
        &format!("server: compiling the encrypted program for bucket {bucket}"),
        quiet,
    );
    let engine = EngineParams {
        buckets: vec![bucket],
        rounds: args.rounds,
        ..Default::default()
    };
    let served = ServedModel::compile(&loaded, &engine)?;
    drop(loaded);
    let p = served.model.params().clone();
    setup.push((
        "server.compile",
        step.done(&format!(
            "server: program compiled (N = 2^{}, {} levels, log QP = {:.0}, 128-bit secure, {} rounds)",
            p.log_n(),
            p.max_level(),
            p.log_qp(),
            args.rounds.name()
        )),
    ));
    let rounds_total = served.model.rounds();
    let server = ServerHandle::start(
        served,
        "127.0.0.1:0".parse().expect("address"),
        ServerLimits::default(),
    )?;

    let step = Step::new("client: downloading the bundle over HTTP", quiet);
    let options = ClientOptions::default();
    let mut client = Client::prepare(&server.url(), &options)?;
    setup.push((
        "client.bundle",
        step.done(&format!(
            "client: bundle from {} ({:.1} MB, hash verified), secret key generated",
            server.url(),
            client.connect_report().bundle_bytes as f64 / 1e6
        )),
    ));
    let step = Step::new("client: generating and uploading evaluation keys", quiet);
    client.open_session(&[bucket])?;
    let rep = client.connect_report().clone();
    setup.push((
        "client.keys",
        step.done(&format!(
            "client: evaluation keys {:.1} MB generated in {:.2} s, uploaded in {:.2} s",
            rep.key_bytes as f64 / 1e6,
            rep.keygen_seconds,
            rep.upload_seconds
        )),
    ));

    let step = Step::new("encrypted inference: encrypting", quiet);
    let r = client.infer_with_progress(&args.text, &mut |round| {
        step.message(format!(
            "encrypted inference: round {}/{rounds_total} answered",
            round
        ));
    })?;
    step.done(&format!(
        "encrypted prediction: {} ({} rounds)",
        r.label, r.rounds
    ));
    client.close()?;
    server.shutdown()?;

    let diff = r
        .logits
        .iter()
        .zip(&plain_logits)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let plain_id = argmax(&plain_logits);
    if args.json {
        let mut v = result_json(&r);
        v["plaintext_label"] = json!(plain.label);
        v["plaintext_label_id"] = json!(plain_id);
        v["plaintext_logits"] = json!(plain_logits);
        v["plaintext_probabilities"] = json!(plain.probabilities);
        v["max_logit_diff"] = json!(diff);
        v["key_bytes"] = json!(rep.key_bytes);
        v["setup_seconds"] = json!(
            setup
                .iter()
                .map(|(n, s)| ((*n).to_string(), json!(s)))
                .collect::<serde_json::Map<_, _>>()
        );
        v["wall_seconds"] = json!(total.elapsed().as_secs_f64());
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("text       {:?}", args.text);
    println!(
        "encrypted  {:<10} p = {:?}",
        r.label,
        r.probabilities
            .iter()
            .map(|p| format!("{p:.4}"))
            .collect::<Vec<_>>()
    );
    println!(
        "plaintext  {:<10} p = {:?}",
        plain.label,
        plain
            .probabilities
            .iter()
            .map(|p| format!("{p:.4}"))
            .collect::<Vec<_>>()
    );
    println!("max |logit difference| {diff:.2e}");
    println!(
        "{} rounds, {:.2} MB up, {:.2} MB down per inference; {:.1} MB of keys uploaded once",
        r.rounds,
        r.bytes_up as f64 / 1e6,
        r.bytes_down as f64 / 1e6,
        rep.key_bytes as f64 / 1e6
    );
    println!("inference {:.2} s:", r.total_seconds);
    for p in &r.phases {
        println!("  {:<22} {:>8.3} s", p.name, p.seconds);
    }
    Ok(())
}
