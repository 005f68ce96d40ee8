//! `thex bench e2e`: encrypted inference end to end (client and server in this process, every
//! message through its byte form), per phase and per layer, with bytes, rounds and key sizes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use he_linalg::attention::AvMasking;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use thex_client::{ClientSession, Message, Rounds};
use thex_engine::{EngineParams, ServerModel, ServerSession, run_local};
use thex_model::{Batch, ThexModel};

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct E2eRun {
    /// Model name.
    pub model: String,
    /// Tokens of the input (= the length bucket).
    pub tokens: usize,
    /// The round protocol: `blinded` or `thex`.
    pub protocol: Rounds,
    /// Median wall time of one inference in seconds (client and server, all rounds).
    pub total_s: f64,
    /// Client rounds of one inference.
    pub rounds: usize,
    /// Bytes client → server per inference (input and round replies).
    pub bytes_up: usize,
    /// Bytes server → client per inference (round requests and logits).
    pub bytes_down: usize,
    /// One-time evaluation key upload in bytes (relinearization + Galois keys, seeded).
    pub key_bytes: usize,
    /// Seconds per phase of the median inference (`client.*`, `server.layer{i}.*`).
    pub phases: BTreeMap<String, f64>,
    /// Seconds per encoder layer on the server (sum of its segments).
    pub layers: Vec<f64>,
    /// Server start: compiling and encoding the weights for this bucket.
    pub compile_s: f64,
    /// Client key generation.
    pub keygen_s: f64,
    /// log2 of the ring degree.
    pub log_n: u32,
    /// log2 of the encoding scale the compiler chose.
    pub log_scale: f64,
    /// log2 of the scale of the ciphertexts the client decrypts (calibrated, at most
    /// `log_scale`).
    pub request_log_scale: f64,
    /// Largest value the client decrypts on the calibration inputs.
    pub calibrated_max: Option<f64>,
    /// How attention · V is masked at this bucket (`weight_rows` or `value_tokens`: the
    /// compiler's choice per bucket).
    pub attention_values: AvMasking,
    /// Largest |encrypted − plaintext| logit of the measured inferences.
    pub max_logit_error: Option<f64>,
    /// Inferences measured.
    pub repeats: usize,
}

/// Measures `model` at each of `tokens` (each a power of two, compiled as its own bucket)
/// with the rounds `protocol`.
pub fn measure(
    name: &str,
    model: &ThexModel,
    (tokens, protocol): (&[usize], Rounds),
    repeats: usize,
    on_progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<E2eRun>> {
    let vocab = model.config().vocab_size as u32;
    let mut runs = Vec::new();
    for &t in tokens {
        anyhow::ensure!(
            t.is_power_of_two() && t >= 4,
            "--tokens {t}: each length must be a power of two >= 4 (a length bucket)"
        );
        let what = format!("{name} @ {t} tokens, {} rounds", protocol.name());
        on_progress(&format!("{what}: compiling"));
        let engine = EngineParams {
            buckets: vec![t],
            rounds: protocol,
            ..EngineParams::default()
        };
        let start = Instant::now();
        let server_model = Arc::new(ServerModel::compile(model, &engine)?);
        let compile_s = start.elapsed().as_secs_f64();
        on_progress(&format!("{what}: keys"));
        let start = Instant::now();
        let mut client = ClientSession::new(server_model.client_bundle())?;
        let keys = client.evaluation_keys(&[t])?;
        let keygen_s = start.elapsed().as_secs_f64();
        let key_bytes = keys.to_bytes(server_model.params()).len();
        let mut server = ServerSession::new(server_model.clone(), keys, &[t])?;
        let mut rng = ChaCha20Rng::seed_from_u64(t as u64);
        // [CLS] w… [SEP], ids drawn away from the special tokens.
        let mut results = Vec::new();
        let mut max_logit_error: Option<f64> = None;
        for r in 0..repeats.max(1) {
            on_progress(&format!("{what}: inference {}/{}", r + 1, repeats.max(1)));
            let mut ids = vec![101.min(vocab - 1)];
            ids.extend((2..t).map(|_| rng.gen_range(5.min(vocab - 1)..vocab)));
            ids.push(102.min(vocab - 1));
            let result = run_local(&mut client, &mut server, &ids)?;
            let batch = Batch::new(std::slice::from_ref(&ids), 0, &Device::Cpu)?;
            if let Some(plain) = model.forward(&batch, false)?.logits {
                let plain: Vec<f32> = plain.flatten_all()?.to_vec1()?;
                let err = result
                    .logits
                    .iter()
                    .zip(&plain)
                    .fold(0f64, |m, (a, b)| m.max((a - f64::from(*b)).abs()));
                max_logit_error = Some(max_logit_error.unwrap_or(0.0).max(err));
            }
            results.push(result);
        }
        results.sort_by(|a, b| a.total_seconds.total_cmp(&b.total_seconds));
        let med = results.swap_remove(results.len() / 2);
        let mut phases = BTreeMap::new();
        let mut layers = vec![0.0; server_model.layers()];
        for p in &med.phases {
            *phases.entry(p.name.clone()).or_insert(0.0) += p.seconds;
            if let Some(rest) = p.name.strip_prefix("server.layer")
                && let Some((i, _)) = rest.split_once('.')
                && let Ok(i) = i.parse::<usize>()
                && i < layers.len()
            {
                layers[i] += p.seconds;
            }
        }
        runs.push(E2eRun {
            model: name.to_string(),
            tokens: t,
            protocol,
            total_s: med.total_seconds,
            rounds: med.rounds,
            bytes_up: med.bytes_up,
            bytes_down: med.bytes_down,
            key_bytes,
            phases,
            layers,
            compile_s,
            keygen_s,
            log_n: server_model.params().log_n(),
            log_scale: server_model.params().default_scale().log2(),
            request_log_scale: server_model.request_scale().log2(),
            calibrated_max: server_model.calibrated_magnitude(),
            attention_values: server_model.plan(t)?.attention_values,
            max_logit_error,
            repeats: repeats.max(1),
        });
    }
    Ok(runs)
}

/// The THE-X model to measure and its name: `dir`, or the default model (installed if needed).
pub fn load_model(dir: Option<PathBuf>, quiet: bool) -> anyhow::Result<(String, ThexModel)> {
    let dir = match dir {
        Some(d) => d,
        None => crate::default_model::ensure(quiet)?,
    };
    let loaded = thex_model::load_model_dir(&dir, &Default::default())
        .with_context(|| format!("loading {}", dir.display()))?;
    let name = dir
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    Ok((name, loaded.model))
}

/// Blinded against THE-X rounds on the same model and tokens, where a run has both.
#[derive(Debug, Clone, Serialize)]
pub struct BlindingCost {
    /// Model name.
    pub model: String,
    /// Tokens.
    pub tokens: usize,
    /// Median time blinded / THE-X.
    pub time_ratio: f64,
    /// Bytes per inference (both directions) blinded / THE-X.
    pub bytes_ratio: f64,
    /// Evaluation key bytes blinded / THE-X.
    pub key_bytes_ratio: f64,
}

/// The cost of blinding for every (model, tokens) measured with both protocols.
pub fn blinding_costs(runs: &[E2eRun]) -> Vec<BlindingCost> {
    let find = |r: &E2eRun, p: Rounds| {
        runs.iter()
            .find(|o| o.model == r.model && o.tokens == r.tokens && o.protocol == p)
    };
    runs.iter()
        .filter(|r| r.protocol == Rounds::Blinded)
        .filter_map(|b| {
            let t = find(b, Rounds::Thex)?;
            Some(BlindingCost {
                model: b.model.clone(),
                tokens: b.tokens,
                time_ratio: b.total_s / t.total_s,
                bytes_ratio: (b.bytes_up + b.bytes_down) as f64
                    / (t.bytes_up + t.bytes_down) as f64,
                key_bytes_ratio: b.key_bytes as f64 / t.key_bytes as f64,
            })
        })
        .collect()
}

/// Prints runs as a table, then the blinding's cost where both protocols ran.
pub fn print_table(runs: &[E2eRun]) {
    println!(
        "{:<18} {:>6} {:>8} {:>9} {:>7} {:>10} {:>10} {:>10} {:>9} {:>11} {:>6}  per layer (s)",
        "model",
        "tokens",
        "protocol",
        "total s",
        "rounds",
        "up MB",
        "down MB",
        "keys MB",
        "compile s",
        "scale / dec",
        "A·V"
    );
    for r in runs {
        let layers: Vec<String> = r.layers.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{:<18} {:>6} {:>8} {:>9.2} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>9.1} {:>11} {:>6}  {}",
            r.model,
            r.tokens,
            r.protocol.name(),
            r.total_s,
            r.rounds,
            r.bytes_up as f64 / 1e6,
            r.bytes_down as f64 / 1e6,
            r.key_bytes as f64 / 1e6,
            r.compile_s,
            format!("2^{:.0} / 2^{:.0}", r.log_scale, r.request_log_scale),
            match r.attention_values {
                AvMasking::WeightRows => "rows",
                AvMasking::ValueTokens => "tokens",
            },
            layers.join(" ")
        );
    }
    for c in blinding_costs(runs) {
        println!(
            "blinded / thex, {} @ {}: time {:.2}x, bytes per inference {:.2}x, key bytes {:.2}x",
            c.model, c.tokens, c.time_ratio, c.bytes_ratio, c.key_bytes_ratio
        );
    }
}
