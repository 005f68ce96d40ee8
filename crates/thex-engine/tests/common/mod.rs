//! Shared helpers: a small random THE-X model built through `thex-model`'s API.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thex_model::{
    BertConfig, HeadConfig, ParamMode, Pooling, ThexConfig, ThexModel, layer_norm_prefixes,
};

/// Shape of a test model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub labels: usize,
}

pub const SMALL: Shape = Shape {
    layers: 2,
    hidden: 32,
    heads: 2,
    ffn: 128,
    vocab: 50,
    labels: 3,
};

/// A THE-X model (ReLU, THE-X softmax with the paper's constants, affine LayerNorms, mean-pooled
/// head) with seeded random weights scaled so activations stay O(1), and a reciprocal network
/// that interpolates 1/s piecewise-linearly on [1, 64].
pub fn random_model(s: Shape, seed: u64) -> ThexModel {
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": s.vocab, "hidden_size": s.hidden, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "intermediate_size": s.ffn, "hidden_act": "relu",
        "max_position_embeddings": 128, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "model_type": "bert"
    }))
    .unwrap();
    let head = HeadConfig {
        pooling: Pooling::Mean,
        labels: (0..s.labels).map(|i| format!("label{i}")).collect(),
    };
    let thex = ThexConfig::full_thex(Some(head));
    let dev = Device::Cpu;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, f: &mut dyn FnMut() -> f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| f()).collect();
        t.insert(name, Tensor::from_vec(data, shape, &dev).unwrap());
    };
    let mut uni = |a: f32| -> f32 { rng.gen_range(-a..a) };
    let (h, f) = (s.hidden, s.ffn);
    put(
        "embeddings.word_embeddings.weight".into(),
        vec![s.vocab, h],
        &mut || uni(1.0),
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        vec![128, h],
        &mut || uni(0.5),
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, h],
        &mut || uni(0.1),
    );
    put("embeddings.LayerNorm.weight".into(), vec![h], &mut || {
        1.0 + uni(0.1)
    });
    put("embeddings.LayerNorm.bias".into(), vec![h], &mut || {
        uni(0.1)
    });
    let lin = |rows: usize, cols: usize| (1.7 / (cols as f32).sqrt(), rows, cols);
    for i in 0..s.layers {
        let p = format!("encoder.layer.{i}");
        let mut linears = vec![
            (format!("{p}.attention.self.query"), lin(h, h)),
            (format!("{p}.attention.self.key"), lin(h, h)),
            (format!("{p}.attention.self.value"), lin(h, h)),
            (format!("{p}.attention.output.dense"), lin(h, h)),
            (format!("{p}.intermediate.dense"), lin(f, h)),
            (format!("{p}.output.dense"), lin(h, f)),
        ];
        for (name, (a, rows, cols)) in linears.drain(..) {
            put(format!("{name}.weight"), vec![rows, cols], &mut || uni(a));
            put(format!("{name}.bias"), vec![rows], &mut || uni(0.1));
        }
        for ln in layer_norm_prefixes(i) {
            put(format!("{ln}.weight"), vec![h], &mut || 0.7 + uni(0.2));
            put(format!("{ln}.bias"), vec![h], &mut || uni(0.1));
        }
    }
    put("classifier.weight".into(), vec![s.labels, h], &mut || {
        uni(0.5)
    });
    put("classifier.bias".into(), vec![s.labels], &mut || uni(0.1));
    // T: h1_i = ReLU(s - k_i), h2 = h1, T = 1/k_0 + Σ c_i h2_i (slope changes).
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
    let ten = |v: Vec<f32>, shape: Vec<usize>| Tensor::from_vec(v, shape, &dev).unwrap();
    t.insert(
        "reciprocal.fc1.weight".into(),
        ten(vec![1.0; th], vec![th, 1]),
    );
    t.insert(
        "reciprocal.fc1.bias".into(),
        ten(knots.iter().map(|k| -*k as f32).collect(), vec![th]),
    );
    t.insert("reciprocal.fc2.weight".into(), ten(eye, vec![th, th]));
    t.insert("reciprocal.fc2.bias".into(), ten(vec![0.0; th], vec![th]));
    t.insert("reciprocal.fc3.weight".into(), ten(c, vec![1, th]));
    t.insert(
        "reciprocal.fc3.bias".into(),
        ten(vec![(1.0 / knots[0]) as f32], vec![1]),
    );
    ThexModel::from_tensors(&cfg, &thex, t, ParamMode::Inference, &dev).unwrap()
}

/// A tensor as `f64` values (row-major).
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
