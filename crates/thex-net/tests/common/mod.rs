//! Shared test helpers: a small random THE-X model directory (with a WordPiece vocabulary),
//! compiled once per test binary, and raw HTTP calls.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thex_engine::EngineParams;
use thex_model::{
    BertConfig, HeadConfig, ParamMode, Pooling, SaveOptions, ThexConfig, ThexModel,
    layer_norm_prefixes, save_model_dir,
};
use thex_net::ServedModel;

pub const LAYERS: usize = 2;
pub const HIDDEN: usize = 32;
pub const FFN: usize = 128;
pub const VOCAB: usize = 50;
pub const LABELS: usize = 3;

/// Writes `[PAD] [UNK] [CLS] [SEP] [MASK] w5 … w49` as `vocab.txt` into `dir`.
pub fn write_vocab(dir: &std::path::Path) {
    let mut words: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    words.extend((5..VOCAB).map(|i| format!("w{i}")));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), words.join("\n") + "\n").unwrap();
}

/// A THE-X model with seeded random weights small enough for activations of order one, and
/// a reciprocal network that interpolates `1/s` on `[1, 64]` piecewise linearly (a random
/// `T` would make the softmax surrogate meaningless and its errors large).
pub fn random_model(seed: u64) -> ThexModel {
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 2, "intermediate_size": FFN, "hidden_act": "relu",
        "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    }))
    .unwrap();
    let head = HeadConfig {
        pooling: Pooling::Mean,
        labels: (0..LABELS).map(|i| format!("class{i}")).collect(),
    };
    let dev = Device::Cpu;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut add = |name: &str, shape: &[usize], lo: f32, hi: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
        tensors.insert(name.into(), Tensor::from_vec(v, shape, &dev).unwrap());
    };
    add(
        "embeddings.word_embeddings.weight",
        &[VOCAB, HIDDEN],
        -1.0,
        1.0,
    );
    add(
        "embeddings.position_embeddings.weight",
        &[64, HIDDEN],
        -0.5,
        0.5,
    );
    add(
        "embeddings.token_type_embeddings.weight",
        &[2, HIDDEN],
        -0.1,
        0.1,
    );
    add("embeddings.LayerNorm.weight", &[HIDDEN], 0.9, 1.1);
    add("embeddings.LayerNorm.bias", &[HIDDEN], -0.1, 0.1);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", FFN, HIDDEN),
            ("output.dense", HIDDEN, FFN),
        ] {
            let a = 1.7 / (inp as f32).sqrt();
            add(&format!("{p}.{name}.weight"), &[out, inp], -a, a);
            add(&format!("{p}.{name}.bias"), &[out], -0.1, 0.1);
        }
        for ln in layer_norm_prefixes(l) {
            add(&format!("{ln}.weight"), &[HIDDEN], 0.5, 0.9);
            add(&format!("{ln}.bias"), &[HIDDEN], -0.1, 0.1);
        }
    }
    add("classifier.weight", &[LABELS, HIDDEN], -0.5, 0.5);
    add("classifier.bias", &[LABELS], -0.1, 0.1);
    // T(s) = 1/k_0 + Σ_i c_i ReLU(s - k_i): knots k_i geometric on [1, 64], c_i the changes
    // of slope of the interpolant of 1/s; the middle layer is the identity.
    let h = 16;
    let knots: Vec<f64> = (0..h)
        .map(|i| 64f64.powf(i as f64 / (h - 1) as f64))
        .collect();
    let slope = |i: usize| (1.0 / knots[i + 1] - 1.0 / knots[i]) / (knots[i + 1] - knots[i]);
    let mut c = vec![0f32; h];
    for (i, ci) in c.iter_mut().enumerate().take(h - 1) {
        *ci = (slope(i) - if i == 0 { 0.0 } else { slope(i - 1) }) as f32;
    }
    let eye: Vec<f32> = (0..h * h)
        .map(|k| f32::from(u8::from(k / h == k % h)))
        .collect();
    let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
    tensors.insert("reciprocal.fc1.weight".into(), t(vec![1.0; h], &[h, 1]));
    tensors.insert(
        "reciprocal.fc1.bias".into(),
        t(knots.iter().map(|k| -*k as f32).collect(), &[h]),
    );
    tensors.insert("reciprocal.fc2.weight".into(), t(eye, &[h, h]));
    tensors.insert("reciprocal.fc2.bias".into(), t(vec![0.0; h], &[h]));
    tensors.insert("reciprocal.fc3.weight".into(), t(c, &[1, h]));
    tensors.insert("reciprocal.fc3.bias".into(), t(vec![1.0], &[1]));
    let thex = ThexConfig::full_thex(Some(head));
    ThexModel::from_tensors(&cfg, &thex, tensors, ParamMode::Inference, &dev).unwrap()
}

/// Writes the random model as a model directory under the test target's temp dir.
pub fn model_dir(name: &str, seed: u64) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("thex-net-{name}-{}", std::process::id()));
    let vocab = root.join("vocab");
    write_vocab(&vocab);
    let dir = root.join("model");
    save_model_dir(&random_model(seed), &vocab, &dir, &SaveOptions::default()).unwrap();
    dir
}

/// Engine settings of the tests: one bucket of 16 tokens.
pub fn engine() -> EngineParams {
    EngineParams {
        buckets: vec![16],
        ..Default::default()
    }
}

/// The model directory and its compiled program, built once per test binary.
pub fn served() -> &'static (PathBuf, ServedModel) {
    static S: OnceLock<(PathBuf, ServedModel)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = model_dir("main", 11);
        let served = ServedModel::load(&dir, &engine()).unwrap();
        (dir, served)
    })
}

/// A raw answer: status, headers and body.
pub struct Raw {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Raw {
    /// The `error` field of a JSON error body (panics if the body is not one).
    pub fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)));
        v["error"].as_str().expect("error field").to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn finish(url: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Raw {
    let mut r = r.unwrap_or_else(|e| panic!("HTTP exchange with {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    Raw {
        status,
        headers,
        body,
    }
}

/// `POST url` with a binary body (announced with `Expect: 100-continue`, so that a refusal
/// before the body is read arrives as an answer).
pub fn post(url: &str, body: &[u8]) -> Raw {
    post_as(url, body, None)
}

/// [`post`] with an API token.
pub fn post_as(url: &str, body: &[u8], token: Option<&str>) -> Raw {
    let mut r = agent().post(url).header("expect", "100-continue");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    finish(url, r.send(body))
}

/// `DELETE url`.
pub fn delete(url: &str) -> Raw {
    finish(url, agent().delete(url).call())
}

/// `GET url`.
pub fn get(url: &str) -> Raw {
    get_as(url, None)
}

/// [`get`] with an API token.
pub fn get_as(url: &str, token: Option<&str>) -> Raw {
    let mut r = agent().get(url);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    finish(url, r.call())
}
