//! Shared helpers of the integration tests.

use std::path::PathBuf;

/// The real MiniLM-L6 directory: `$THEX_MODEL_DIR`, else the `thex model fetch` cache
/// (`$XDG_CACHE_HOME/thex/models/minilm-l6`). `None` (after printing why) when absent.
#[allow(dead_code)]
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("THEX_MODEL_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match thex_model::fetch::default_models_dir() {
            Ok(d) => d.join("minilm-l6"),
            Err(_) => {
                eprintln!("SKIP {test}: no cache directory; set THEX_MODEL_DIR");
                return None;
            }
        },
    };
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {test}: model not found in {} (run `thex model fetch --name minilm-l6` or set THEX_MODEL_DIR)",
            dir.display()
        );
        None
    }
}

/// Reads a JSON fixture from tests/fixtures.
#[allow(dead_code)]
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Largest absolute difference between two equally long slices.
#[allow(dead_code)]
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Flattens nested JSON arrays of numbers.
#[allow(dead_code)]
pub fn flat_f32(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flat_f32).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

/// A tiny BERT config for synthetic tests.
#[allow(dead_code)]
pub fn tiny_config(layers: usize) -> thex_model::BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu",
        "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    }))
    .unwrap()
}

/// A tiny model with random weights of moderate size, so that the un-normalised THE-X
/// pieces (affine LayerNorm, cubic softmax, random `T`) stay far from f32 overflow.
#[allow(dead_code)]
pub fn random_model(
    cfg: &thex_model::BertConfig,
    thex: &thex_model::ThexConfig,
) -> (thex_model::ThexModel, candle_nn::VarMap) {
    let dev = candle_core::Device::Cpu;
    let fresh = |varmap: candle_nn::VarMap, source| {
        let mode = thex_model::ParamMode::Train(thex_model::TrainParams {
            varmap,
            frozen_prefixes: vec![],
            init_missing: true,
            init_seed: None,
        });
        thex_model::ThexModel::from_tensors(cfg, thex, source, mode, &dev).unwrap()
    };
    let init = fresh(candle_nn::VarMap::new(), Default::default());
    let tamed = init
        .params()
        .iter()
        .map(|(name, t)| {
            let factor = if name.starts_with("reciprocal.fc3") {
                0.01
            } else if name.ends_with("weight") && t.rank() == 2 && !name.starts_with("embeddings") {
                0.4
            } else {
                1.0
            };
            (name.clone(), (t.detach() * factor).unwrap())
        })
        .collect();
    let varmap = candle_nn::VarMap::new();
    (fresh(varmap.clone(), tamed), varmap)
}

/// A reciprocal network set by hand so that `T(s)` is the piecewise-linear interpolant of
/// `1/s` through geometrically spaced knots on `[lo, hi]` (exact at the knots).
#[allow(dead_code)]
pub fn interpolating_reciprocal(lo: f64, hi: f64) -> (thex_model::ReciprocalMlp, Vec<f64>) {
    use candle_core::Tensor;
    let dev = candle_core::Device::Cpu;
    let h = 16;
    let knots: Vec<f64> = (0..h)
        .map(|i| lo * (hi / lo).powf(i as f64 / (h - 1) as f64))
        .collect();
    let slope = |i: usize| (1.0 / knots[i + 1] - 1.0 / knots[i]) / (knots[i + 1] - knots[i]);
    // h1_i = ReLU(s - k_i); h2 = h1; T = 1/k_0 + sum_i c_i h2_i with c_i the slope change.
    let c: Vec<f32> = (0..h)
        .map(|i| match i {
            0 => slope(0),
            i if i < h - 1 => slope(i) - slope(i - 1),
            _ => 0.0,
        } as f32)
        .collect();
    let mut eye = vec![0f32; h * h];
    for i in 0..h {
        eye[i * h + i] = 1.0;
    }
    let t = |v: Vec<f32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &dev).unwrap();
    let v = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &dev).unwrap();
    let tensors = std::collections::HashMap::from([
        ("fc1.weight".to_string(), t(vec![1.0; h], (h, 1))),
        (
            "fc1.bias".to_string(),
            v(knots.iter().map(|k| -*k as f32).collect()),
        ),
        ("fc2.weight".to_string(), t(eye, (h, h))),
        ("fc2.bias".to_string(), v(vec![0.0; h])),
        ("fc3.weight".to_string(), t(c, (1, h))),
        ("fc3.bias".to_string(), v(vec![(1.0 / knots[0]) as f32])),
    ]);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
    (thex_model::ReciprocalMlp::new(h, vb).unwrap(), knots)
}

/// A vocabulary file for the tiny models: specials plus `w5`…`w39`.
#[allow(dead_code)]
pub fn write_tiny_vocab(dir: &std::path::Path) {
    let mut lines = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    lines.extend((5..40).map(|i| format!("w{i}")));
    std::fs::write(dir.join("vocab.txt"), lines.join("\n") + "\n").unwrap();
}
