//! Seeded random THE-X models of any BERT shape, for tests and benchmarks (e.g. the BERT-tiny
//! shape of the end-to-end benchmark): ReLU, THE-X softmax, affine LayerNorms, a mean-pooled
//! linear head, weights scaled so activations stay O(1), and a reciprocal network `T` that
//! interpolates `1/s` piecewise-linearly on `[1, 64]`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::approx::{HeadConfig, Pooling, ThexConfig};
use crate::bert::{ThexModel, layer_norm_prefixes};
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::weights::{ParamMode, write_safetensors};

/// Shape of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN inner size.
    pub ffn: usize,
    /// Vocabulary size (at least the 5 special tokens plus the built-in words).
    pub vocab: usize,
    /// Number of labels of the head.
    pub labels: usize,
    /// Position embeddings (longest sequence).
    pub max_positions: usize,
}

/// The BERT-tiny shape: 2 layers, hidden 128, 2 heads, FFN 512.
pub const BERT_TINY: Shape = Shape {
    layers: 2,
    hidden: 128,
    heads: 2,
    ffn: 512,
    vocab: 1000,
    labels: 2,
    max_positions: 512,
};

/// A very small shape for fast tests.
pub const SMALL: Shape = Shape {
    layers: 2,
    hidden: 32,
    heads: 2,
    ffn: 128,
    vocab: 200,
    labels: 2,
    max_positions: 128,
};

const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS: &str = "a an the and or but not no very so too this that it is was are be \
    film movie story plot actor actors acting script scene scenes director music \
    good great fine lovely fun funny moving smart fresh best better bad awful poor dull \
    boring worst worse weak slow mess long short one two of in on at to for with by from \
    as its all more most much little some any than then just only even still never ever";

/// The vocabulary: special tokens, a few common English words, then `w<i>` fillers.
fn vocabulary(size: usize) -> Result<Vec<String>> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    v.extend(WORDS.split_whitespace().map(str::to_string));
    if size < v.len() {
        return Err(ModelError::InvalidConfig(format!(
            "synthetic vocabulary needs at least {} tokens, got {size}",
            v.len()
        )));
    }
    let filler = size - v.len();
    v.extend((0..filler).map(|i| format!("w{i}")));
    Ok(v)
}

fn bert_config(s: Shape) -> Result<BertConfig> {
    serde_json::from_value(serde_json::json!({
        "vocab_size": s.vocab, "hidden_size": s.hidden, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "intermediate_size": s.ffn, "hidden_act": "relu",
        "max_position_embeddings": s.max_positions, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert"
    }))
    .map_err(|e| ModelError::InvalidConfig(format!("synthetic config: {e}")))
}

/// Tensors of the reciprocal network: `h1_i = ReLU(s − k_i)`, `h2 = h1`,
/// `T = 1/k_0 + Σ c_i h2_i` with knots `k_i` spread geometrically over `[1, 64]`.
fn reciprocal(t: &mut HashMap<String, Tensor>, dev: &Device) -> Result<()> {
    let th = 16;
    let (lo, hi) = (1.0f64, 64.0f64);
    let knots: Vec<f64> = (0..th)
        .map(|i| lo * (hi / lo).powf(i as f64 / (th - 1) as f64))
        .collect();
    let slope = |i: usize| (1.0 / knots[i + 1] - 1.0 / knots[i]) / (knots[i + 1] - knots[i]);
    let c: Vec<f32> = (0..th)
        .map(|i| match i {
            0 => slope(0),
            i if i < th - 1 => slope(i) - slope(i - 1),
            _ => 0.0,
        } as f32)
        .collect();
    let eye: Vec<f32> = (0..th * th)
        .map(|k| if k / th == k % th { 1.0 } else { 0.0 })
        .collect();
    let bias1: Vec<f32> = knots.iter().map(|k| -*k as f32).collect();
    for (name, v, shape) in [
        ("fc1.weight", vec![1.0; th], vec![th, 1]),
        ("fc1.bias", bias1, vec![th]),
        ("fc2.weight", eye, vec![th, th]),
        ("fc2.bias", vec![0.0; th], vec![th]),
        ("fc3.weight", c, vec![1, th]),
        ("fc3.bias", vec![(1.0 / knots[0]) as f32], vec![1]),
    ] {
        t.insert(
            format!("reciprocal.{name}"),
            Tensor::from_vec(v, shape, dev)?,
        );
    }
    Ok(())
}

/// All tensors of a synthetic model, seeded.
fn tensors(s: Shape, seed: u64, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let (h, f) = (s.hidden, s.ffn);
    let mut put = |name: String, shape: Vec<usize>, centre: f32, a: f32| -> Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| centre + rng.gen_range(-a..a)).collect();
        t.insert(name, Tensor::from_vec(data, shape, dev)?);
        Ok(())
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        vec![s.vocab, h],
        0.0,
        1.0,
    )?;
    put(
        "embeddings.position_embeddings.weight".into(),
        vec![s.max_positions, h],
        0.0,
        0.5,
    )?;
    put(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, h],
        0.0,
        0.1,
    )?;
    put("embeddings.LayerNorm.weight".into(), vec![h], 1.0, 0.1)?;
    put("embeddings.LayerNorm.bias".into(), vec![h], 0.0, 0.1)?;
    for i in 0..s.layers {
        let p = format!("encoder.layer.{i}");
        for (name, rows, cols) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", f, h),
            ("output.dense", h, f),
        ] {
            let a = 1.7 / (cols as f32).sqrt();
            put(format!("{p}.{name}.weight"), vec![rows, cols], 0.0, a)?;
            put(format!("{p}.{name}.bias"), vec![rows], 0.0, 0.1)?;
        }
        for ln in layer_norm_prefixes(i) {
            put(format!("{ln}.weight"), vec![h], 0.7, 0.2)?;
            put(format!("{ln}.bias"), vec![h], 0.0, 0.1)?;
        }
    }
    put("classifier.weight".into(), vec![s.labels, h], 0.0, 0.5)?;
    put("classifier.bias".into(), vec![s.labels], 0.0, 0.1)?;
    reciprocal(&mut t, dev)?;
    Ok(t)
}

fn thex_config(s: Shape) -> ThexConfig {
    ThexConfig::full_thex(Some(HeadConfig {
        pooling: Pooling::Mean,
        labels: (0..s.labels).map(|i| format!("label{i}")).collect(),
    }))
}

/// A synthetic THE-X model with seeded random weights (on the CPU, for inference).
pub fn model(s: Shape, seed: u64) -> Result<ThexModel> {
    let dev = Device::Cpu;
    ThexModel::from_tensors(
        &bert_config(s)?,
        &thex_config(s),
        tensors(s, seed, &dev)?,
        ParamMode::Inference,
        &dev,
    )
}

/// Writes a loadable model directory (`config.json`, `thex.json`, `model.safetensors`,
/// `vocab.txt`) holding the synthetic model of `s` and `seed`.
pub fn write_dir(s: Shape, seed: u64, dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    bert_config(s)?.to_file(&dir.join("config.json"))?;
    thex_config(s).to_file(&dir.join("thex.json"))?;
    let mut named: Vec<(String, Tensor)> = tensors(s, seed, &Device::Cpu)?.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&named, &dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("vocab.txt"),
        vocabulary(s.vocab)?.join("\n") + "\n",
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_dir::load_model_dir;

    #[test]
    fn written_dir_loads_and_matches_the_in_memory_model() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(SMALL, 7, dir.path()).unwrap();
        let loaded = load_model_dir(dir.path(), &Default::default()).unwrap();
        let p = loaded
            .predict_batch(&["a good film", "the plot was dull"])
            .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].logits.len(), 2);
        let ids = loaded.tokenize("a good film").unwrap();
        assert_eq!(ids.len(), 5, "{ids:?}");
        assert!(!ids.contains(&1), "known words must not be [UNK]: {ids:?}");
        let batch = crate::Batch::new(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
        let logits_of = |seed: u64| -> Vec<f32> {
            let m = model(SMALL, seed).unwrap();
            let out = m.forward(&batch, false).unwrap().logits.unwrap();
            out.flatten_all().unwrap().to_vec1().unwrap()
        };
        let logits = logits_of(7);
        for (a, b) in logits.iter().zip(&p[0].logits) {
            assert!((a - b).abs() < 1e-5, "{logits:?} vs {:?}", p[0].logits);
        }
        // A different seed gives a different model; too small a vocabulary is refused.
        assert_ne!(logits, logits_of(8));
        let tiny = Shape { vocab: 10, ..SMALL };
        assert!(write_dir(tiny, 1, dir.path()).is_err());
    }
}
