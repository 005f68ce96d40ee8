//! Synthetic-model tests: loading errors, the THE-X forward against an independent f64
//! reference, softmax behaviour, tracing, training with frozen parts, save/load round trips.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::{interpolating_reciprocal, random_model, tiny_config, write_tiny_vocab};
use thex_model::{
    Batch, BertConfig, HeadConfig, LayerNormKind, LoadOptions, ModelError, ParamMode, Pooling,
    ReciprocalMlp, SaveOptions, SoftmaxConfig, ThexConfig, ThexModel, ThexSoftmax, TrainParams,
    exact_softmax, load_model_dir, save_model_dir, thex_softmax,
};

fn head() -> Option<HeadConfig> {
    Some(HeadConfig {
        pooling: Pooling::Mean,
        labels: vec!["negative".into(), "positive".into(), "neutral".into()],
    })
}

/// Deep copies (trainable tensors share storage with their `Var`s, which training updates).
fn tensors_of(model: &ThexModel) -> HashMap<String, Tensor> {
    model
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), t.copy().unwrap()))
        .collect()
}

fn seqs() -> Vec<Vec<u32>> {
    vec![
        vec![2, 7, 9, 11, 3],
        vec![2, 30, 3],
        vec![2, 5, 6, 8, 13, 21, 3],
    ]
}

// ---------- an independent f64 reference of the THE-X forward pass ----------

struct Ref {
    p: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Ref {
    fn new(model: &ThexModel) -> Self {
        let p = model
            .params()
            .iter()
            .map(|(n, t)| {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                (
                    n.clone(),
                    (t.dims().to_vec(), v.into_iter().map(f64::from).collect()),
                )
            })
            .collect();
        Ref { p }
    }
    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.p.get(name).unwrap_or_else(|| panic!("no {name}"))
    }
    /// y = x W^T + b for one row.
    fn linear(&self, prefix: &str, x: &[f64]) -> Vec<f64> {
        let (dims, w) = self.get(&format!("{prefix}.weight"));
        let (_, b) = self.get(&format!("{prefix}.bias"));
        let (out, inp) = (dims[0], dims[1]);
        assert_eq!(inp, x.len());
        (0..out)
            .map(|o| b[o] + (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>())
            .collect()
    }
    fn norm(&self, prefix: &str, x: &[f64], kind: LayerNormKind, eps: f64) -> Vec<f64> {
        let (_, g) = self.get(&format!("{prefix}.weight"));
        let (_, b) = self.get(&format!("{prefix}.bias"));
        let y: Vec<f64> = match kind {
            LayerNormKind::Exact => {
                let n = x.len() as f64;
                let mean = x.iter().sum::<f64>() / n;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                x.iter().map(|v| (v - mean) / (var + eps).sqrt()).collect()
            }
            LayerNormKind::Affine => x.to_vec(),
        };
        y.iter()
            .zip(g)
            .zip(b)
            .map(|((y, g), b)| y * g + b)
            .collect()
    }
    fn reciprocal(&self, s: f64) -> f64 {
        let h = self
            .linear("reciprocal.fc1", &[s])
            .into_iter()
            .map(|v| v.max(0.0))
            .collect::<Vec<_>>();
        let h = self
            .linear("reciprocal.fc2", &h)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect::<Vec<_>>();
        self.linear("reciprocal.fc3", &h)[0]
    }

    /// Last hidden states, mean-pooled vector and logits for one unpadded sequence
    /// (ReLU activation only).
    fn forward(
        &self,
        cfg: &BertConfig,
        thex: &ThexConfig,
        ids: &[u32],
    ) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
        let h = cfg.hidden_size;
        let (heads, d) = (cfg.num_attention_heads, cfg.head_dim());
        let (_, word) = self.get("embeddings.word_embeddings.weight");
        let (_, pos) = self.get("embeddings.position_embeddings.weight");
        let (_, typ) = self.get("embeddings.token_type_embeddings.weight");
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let e: Vec<f64> = (0..h)
                    .map(|c| word[id as usize * h + c] + pos[t * h + c] + typ[c])
                    .collect();
                self.norm(
                    "embeddings.LayerNorm",
                    &e,
                    LayerNormKind::Exact,
                    cfg.layer_norm_eps,
                )
            })
            .collect();
        let n = ids.len();
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("encoder.layer.{l}");
            let q: Vec<_> = x
                .iter()
                .map(|r| self.linear(&format!("{pre}.attention.self.query"), r))
                .collect();
            let k: Vec<_> = x
                .iter()
                .map(|r| self.linear(&format!("{pre}.attention.self.key"), r))
                .collect();
            let v: Vec<_> = x
                .iter()
                .map(|r| self.linear(&format!("{pre}.attention.self.value"), r))
                .collect();
            let mut ctx = vec![vec![0.0; h]; n];
            for hd in 0..heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|c| q[i][hd * d + c] * k[j][hd * d + c])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let probs: Vec<f64> = match &thex.softmax {
                        SoftmaxConfig::Exact => {
                            let m = scores.iter().copied().fold(f64::MIN, f64::max);
                            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                            let z: f64 = e.iter().sum();
                            e.iter().map(|v| v / z).collect()
                        }
                        SoftmaxConfig::Thex(c) => {
                            let e: Vec<f64> = scores
                                .iter()
                                .map(|s| (s * c.scale + c.shift).powi(c.power as i32).max(0.0))
                                .collect();
                            let t = self.reciprocal(e.iter().sum());
                            e.iter().map(|v| v * t).collect()
                        }
                    };
                    for j in 0..n {
                        for c in 0..d {
                            ctx[i][hd * d + c] += probs[j] * v[j][hd * d + c];
                        }
                    }
                }
            }
            x = (0..n)
                .map(|i| {
                    let a = self.linear(&format!("{pre}.attention.output.dense"), &ctx[i]);
                    let a: Vec<f64> = a.iter().zip(&x[i]).map(|(a, r)| a + r).collect();
                    let a = self.norm(
                        &format!("{pre}.attention.output.LayerNorm"),
                        &a,
                        thex.layer_norm,
                        cfg.layer_norm_eps,
                    );
                    let f = self.linear(&format!("{pre}.intermediate.dense"), &a);
                    let f: Vec<f64> = f.into_iter().map(|v| v.max(0.0)).collect();
                    let o = self.linear(&format!("{pre}.output.dense"), &f);
                    let o: Vec<f64> = o.iter().zip(&a).map(|(o, r)| o + r).collect();
                    self.norm(
                        &format!("{pre}.output.LayerNorm"),
                        &o,
                        thex.layer_norm,
                        cfg.layer_norm_eps,
                    )
                })
                .collect();
        }
        let pooled: Vec<f64> = (0..h)
            .map(|c| x.iter().map(|r| r[c]).sum::<f64>() / n as f64)
            .collect();
        let logits = self.linear("classifier", &pooled);
        (x, pooled, logits)
    }
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn thex_forward_matches_independent_f64_reference() {
    let cfg = tiny_config(2);
    for thex in [
        ThexConfig::full_thex(head()),
        ThexConfig {
            layer_norm: LayerNormKind::Exact,
            ..ThexConfig::full_thex(head())
        },
        ThexConfig {
            softmax: SoftmaxConfig::Thex(ThexSoftmax {
                scale: 0.3,
                shift: 2.0,
                power: 2,
                reciprocal_hidden: 5,
            }),
            ..ThexConfig::full_thex(head())
        },
        ThexConfig {
            softmax: SoftmaxConfig::Exact,
            ..ThexConfig::full_thex(head())
        },
    ] {
        let (model, _) = random_model(&cfg, &thex);
        let reference = Ref::new(&model);
        let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
        let out = model.forward(&batch, false).unwrap();
        let logits = out.logits.as_ref().unwrap();
        for (b, s) in seqs().iter().enumerate() {
            let (hid, pooled, want_logits) = reference.forward(&cfg, &thex, s);
            let got_hid: Vec<f32> = out
                .last_hidden_state
                .get(b)
                .unwrap()
                .narrow(0, 0, s.len())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want_hid: Vec<f64> = hid.concat();
            let d_h = max_diff(&got_hid, &want_hid);
            let d_p = max_diff(&out.pooled.get(b).unwrap().to_vec1().unwrap(), &pooled);
            let d_l = max_diff(&logits.get(b).unwrap().to_vec1().unwrap(), &want_logits);
            assert!(
                want_hid.iter().all(|v| v.is_finite()) && want_hid.iter().any(|v| v.abs() > 0.1)
            );
            assert!(
                d_h < 1e-4 && d_p < 1e-4 && d_l < 1e-4,
                "{thex:?} seq {b}: {d_h} {d_p} {d_l}"
            );
        }
    }
}

// ---------- loading errors ----------

#[test]
fn missing_and_misshaped_tensors_are_typed_errors() {
    let cfg = tiny_config(2);
    let thex = ThexConfig::full_thex(head());
    let (model, _) = random_model(&cfg, &thex);
    let dev = Device::Cpu;

    let mut t = tensors_of(&model);
    t.remove("encoder.layer.1.attention.self.key.weight");
    match ThexModel::from_tensors(&cfg, &thex, t, ParamMode::Inference, &dev) {
        Err(ModelError::MissingTensor { name }) => {
            assert_eq!(name, "encoder.layer.1.attention.self.key.weight")
        }
        other => panic!("unexpected {other:?}"),
    }

    let mut t = tensors_of(&model);
    t.insert(
        "encoder.layer.0.intermediate.dense.weight".into(),
        Tensor::zeros((16, 9), DType::F32, &dev).unwrap(),
    );
    match ThexModel::from_tensors(&cfg, &thex, t, ParamMode::Inference, &dev) {
        Err(ModelError::WrongShape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!((expected, found), (vec![16, 8], vec![16, 9]));
        }
        other => panic!("unexpected {other:?}"),
    }

    // An exact model needs neither the reciprocal net nor a classifier; a THE-X one does.
    let mut t = tensors_of(&model);
    t.retain(|n, _| !n.starts_with("reciprocal.") && !n.starts_with("classifier."));
    let exact = ThexConfig::exact(&cfg).unwrap();
    assert!(ThexModel::from_tensors(&cfg, &exact, t.clone(), ParamMode::Inference, &dev).is_ok());
    assert!(matches!(
        ThexModel::from_tensors(&cfg, &thex, t, ParamMode::Inference, &dev),
        Err(ModelError::MissingTensor { name }) if name.starts_with("reciprocal.")
    ));
}

#[test]
fn model_dir_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_model_dir(tmp.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path.ends_with("config.json")),
        "{err}"
    );
    tiny_config(2)
        .to_file(&tmp.path().join("config.json"))
        .unwrap();
    let err = load_model_dir(tmp.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path.ends_with("model.safetensors")),
        "{err}"
    );
    let opts = LoadOptions {
        layers: Some(3),
        ..Default::default()
    };
    assert!(matches!(
        load_model_dir(tmp.path(), &opts),
        Err(ModelError::InvalidLayerCount {
            requested: 3,
            available: 2
        })
    ));
}

#[test]
fn hugging_face_bert_prefix_is_tolerated_and_out_of_range_input_rejected() {
    let cfg = tiny_config(1);
    let exact = ThexConfig::exact(&cfg).unwrap();
    let (model, _) = random_model(&cfg, &exact);
    let tmp = tempfile::tempdir().unwrap();
    let prefixed: Vec<(String, Tensor)> = model
        .params()
        .iter()
        .map(|(n, t)| (format!("bert.{n}"), t.clone()))
        .collect();
    let path = tmp.path().join("model.safetensors");
    thex_model::write_safetensors(&prefixed, &path).unwrap();
    let t = thex_model::read_safetensors(&path, &Device::Cpu).unwrap();
    let loaded =
        ThexModel::from_tensors(&cfg, &exact, t, ParamMode::Inference, &Device::Cpu).unwrap();
    let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
    let a = model.forward(&batch, false).unwrap().pooled;
    let b = loaded.forward(&batch, false).unwrap().pooled;
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());

    let bad = Batch::new(&[vec![2, 40, 3]], 0, &Device::Cpu).unwrap();
    assert!(matches!(
        loaded.forward(&bad, false),
        Err(ModelError::TokenOutOfRange {
            id: 40,
            vocab_size: 40
        })
    ));
    let long = Batch::new(&[vec![5; 17]], 0, &Device::Cpu).unwrap();
    assert!(matches!(
        loaded.forward(&long, false),
        Err(ModelError::BadSequenceLength { len: 17, max: 16 })
    ));
}

// ---------- softmax ----------

fn reciprocal_points(lo: f64, hi: f64) -> (Tensor, Tensor) {
    let s: Vec<f32> = (0..256)
        .map(|i| (lo + (hi - lo) * i as f64 / 255.0) as f32)
        .collect();
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    (
        Tensor::from_vec(s, (256, 1), &Device::Cpu).unwrap(),
        Tensor::from_vec(inv, (256, 1), &Device::Cpu).unwrap(),
    )
}

/// Mean squared relative error of `T` against `1/s` on `[lo, hi]`.
fn reciprocal_loss(t: &ReciprocalMlp, lo: f64, hi: f64) -> f32 {
    let (s, inv) = reciprocal_points(lo, hi);
    let rel = ((t.forward(&s).unwrap() - &inv).unwrap() / &inv).unwrap();
    rel.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap()
}

/// A reciprocal network in a `VarMap`, initialised deterministically (candle's CPU RNG cannot
/// be seeded): ReLU knots spread over `[lo, hi]`, small pseudo-random other weights; then
/// `steps` AdamW steps on the relative squared error against `1/s`.
fn quick_reciprocal(lo: f64, hi: f64, steps: usize) -> (ReciprocalMlp, VarMap) {
    let dev = Device::Cpu;
    let h = 16;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = |a: f32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        a * (2.0 * (state >> 40) as f32 / (1u64 << 24) as f32 - 1.0)
    };
    let knots: Vec<f32> = (0..h)
        .map(|i| (lo * (hi / lo).powf(i as f64 / h as f64)) as f32)
        .collect();
    let fc2: Vec<f32> = (0..h * h)
        .map(|i| if i % (h + 1) == 0 { 0.5 } else { 0.0 } + uniform(0.2))
        .collect();
    let fc3: Vec<f32> = (0..h).map(|_| uniform(0.1)).collect();
    let varmap = VarMap::new();
    for (name, t) in [
        (
            "reciprocal.fc1.weight",
            Tensor::ones((h, 1), DType::F32, &dev).unwrap(),
        ),
        (
            "reciprocal.fc1.bias",
            Tensor::from_vec(knots.iter().map(|k| -k).collect::<Vec<_>>(), h, &dev).unwrap(),
        ),
        (
            "reciprocal.fc2.weight",
            Tensor::from_vec(fc2, (h, h), &dev).unwrap(),
        ),
        (
            "reciprocal.fc2.bias",
            Tensor::zeros(h, DType::F32, &dev).unwrap(),
        ),
        (
            "reciprocal.fc3.weight",
            Tensor::from_vec(fc3, (1, h), &dev).unwrap(),
        ),
        ("reciprocal.fc3.bias", Tensor::new(&[0.5f32], &dev).unwrap()),
    ] {
        varmap
            .data()
            .lock()
            .unwrap()
            .insert(name.into(), candle_core::Var::from_tensor(&t).unwrap());
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let t = ReciprocalMlp::new(h, vb.pp("reciprocal")).unwrap();
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let (s, inv) = reciprocal_points(lo, hi);
    for _ in 0..steps {
        // Relative error, so the whole range matters.
        let rel = ((t.forward(&s).unwrap() - &inv).unwrap() / &inv).unwrap();
        opt.backward_step(&rel.sqr().unwrap().mean_all().unwrap())
            .unwrap();
    }
    (t, varmap)
}

#[test]
fn reciprocal_mlp_forward_computes_the_configured_network() {
    let (t, knots) = interpolating_reciprocal(1.0, 20.0);
    // Exact at the knots, within a few percent of 1/s in between.
    let ks: Vec<f32> = knots.iter().map(|k| *k as f32).collect();
    let y: Vec<f32> = t
        .forward(&Tensor::from_vec(ks.clone(), (ks.len(), 1), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (k, y) in ks.iter().zip(&y) {
        assert!((y * k - 1.0).abs() < 1e-4, "T({k}) = {y}");
    }
    let s: Vec<f32> = (0..200).map(|i| 1.0 + 19.0 * i as f32 / 199.0).collect();
    let y: Vec<f32> = t
        .forward(&Tensor::from_vec(s.clone(), (2, 100, 1), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let worst = s
        .iter()
        .zip(&y)
        .map(|(s, y)| (s * y - 1.0).abs())
        .fold(0.0, f32::max);
    assert!(worst < 0.03, "worst relative error {worst}");
}

#[test]
fn reciprocal_mlp_trains_towards_one_over_s() {
    let (t, _) = quick_reciprocal(1.0, 20.0, 0);
    let loss0 = reciprocal_loss(&t, 1.0, 20.0);
    let (t, _) = quick_reciprocal(1.0, 20.0, 1500);
    let loss1 = reciprocal_loss(&t, 1.0, 20.0);
    eprintln!(
        "relative MSE of T vs 1/s on [1, 20]: untrained {loss0:.3e}, after 1500 AdamW steps {loss1:.3e}"
    );
    assert!(loss1 < 0.01, "relative MSE {loss1} after training");
}

#[test]
fn thex_softmax_masks_keys_and_normalises_with_t() {
    let dev = Device::Cpu;
    let (t, _) = interpolating_reciprocal(1.0, 20.0);
    let cfg = ThexSoftmax::default();
    let scores = Tensor::new(&[[[[0.5f32, -1.0, 2.0, 1.0], [3.0, 0.0, -5.0, 0.2]]]], &dev).unwrap(); // [1,1,2,4]
    let mask = Tensor::new(&[[1f32, 1.0, 1.0, 0.0]], &dev).unwrap();
    let (p, tr) = thex_softmax(&scores, &mask, &cfg, &t).unwrap();
    let p: Vec<Vec<f32>> = p.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    let e: Vec<Vec<f32>> =
        tr.e.squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
    // Masked key: weight exactly 0. Scores below -2 (x/2+1 < 0): ReLU gives exactly 0.
    assert_eq!(p[0][3], 0.0);
    assert_eq!(p[1][3], 0.0);
    assert_eq!(e[1][2], 0.0);
    // e_j = ReLU((x/2+1)^3).
    assert!((e[0][0] - 1.25f32.powi(3)).abs() < 1e-5 && (e[0][2] - 8.0).abs() < 1e-5);
    // out_j = e_j * T(s); rows sum to s*T(s), close to 1 since T interpolates 1/s here.
    let s: Vec<f32> = tr.sum.flatten_all().unwrap().to_vec1().unwrap();
    let ts: Vec<f32> = tr.reciprocal.flatten_all().unwrap().to_vec1().unwrap();
    for (r, row) in p.iter().enumerate() {
        assert!((s[r] - e[r].iter().sum::<f32>()).abs() < 1e-5);
        for (j, v) in row.iter().enumerate() {
            assert!((v - e[r][j] * ts[r]).abs() < 1e-6);
        }
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 0.03, "row sum {sum}");
    }
    // The additive large-negative mask before the approximation gives the same result.
    let additive = scores
        .broadcast_add(
            &mask
                .affine(1e4, -1e4)
                .unwrap()
                .reshape((1, 1, 1, 4))
                .unwrap(),
        )
        .unwrap();
    let ones = Tensor::ones((1, 4), DType::F32, &dev).unwrap();
    let (p2, _) = thex_softmax(&additive, &ones, &cfg, &t).unwrap();
    let p2: Vec<Vec<f32>> = p2
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(p, p2);
    // Same masking for the exact softmax, and it sums to 1.
    let ex: Vec<Vec<f32>> = exact_softmax(&scores, &mask)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for row in &ex {
        assert_eq!(row[3], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

// ---------- tracing ----------

#[test]
fn trace_is_consistent_with_the_forward_pass() {
    let cfg = tiny_config(2);
    let (model, _) = random_model(&cfg, &ThexConfig::full_thex(head()));
    let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
    let (out, trace) = model.forward_traced(&batch).unwrap();
    assert_eq!(trace.layers.len(), 2);
    let eq = |a: &Tensor, b: &Tensor| {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    };
    eq(&trace.layers[0].input, &trace.embeddings);
    eq(&trace.layers[1].input, &trace.layers[0].output);
    eq(&trace.layers[1].output, &out.last_hidden_state);
    let l0 = &trace.layers[0];
    assert_eq!(l0.scores.dims(), &[3, 2, 7, 7]);
    assert_eq!(l0.intermediate_pre.dims(), &[3, 7, 16]);
    eq(&l0.intermediate, &l0.intermediate_pre.relu().unwrap());
    let sm = l0.softmax.as_ref().expect("THE-X softmax trace");
    eq(&l0.probs, &sm.e.broadcast_mul(&sm.reciprocal).unwrap());
    // Sequence 1 has 3 tokens: its padded keys get zero weight in every head and row.
    let padded = l0.probs.get(1).unwrap().narrow(2, 3, 4).unwrap();
    assert_eq!(
        padded
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // Affine LN: gamma' * x + beta'.
    let [ln, _] = model.layers()[0].norms();
    let [name, _] = thex_model::layer_norm_prefixes(0);
    let by_name = &model
        .params()
        .iter()
        .find(|(n, _)| *n == format!("{name}.weight"))
        .unwrap()
        .1;
    eq(ln.weight(), by_name);
    eq(
        &l0.attention_output,
        &l0.attention_norm_input
            .broadcast_mul(ln.weight())
            .unwrap()
            .broadcast_add(ln.bias())
            .unwrap(),
    );
}

// ---------- training ----------

#[test]
fn training_updates_unfrozen_parameters_only() {
    let cfg = tiny_config(2);
    let thex = ThexConfig::full_thex(head());
    let (base, _) = random_model(&cfg, &thex);
    let varmap = VarMap::new();
    let mode = ParamMode::Train(TrainParams {
        varmap: varmap.clone(),
        frozen_prefixes: vec!["embeddings.".into(), "reciprocal.".into()],
        init_missing: false,
        init_seed: None,
    });
    let model =
        ThexModel::from_tensors(&cfg, &thex, tensors_of(&base), mode, &Device::Cpu).unwrap();
    {
        let vars = varmap.data().lock().unwrap();
        assert!(
            vars.keys()
                .all(|k| !k.starts_with("embeddings.") && !k.starts_with("reciprocal."))
        );
        assert!(
            vars.contains_key("classifier.weight")
                && vars.contains_key("encoder.layer.1.output.LayerNorm.weight")
        );
    }
    let before = tensors_of(&model);
    let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap();
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let loss_of = |m: &ThexModel| {
        let logits = m.forward(&batch, false).unwrap().logits.unwrap();
        candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
    };
    let first = loss_of(&model).to_scalar::<f32>().unwrap();
    // Dropout off, full-batch Adam on three examples. The cubic softmax of a random model can
    // still blow up late in training (candle's initialisation cannot be seeded), so the
    // property checked is that training reaches a much lower loss, not where it ends.
    let mut best = first;
    for _ in 0..100 {
        let loss = loss_of(&model);
        best = best.min(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    assert!(best < first * 0.5, "loss {first} -> best {best}");
    let after = tensors_of(&model);
    let changed = |n: &str| {
        let d = (&before[n] - &after[n])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d > 0.0
    };
    assert!(!changed("embeddings.word_embeddings.weight"));
    assert!(!changed("reciprocal.fc1.weight"));
    assert!(changed("classifier.weight"));
    assert!(changed("encoder.layer.0.attention.self.query.weight"));
    // The source tensors were copied, not trained in place.
    assert!(
        !(&tensors_of(&base)["classifier.weight"] - &after["classifier.weight"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .eq(&0.0)
    );
}

#[test]
fn pretrained_reciprocal_in_the_varmap_is_reused() {
    let cfg = tiny_config(1);
    let thex = ThexConfig::full_thex(head());
    let (t, varmap) = quick_reciprocal(1.0, 20.0, 3);
    let (base, _) = random_model(&cfg, &ThexConfig::exact(&cfg).unwrap());
    let mode = ParamMode::Train(TrainParams {
        varmap: varmap.clone(),
        frozen_prefixes: vec![],
        init_missing: true,
        init_seed: None,
    });
    // The base has no reciprocal/classifier: the classifier is initialised, T taken from the VarMap.
    let model =
        ThexModel::from_tensors(&cfg, &thex, tensors_of(&base), mode, &Device::Cpu).unwrap();
    let x = Tensor::new(&[[3.0f32]], &Device::Cpu).unwrap();
    let a = t.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    let b = model
        .reciprocal()
        .unwrap()
        .forward(&x)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert!(
        varmap
            .data()
            .lock()
            .unwrap()
            .contains_key("classifier.bias")
    );
}

/// New parameters drawn with a seed are the same for the same seed, differ for another, and
/// follow the module's initialiser (LayerNorm weights stay ones, linear weights Kaiming
/// normal).
#[test]
fn seeded_initialisation_is_reproducible() {
    let cfg = tiny_config(1);
    let thex = ThexConfig::full_thex(head());
    let build = |seed: u64| {
        let varmap = VarMap::new();
        let mode = ParamMode::Train(TrainParams {
            varmap: varmap.clone(),
            frozen_prefixes: vec![],
            init_missing: true,
            init_seed: Some(seed),
        });
        ThexModel::from_tensors(&cfg, &thex, HashMap::new(), mode, &Device::Cpu).unwrap();
        let data = varmap.data().lock().unwrap();
        let mut all: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(k, v)| {
                let t = v.as_tensor().flatten_all().unwrap();
                (k.clone(), t.to_vec1::<f32>().unwrap())
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let (a, b, c) = (build(5), build(5), build(6));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_ne!(a, c);
    for (name, v) in &a {
        if name.ends_with("LayerNorm.weight") {
            assert!(v.iter().all(|&x| x == 1.0), "{name}");
        }
        if name == "classifier.weight" {
            // candle's linear layers: Kaiming normal, standard deviation sqrt(2 / fan_in).
            let want = (2.0 / cfg.hidden_size as f64).sqrt();
            let rms =
                (v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            assert!(
                (0.5 * want..2.0 * want).contains(&rms),
                "{name}: rms {rms} vs {want}"
            );
        }
    }
}

// ---------- save / load ----------

#[test]
fn save_load_round_trip() {
    let cfg = tiny_config(3);
    let thex = ThexConfig {
        softmax: SoftmaxConfig::Thex(ThexSoftmax {
            scale: 0.25,
            shift: 1.5,
            power: 3,
            reciprocal_hidden: 8,
        }),
        ..ThexConfig::full_thex(head())
    };
    let (model, _) = random_model(&cfg, &thex);
    let src = tempfile::tempdir().unwrap();
    write_tiny_vocab(src.path());
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("m");
    save_model_dir(&model, src.path(), &dir, &SaveOptions::default()).unwrap();
    for f in ["config.json", "thex.json", "model.safetensors", "vocab.txt"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let loaded = load_model_dir(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.thex(), &thex);
    assert_eq!(loaded.model.config(), &cfg);
    let stored =
        thex_model::read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = stored.keys().cloned().collect();
    names.sort();
    let mut want: Vec<_> = model.params().iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
    let a = model
        .forward(&batch, false)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = loaded
        .model
        .forward(&batch, false)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b);
    // Through the text pipeline: tokenizer from the copied vocab.txt.
    let p = thex_model::predict(&dir, "w7 w9 w11").unwrap();
    // Unpadded vs padded batch: same values up to float summation order.
    assert!(
        p.logits
            .iter()
            .zip(&a[0])
            .all(|(x, y)| (x - y).abs() < 1e-5),
        "{:?} {:?}",
        p.logits,
        a[0]
    );
    assert_eq!(p.labels.len(), 3);
    assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(p.label, p.labels[p.label_id]);
    let e = thex_model::encode(&dir, "w7 w9 w11", true).unwrap();
    assert_eq!(e.input_ids, vec![2, 7, 9, 11, 3]);
    assert_eq!(e.last_hidden_state.as_ref().unwrap().len(), 5);
    let norm: f32 = e.embedding_normalized.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    let json = serde_json::to_value(&e).unwrap();
    assert!(
        json.get("input_ids").is_some()
            && json.get("embedding").is_some()
            && json.get("last_hidden_state").is_some()
    );

    // Truncating a saved model to fewer layers on load.
    let two = load_model_dir(
        &dir,
        &LoadOptions {
            layers: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(two.model.layers().len(), 2);
}

#[test]
fn lean_save_with_base_weights() {
    let cfg = tiny_config(2);
    let exact = ThexConfig::exact(&cfg).unwrap();
    let (base, _) = random_model(&cfg, &exact);
    let root = tempfile::tempdir().unwrap();
    write_tiny_vocab(root.path());
    let base_dir = root.path().join("base");
    save_model_dir(&base, root.path(), &base_dir, &SaveOptions::default()).unwrap();

    // A THE-X model fine-tuned from the base, saved without the (frozen) embeddings.
    let thex = ThexConfig {
        base_weights: Some("../base/model.safetensors".into()),
        ..ThexConfig::full_thex(head())
    };
    let mode = ParamMode::Train(TrainParams {
        varmap: VarMap::new(),
        frozen_prefixes: vec!["embeddings.".into()],
        init_missing: true,
        init_seed: None,
    });
    let model =
        ThexModel::from_tensors(&cfg, &thex, tensors_of(&base), mode, &Device::Cpu).unwrap();
    let dir = root.path().join("lean");
    let opts = SaveOptions {
        exclude_prefixes: vec!["embeddings.".into()],
    };
    save_model_dir(&model, root.path(), &dir, &opts).unwrap();
    let stored =
        thex_model::read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(stored.keys().all(|k| !k.starts_with("embeddings.")));
    let loaded = load_model_dir(&dir, &LoadOptions::default()).unwrap();
    let batch = Batch::new(&seqs(), 0, &Device::Cpu).unwrap();
    let a = model
        .forward(&batch, false)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = loaded
        .model
        .forward(&batch, false)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b);
    // Without the base file the embeddings are missing.
    std::fs::remove_file(base_dir.join("model.safetensors")).unwrap();
    assert!(matches!(
        load_model_dir(&dir, &LoadOptions::default()),
        Err(ModelError::MissingFile { .. })
    ));
}

#[test]
fn predict_needs_a_head() {
    let cfg = tiny_config(1);
    let (model, _) = random_model(&cfg, &ThexConfig::exact(&cfg).unwrap());
    let root = tempfile::tempdir().unwrap();
    write_tiny_vocab(root.path());
    save_model_dir(&model, root.path(), root.path(), &SaveOptions::default()).unwrap();
    assert!(matches!(
        thex_model::predict(root.path(), "w5"),
        Err(ModelError::NoClassifierHead)
    ));
    assert!(
        thex_model::encode(root.path(), "w5", false)
            .unwrap()
            .last_hidden_state
            .is_none()
    );
}
