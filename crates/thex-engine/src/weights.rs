//! The weights of a THE-X model as `f64` matrices, split into the server's part
//! ([`ModelWeights`]) and the client's part ([`EmbeddingTables`]).
//!
//! Linear maps are stored as `d_in × d_out` matrices (`y = x·W + b`), the transpose of the
//! Hugging Face / candle `[out, in]` weight.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use he_linalg::Matrix;
use thex_client::{EmbeddingTables, ModelDims};
use thex_model::{
    Activation, LayerNormKind, Pooling, SoftmaxConfig, ThexModel, ThexSoftmax, layer_norm_prefixes,
};

use crate::error::{EngineError, Result};

/// Weights of one encoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Query projection `h × h` and bias.
    pub wq: Matrix,
    /// Query bias.
    pub bq: Vec<f64>,
    /// Key projection.
    pub wk: Matrix,
    /// Key bias.
    pub bk: Vec<f64>,
    /// Value projection.
    pub wv: Matrix,
    /// Value bias.
    pub bv: Vec<f64>,
    /// Attention output projection.
    pub wo: Matrix,
    /// Attention output bias.
    pub bo: Vec<f64>,
    /// Affine attention LayerNorm `gamma'`.
    pub ln1_gamma: Vec<f64>,
    /// Affine attention LayerNorm `beta'`.
    pub ln1_beta: Vec<f64>,
    /// FFN input projection `h × f`.
    pub w1: Matrix,
    /// FFN input bias.
    pub b1: Vec<f64>,
    /// FFN output projection `f × h`.
    pub w2: Matrix,
    /// FFN output bias.
    pub b2: Vec<f64>,
    /// Affine output LayerNorm `gamma'`.
    pub ln2_gamma: Vec<f64>,
    /// Affine output LayerNorm `beta'`.
    pub ln2_beta: Vec<f64>,
}

/// THE-X's reciprocal network `T: 1 → t → t → 1` with ReLUs.
#[derive(Debug, Clone)]
pub struct ReciprocalWeights {
    /// First layer weights (`t`).
    pub w1: Vec<f64>,
    /// First layer bias (`t`).
    pub b1: Vec<f64>,
    /// Second layer `t × t` (`x·W`).
    pub w2: Matrix,
    /// Second layer bias.
    pub b2: Vec<f64>,
    /// Output weights (`t`).
    pub w3: Vec<f64>,
    /// Output bias.
    pub b3: f64,
}

/// Everything the server evaluates, as `f64`.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// Shapes and constants.
    pub dims: ModelDims,
    /// Encoder layers.
    pub layers: Vec<LayerWeights>,
    /// The shared reciprocal network.
    pub reciprocal: ReciprocalWeights,
    /// Classifier `h × labels`.
    pub classifier: Matrix,
    /// Classifier bias.
    pub classifier_bias: Vec<f64>,
}

struct Params<'a> {
    map: HashMap<&'a str, &'a Tensor>,
}

impl<'a> Params<'a> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.to_string(),
            })?;
        if t.dims() != shape {
            return Err(EngineError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(DType::F64)?)
    }
    fn vec(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        Ok(self.tensor(name, &[len])?.to_vec1::<f64>()?)
    }
    fn vec32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self
            .tensor(name, shape)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }
    /// A linear layer `prefix.weight` (`[out, in]`) as a `d_in × d_out` matrix, and its bias.
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<(Matrix, Vec<f64>)> {
        let w = self.tensor(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let data = w.t()?.contiguous()?.flatten_all()?.to_vec1::<f64>()?;
        let m = Matrix::new(d_in, d_out, data)?;
        Ok((m, self.vec(&format!("{prefix}.bias"), d_out)?))
    }
}

/// Splits a THE-X model into server weights and client embedding tables. The model must use
/// every THE-X approximation (ReLU, THE-X softmax, affine LayerNorms) and have a mean-pooled
/// classification head, and must have been built with `ThexModel::from_tensors` (which
/// records its named parameters).
pub fn split_model(model: &ThexModel) -> Result<(ModelWeights, EmbeddingTables)> {
    let thex = model.thex();
    let cfg = model.config();
    if thex.activation != Activation::Relu {
        return Err(EngineError::UnsupportedModel(format!(
            "FFN activation {:?}: the engine needs ReLU",
            thex.activation
        )));
    }
    let sm: ThexSoftmax = match thex.softmax {
        SoftmaxConfig::Thex(s) => s,
        SoftmaxConfig::Exact => {
            return Err(EngineError::UnsupportedModel(
                "exact softmax: the engine needs the THE-X softmax".into(),
            ));
        }
    };
    if thex.layer_norm != LayerNormKind::Affine {
        return Err(EngineError::UnsupportedModel(
            "exact LayerNorm: the engine needs affine (LN-distill) LayerNorms".into(),
        ));
    }
    let head = thex.head.as_ref().ok_or_else(|| {
        EngineError::UnsupportedModel("no classification head (thex.json `head`)".into())
    })?;
    match head.pooling {
        Pooling::Mean => {}
    }
    if model.params().is_empty() {
        return Err(EngineError::UnsupportedModel(
            "the model records no named parameters (build it with ThexModel::from_tensors)".into(),
        ));
    }
    let p = Params {
        map: model
            .params()
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect(),
    };
    let (h, f, th) = (cfg.hidden_size, cfg.intermediate_size, sm.reciprocal_hidden);
    let labels = head.labels.len();
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let pre = format!("encoder.layer.{i}");
        let (wq, bq) = p.linear(&format!("{pre}.attention.self.query"), h, h)?;
        let (wk, bk) = p.linear(&format!("{pre}.attention.self.key"), h, h)?;
        let (wv, bv) = p.linear(&format!("{pre}.attention.self.value"), h, h)?;
        let (wo, bo) = p.linear(&format!("{pre}.attention.output.dense"), h, h)?;
        let (w1, b1) = p.linear(&format!("{pre}.intermediate.dense"), h, f)?;
        let (w2, b2) = p.linear(&format!("{pre}.output.dense"), f, h)?;
        let [ln1, ln2] = layer_norm_prefixes(i);
        layers.push(LayerWeights {
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            wo,
            bo,
            ln1_gamma: p.vec(&format!("{ln1}.weight"), h)?,
            ln1_beta: p.vec(&format!("{ln1}.bias"), h)?,
            w1,
            b1,
            w2,
            b2,
            ln2_gamma: p.vec(&format!("{ln2}.weight"), h)?,
            ln2_beta: p.vec(&format!("{ln2}.bias"), h)?,
        });
    }
    let (t1, tb1) = p.linear("reciprocal.fc1", 1, th)?;
    let (t2, tb2) = p.linear("reciprocal.fc2", th, th)?;
    let (t3, tb3) = p.linear("reciprocal.fc3", th, 1)?;
    let reciprocal = ReciprocalWeights {
        w1: t1.data().to_vec(),
        b1: tb1,
        w2: t2,
        b2: tb2,
        w3: t3.data().to_vec(),
        b3: tb3[0],
    };
    let (classifier, classifier_bias) = p.linear("classifier", h, labels)?;
    let dims = ModelDims {
        hidden: h,
        heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim(),
        ffn: f,
        layers: cfg.num_hidden_layers,
        reciprocal_hidden: th,
        softmax_scale: sm.scale,
        softmax_shift: sm.shift,
        softmax_power: sm.power,
        labels: head.labels.clone(),
    };
    let (v, n_pos) = (cfg.vocab_size, cfg.max_position_embeddings);
    let emb = EmbeddingTables {
        vocab: v,
        hidden: h,
        word: p.vec32("embeddings.word_embeddings.weight", &[v, h])?,
        position: p.vec32("embeddings.position_embeddings.weight", &[n_pos, h])?,
        token_type: p.vec32(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?[..h]
            .to_vec(),
        ln_gamma: p.vec32("embeddings.LayerNorm.weight", &[h])?,
        ln_beta: p.vec32("embeddings.LayerNorm.bias", &[h])?,
        ln_eps: cfg.layer_norm_eps,
        pad_id: cfg.pad_token_id,
    };
    Ok((
        ModelWeights {
            dims,
            layers,
            reciprocal,
            classifier,
            classifier_bias,
        },
        emb,
    ))
}
