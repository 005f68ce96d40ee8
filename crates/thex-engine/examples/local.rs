//! One encrypted inference of a real model, client and server in this process.
//!
//! `cargo run --release -p thex-engine --example local -- --model DIR --text "..." [--layers K]`
//!
//! `DIR` is a THE-X model directory (with `thex.json`), or a plain BERT directory such as the
//! MiniLM-L6 cache: then its first `K` layers (default 2) get every THE-X approximation with
//! fresh (untrained) reciprocal network and classifier — fine for time, rounds, bytes and
//! plaintext-vs-encrypted agreement, meaningless as a classifier. Weights are encoded per
//! inference (`pre_encode = false`) for the one bucket the text needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_nn::VarMap;
use thex_engine::{ClientSession, EngineParams, ServerModel, ServerSession, run_local};
use thex_model::{
    Batch, HeadConfig, LoadOptions, ParamMode, Pooling, ThexConfig, TrainParams, load_model_dir,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model_dir: Option<PathBuf> = None;
    let mut text = "a gripping, beautifully acted film".to_string();
    let mut layers = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model_dir = Some(PathBuf::from(val()?)),
            "--text" => text = val()?,
            "--layers" => layers = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = model_dir.ok_or("--model DIR is required")?;

    let t = Instant::now();
    let loaded = if dir.join("thex.json").is_file() {
        load_model_dir(&dir, &LoadOptions::default())?
    } else {
        let head = HeadConfig {
            pooling: Pooling::Mean,
            labels: vec!["negative".into(), "positive".into()],
        };
        let opts = LoadOptions {
            layers: Some(layers),
            thex: Some(ThexConfig::full_thex(Some(head))),
            mode: ParamMode::Train(TrainParams {
                varmap: VarMap::new(),
                frozen_prefixes: vec![],
                init_missing: true,
            }),
            ..Default::default()
        };
        load_model_dir(&dir, &opts)?
    };
    let ids = loaded.tokenize(&text)?;
    let batch = Batch::new(std::slice::from_ref(&ids), 0, loaded.model.device())?;
    let plain: Vec<f64> = loaded
        .model
        .forward(&batch, false)?
        .logits
        .ok_or("model has no head")?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    println!(
        "model: {} layers, hidden {}, {} tokens (loaded in {:.2} s)",
        loaded.model.config().num_hidden_layers,
        loaded.model.config().hidden_size,
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    let bucket = thex_engine::DEFAULT_BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= ids.len())
        .ok_or("text longer than 128 tokens")?;
    let engine = EngineParams {
        buckets: vec![bucket],
        pre_encode: false,
        ..Default::default()
    };
    let t = Instant::now();
    let server_model = Arc::new(ServerModel::compile(&loaded.model, &engine)?);
    let plan = server_model.plan(bucket)?;
    println!(
        "compiled: N = 2^{}, {} levels, log QP = {:.0}, bucket {bucket}: {} Galois keys, {} key switches, {} plaintexts ({:.2} s)",
        server_model.params().log_n(),
        server_model.params().max_level(),
        server_model.params().log_qp(),
        plan.galois_steps.len(),
        plan.key_switches,
        plan.plaintexts,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut client =
        ClientSession::new(server_model.client_bundle())?.with_tokenizer(loaded.tokenizer.clone());
    let keys = client.evaluation_keys(&[bucket])?;
    let key_bytes = keys.to_bytes(server_model.params()).len();
    let mut server = ServerSession::new(server_model.clone(), keys, &[bucket])?;
    println!(
        "keys: {:.1} MB (relin + {} Galois, seeded) in {:.2} s",
        key_bytes as f64 / 1e6,
        plan.galois_steps.len(),
        t.elapsed().as_secs_f64()
    );

    let r = run_local(&mut client, &mut server, &text)?;
    let diff = r
        .logits
        .iter()
        .zip(&plain)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let plain_label = (0..plain.len()).fold(0, |b, i| if plain[i] > plain[b] { i } else { b });
    println!(
        "encrypted: label {} ({:?}), plaintext label {plain_label}",
        r.label, r.probabilities
    );
    println!(
        "logits encrypted {:?}\nlogits plaintext {plain:?}",
        r.logits
    );
    println!("max logit difference {diff:.3e}");
    println!(
        "rounds {}, bytes up {:.1} MB, down {:.1} MB, total {:.2} s",
        r.rounds,
        r.bytes_up as f64 / 1e6,
        r.bytes_down as f64 / 1e6,
        r.total_seconds
    );
    for p in &r.timings {
        println!("  {:<36} {:>8.3} s", p.name, p.seconds);
    }
    Ok(())
}
