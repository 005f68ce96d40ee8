//! One encrypted inference of a real or random model, client and server in this process, with
//! phase timings, rounds, bytes and key sizes.
//!
//! `cargo run --release -p thex-engine --example local -- (--model DIR | --random SHAPE)
//!  [--text "..." | --tokens N] [--layers K] [--pre-encode] [--repeat R] [--breakdown]
//!  [--plan-only] [--log-q0 BITS] [--log-scale BITS] [--extra-levels E]
//!  [--ntt-weights-max-gib G] [--attention-values rows|tokens]`
//!
//! `DIR` is a THE-X model directory (with `thex.json`), or a plain BERT directory such as the
//! MiniLM-L6 cache: then its first `K` layers (default 2) get every THE-X approximation with
//! fresh (untrained) reciprocal network and classifier — fine for time, rounds, bytes and
//! plaintext-vs-encrypted agreement, meaningless as a classifier. `--random bert-tiny` (2
//! layers, hidden 128, 2 heads, FFN 512) or `--random minilm` (K layers of hidden 384, 12
//! heads, FFN 1536) builds a model with seeded random weights instead. `--tokens N` runs on N
//! synthetic token ids instead of a text. The server encodes the weights of the one bucket the
//! input needs: per inference by default, once at compile time with `--pre-encode`.
//! `--breakdown` prints the planned key switches of layer 0 per operation and of every layer;
//! `--plan-only` prints them and stops before key generation. `--log-q0`, `--log-scale` and `--extra-levels`
//! override the engine's CKKS parameter choice, `--ntt-weights-max-gib` its limit for weights in
//! NTT form (`EngineParams`; 0 keeps them compact), `--attention-values` the compiler's choice of
//! A·V masking (`rows`: weights split by rows, `tokens`: V token-masked).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_nn::VarMap;
use he_linalg::attention::AvMasking;
use thex_client::{ClientSession, Message};
use thex_engine::{EngineParams, ServerModel, ServerSession, run_local};
use thex_model::{
    Batch, HeadConfig, LoadOptions, ParamMode, Pooling, ThexConfig, ThexModel, TrainParams,
    load_model_dir,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model_dir: Option<PathBuf> = None;
    let mut random: Option<String> = None;
    let mut text = "a gripping, beautifully acted film".to_string();
    let mut tokens: Option<usize> = None;
    let mut layers = 2usize;
    let mut pre_encode = false;
    let mut repeat = 1usize;
    let mut breakdown = false;
    let mut plan_only = false;
    let mut defaults = EngineParams::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model_dir = Some(PathBuf::from(val()?)),
            "--random" => random = Some(val()?),
            "--text" => text = val()?,
            "--tokens" => tokens = Some(val()?.parse()?),
            "--layers" => layers = val()?.parse()?,
            "--pre-encode" => pre_encode = true,
            "--repeat" => repeat = val()?.parse()?,
            "--breakdown" => breakdown = true,
            "--plan-only" => plan_only = true,
            "--log-q0" => defaults.log_q0 = val()?.parse()?,
            "--extra-levels" => defaults.extra_levels = val()?.parse()?,
            "--log-scale" => defaults.log_scale = val()?.parse()?,
            "--ntt-weights-max-gib" => {
                defaults.ntt_weights_max_bytes = val()?.parse::<usize>()?.saturating_mul(1 << 30)
            }
            "--attention-values" => {
                defaults.attention_values = Some(match val()?.as_str() {
                    "rows" => AvMasking::WeightRows,
                    "tokens" => AvMasking::ValueTokens,
                    other => return Err(format!("unknown A·V masking {other}").into()),
                })
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let t = Instant::now();
    let (model, ids): (ThexModel, Vec<u32>) = match (&model_dir, &random) {
        (Some(dir), None) => {
            let loaded = if dir.join("thex.json").is_file() {
                load_model_dir(dir, &LoadOptions::default())?
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
                        init_seed: None,
                    }),
                    ..Default::default()
                };
                load_model_dir(dir, &opts)?
            };
            let ids = match tokens {
                Some(n) => synthetic_ids(n, loaded.model.config().vocab_size),
                None => loaded.tokenize(&text)?,
            };
            (loaded.model, ids)
        }
        (None, Some(shape)) => {
            let s = match shape.as_str() {
                "bert-tiny" => thex_model::synthetic::BERT_TINY,
                "minilm" => common::Shape {
                    layers,
                    hidden: 384,
                    heads: 12,
                    ffn: 1536,
                    ..thex_model::synthetic::BERT_TINY
                },
                other => return Err(format!("unknown --random shape {other}").into()),
            };
            let model = common::random_model(s, 5);
            (model, synthetic_ids(tokens.unwrap_or(16), s.vocab))
        }
        _ => return Err("give exactly one of --model DIR and --random SHAPE".into()),
    };
    let batch = Batch::new(std::slice::from_ref(&ids), 0, model.device())?;
    let plain: Vec<f64> = model
        .forward(&batch, false)?
        .logits
        .ok_or("model has no head")?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    println!(
        "model: {} layers, hidden {}, {} tokens (loaded in {:.2} s)",
        model.config().num_hidden_layers,
        model.config().hidden_size,
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    let bucket = thex_engine::length_bucket(ids.len());
    let engine = EngineParams {
        buckets: vec![bucket],
        pre_encode,
        ..defaults
    };
    let t = Instant::now();
    let server_model = Arc::new(ServerModel::compile(&model, &engine)?);
    let plan = server_model.plan(bucket)?;
    println!(
        "compiled: N = 2^{}, {} levels, scale 2^{:.0}, decrypted at 2^{:.0} (calibrated max |value| {:.1}), log QP = {:.0}, bucket {bucket}: A·V {:?}, {} Galois keys, {} key switches, {} plaintexts, {:.1} MB encoded weights, pre-encode {pre_encode} ({:.2} s)",
        server_model.params().log_n(),
        server_model.params().max_level(),
        server_model.params().default_scale().log2(),
        server_model.request_scale().log2(),
        server_model.calibrated_magnitude().unwrap_or(f64::NAN),
        server_model.params().log_qp(),
        plan.attention_values,
        plan.galois_steps.len(),
        plan.key_switches,
        plan.plaintexts,
        plan.weight_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    if breakdown || plan_only {
        print_breakdown(server_model.layer_plans(bucket)?);
    }
    if plan_only {
        return Ok(());
    }

    let t = Instant::now();
    let mut client = ClientSession::new(server_model.client_bundle())?;
    let keys = client.evaluation_keys(&[bucket])?;
    let key_bytes = keys.to_bytes(server_model.params()).len();
    let mut server = ServerSession::new(server_model.clone(), keys, &[bucket])?;
    println!(
        "keys: {:.1} MB (relin + {} Galois, seeded) in {:.2} s",
        key_bytes as f64 / 1e6,
        plan.galois_steps.len(),
        t.elapsed().as_secs_f64()
    );

    for run in 0..repeat {
        let r = run_local(&mut client, &mut server, &ids)?;
        let diff = r
            .logits
            .iter()
            .zip(&plain)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        let plain_label = (0..plain.len()).fold(0, |b, i| if plain[i] > plain[b] { i } else { b });
        println!(
            "run {run}: encrypted label {} ({:?}), plaintext label {plain_label}, max logit difference {diff:.3e}",
            r.label, r.probabilities
        );
        println!(
            "rounds {}, bytes up {:.2} MB, down {:.2} MB, total {:.2} s",
            r.rounds,
            r.bytes_up as f64 / 1e6,
            r.bytes_down as f64 / 1e6,
            r.total_seconds
        );
        let mut by_segment: BTreeMap<String, f64> = BTreeMap::new();
        for p in &r.phases {
            println!("  {:<36} {:>8.3} s", p.name, p.seconds);
            if let Some(rest) = p.name.strip_prefix("server.layer") {
                let seg = rest.split_once('.').map_or(rest, |(_, s)| s);
                *by_segment.entry(format!("server.*.{seg}")).or_default() += p.seconds;
            }
        }
        for (seg, s) in &by_segment {
            println!("  sum {seg:<32} {s:>8.3} s");
        }
    }
    Ok(())
}

/// `n` token ids spread over the vocabulary (skipping the first 1000 special/unused ids when
/// the vocabulary is large).
/// Key switches (rotations, hoisted, relinearizations) of each operation of layer 0, and
/// the total of every layer.
fn print_breakdown(plans: &[he_linalg::plan::Plan]) {
    if let Some(p) = plans.first() {
        println!("layer 0 key switches by operation:");
        for op in p.ops() {
            println!(
                "  {:<44} {:>5} ks = {:>4} rot ({:>4} hoisted) + {:>3} relin, {:>3} steps, depth {}",
                op.name,
                op.key_switches(),
                op.rotations,
                op.hoisted_rotations,
                op.relinearizations,
                op.rotation_steps.len(),
                op.depth
            );
        }
    }
    for (i, p) in plans.iter().enumerate() {
        println!(
            "layer {i}: {} key switches ({} rotations, {} relinearizations), {} Galois steps",
            p.key_switches(),
            p.rotations(),
            p.relinearizations(),
            p.galois_steps().len()
        );
    }
}

fn synthetic_ids(n: usize, vocab: usize) -> Vec<u32> {
    let base = if vocab > 2000 { 1000 } else { 2 };
    (0..n)
        .map(|i| (base + (i * 7919) % (vocab - base)) as u32)
        .collect()
}
