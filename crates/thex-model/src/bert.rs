//! The BERT encoder with THE-X approximations: one module definition for loading, inference
//! and training.

use std::collections::HashMap;

use candle_core::{D, Device, IndexOp, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use crate::approx::{HeadConfig, LayerNormKind, Pooling, SoftmaxConfig, ThexConfig, ThexSoftmax};
use crate::batch::Batch;
use crate::config::{Activation, BertConfig};
use crate::error::{ModelError, Result};
use crate::layers::{Norm, ReciprocalMlp, ThexSoftmaxTrace, activate, exact_softmax, thex_softmax};
use crate::weights::{ParamMode, build_with};

/// Tensor-name prefix of the shared reciprocal network `T`.
pub const RECIPROCAL_PREFIX: &str = "reciprocal";
/// Tensor-name prefix of the classification head.
pub const CLASSIFIER_PREFIX: &str = "classifier";
/// Tensor-name prefix of the (client-side) embeddings.
pub const EMBEDDINGS_PREFIX: &str = "embeddings";

/// Tensor-name prefixes of the two LayerNorms of encoder layer `layer`: the attention one
/// (input/output in [`LayerTrace::attention_norm_input`] / [`LayerTrace::attention_output`])
/// and the output one ([`LayerTrace::output_norm_input`] / [`LayerTrace::output`]). Each holds
/// `weight` and `bias` (gamma/beta, or gamma'/beta' when affine).
pub fn layer_norm_prefixes(layer: usize) -> [String; 2] {
    [
        format!("encoder.layer.{layer}.attention.output.LayerNorm"),
        format!("encoder.layer.{layer}.output.LayerNorm"),
    ]
}

/// Token, position and token-type embeddings followed by the (always exact) LayerNorm: the
/// part the client computes in plaintext.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Embedding,
    position: Tensor,
    token_type: Tensor,
    norm: Norm,
    dropout: f32,
}

impl Embeddings {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let word = vb.get_with_hints((cfg.vocab_size, h), "word_embeddings.weight", init)?;
        let position = vb.get_with_hints(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
            init,
        )?;
        let token_type = vb.get_with_hints(
            (cfg.type_vocab_size, h),
            "token_type_embeddings.weight",
            init,
        )?;
        Ok(Embeddings {
            word: Embedding::new(word, h),
            position,
            token_type,
            norm: Norm::new(
                h,
                LayerNormKind::Exact,
                cfg.layer_norm_eps,
                vb.pp("LayerNorm"),
            )?,
            dropout: cfg.hidden_dropout_prob as f32,
        })
    }

    /// `[batch, seq]` u32 token ids (token type 0 everywhere) to `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, train: bool) -> Result<Tensor> {
        let (_, n) = input_ids.dims2()?;
        let words = self.word.forward(input_ids)?;
        let with_type = words.broadcast_add(&self.token_type.i(0)?)?;
        let with_pos = with_type.broadcast_add(&self.position.narrow(0, 0, n)?)?;
        let out = self.norm.forward(&with_pos)?;
        dropout(&out, self.dropout, train)
    }
}

fn dropout(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(candle_nn::ops::dropout(x, p)?)
    } else {
        Ok(x.clone())
    }
}

/// The attention softmax of a layer.
#[derive(Debug, Clone)]
enum AttnSoftmax {
    Exact,
    Thex(ThexSoftmax, ReciprocalMlp),
}

/// Every intermediate value of one encoder layer (evaluation mode), for layer-by-layer
/// comparison with the encrypted engine. Shapes: `b` batch, `n` sequence, `h` hidden,
/// `H` heads, `d` head width, `f` FFN width.
#[derive(Debug, Clone)]
pub struct LayerTrace {
    /// Layer input `[b, n, h]`.
    pub input: Tensor,
    /// Queries `[b, H, n, d]`.
    pub query: Tensor,
    /// Keys `[b, H, n, d]`.
    pub key: Tensor,
    /// Values `[b, H, n, d]`.
    pub value: Tensor,
    /// `Q K^T / sqrt(d)` `[b, H, n, n]`, before any mask.
    pub scores: Tensor,
    /// THE-X softmax internals (`None` for the exact softmax).
    pub softmax: Option<ThexSoftmaxTrace>,
    /// Attention weights `[b, H, n, n]`.
    pub probs: Tensor,
    /// Heads concatenated `[b, n, h]`.
    pub context: Tensor,
    /// Input of the attention LayerNorm: output projection + residual `[b, n, h]`.
    pub attention_norm_input: Tensor,
    /// Output of the attention LayerNorm `[b, n, h]`.
    pub attention_output: Tensor,
    /// FFN pre-activation `[b, n, f]` (what the client receives for the ReLU round).
    pub intermediate_pre: Tensor,
    /// FFN after the activation `[b, n, f]`.
    pub intermediate: Tensor,
    /// Input of the output LayerNorm: FFN projection + residual `[b, n, h]`.
    pub output_norm_input: Tensor,
    /// Layer output `[b, n, h]`.
    pub output: Tensor,
}

/// Intermediate values of a whole forward pass.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Embedding output `[b, n, h]` (what the client encrypts).
    pub embeddings: Tensor,
    /// One entry per encoder layer.
    pub layers: Vec<LayerTrace>,
}

/// One encoder layer (HF names `attention.self.{query,key,value}`, `attention.output.dense`,
/// `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, `output.LayerNorm`).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
    softmax: AttnSoftmax,
    activation: Activation,
    heads: usize,
    head_dim: usize,
    hidden_dropout: f32,
    attn_dropout: f32,
}

impl EncoderLayer {
    fn new(
        cfg: &BertConfig,
        thex: &ThexConfig,
        reciprocal: Option<&ReciprocalMlp>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let f = cfg.intermediate_size;
        let att = vb.pp("attention");
        let sa = att.pp("self");
        let softmax = match (&thex.softmax, reciprocal) {
            (SoftmaxConfig::Thex(s), Some(t)) => AttnSoftmax::Thex(*s, t.clone()),
            _ => AttnSoftmax::Exact,
        };
        Ok(EncoderLayer {
            query: candle_nn::linear(h, h, sa.pp("query"))?,
            key: candle_nn::linear(h, h, sa.pp("key"))?,
            value: candle_nn::linear(h, h, sa.pp("value"))?,
            attn_out: candle_nn::linear(h, h, att.pp("output").pp("dense"))?,
            attn_norm: Norm::new(
                h,
                thex.layer_norm,
                cfg.layer_norm_eps,
                att.pp("output").pp("LayerNorm"),
            )?,
            intermediate: candle_nn::linear(h, f, vb.pp("intermediate").pp("dense"))?,
            output: candle_nn::linear(f, h, vb.pp("output").pp("dense"))?,
            out_norm: Norm::new(
                h,
                thex.layer_norm,
                cfg.layer_norm_eps,
                vb.pp("output").pp("LayerNorm"),
            )?,
            softmax,
            activation: thex.activation,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            hidden_dropout: cfg.hidden_dropout_prob as f32,
            attn_dropout: cfg.attention_probs_dropout_prob as f32,
        })
    }

    /// The two LayerNorms (attention, output) of this layer; names in [`layer_norm_prefixes`].
    pub fn norms(&self) -> [&Norm; 2] {
        [&self.attn_norm, &self.out_norm]
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    fn forward(
        &self,
        x: &Tensor,
        key_mask: &Tensor,
        train: bool,
        trace: Option<&mut Vec<LayerTrace>>,
    ) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let q = self.split_heads(&self.query.forward(x)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let (probs, softmax_trace) = match &self.softmax {
            AttnSoftmax::Exact => (exact_softmax(&scores, key_mask)?, None),
            AttnSoftmax::Thex(cfg, t) => {
                let (p, tr) = thex_softmax(&scores, key_mask, cfg, t)?;
                (p, Some(tr))
            }
        };
        let dropped = dropout(&probs, self.attn_dropout, train)?;
        let context = dropped.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?;
        let attn = dropout(
            &self.attn_out.forward(&context)?,
            self.hidden_dropout,
            train,
        )?;
        let attn_norm_input = (attn + x)?;
        let attention_output = self.attn_norm.forward(&attn_norm_input)?;
        let intermediate_pre = self.intermediate.forward(&attention_output)?;
        let intermediate = activate(self.activation, &intermediate_pre)?;
        let out = dropout(
            &self.output.forward(&intermediate)?,
            self.hidden_dropout,
            train,
        )?;
        let output_norm_input = (out + &attention_output)?;
        let output = self.out_norm.forward(&output_norm_input)?;
        if let Some(tr) = trace {
            tr.push(LayerTrace {
                input: x.clone(),
                query: q,
                key: k,
                value: v,
                scores,
                softmax: softmax_trace,
                probs,
                context,
                attention_norm_input: attn_norm_input,
                attention_output,
                intermediate_pre,
                intermediate,
                output_norm_input,
                output: output.clone(),
            });
        }
        Ok(output)
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `[b, n, h]`.
    pub last_hidden_state: Tensor,
    /// Masked mean of the last hidden state `[b, h]` (not normalised).
    pub pooled: Tensor,
    /// Classifier logits `[b, labels]`, if the model has a head.
    pub logits: Option<Tensor>,
}

/// BERT (embeddings + K encoder layers) with the configured THE-X approximations and an
/// optional linear classifier on the mean-pooled last hidden state.
#[derive(Debug, Clone)]
pub struct ThexModel {
    config: BertConfig,
    thex: ThexConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    reciprocal: Option<ReciprocalMlp>,
    classifier: Option<Linear>,
    params: Vec<(String, Tensor)>,
    device: Device,
}

impl ThexModel {
    /// Builds the model from named tensors (Hugging Face names, no `bert.` prefix; see
    /// [`crate::read_safetensors`]). `config` must already be truncated to the wanted number of
    /// layers; only the tensors of those layers are read.
    pub fn from_tensors(
        config: &BertConfig,
        thex: &ThexConfig,
        source: HashMap<String, Tensor>,
        mode: ParamMode,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        thex.validate()?;
        let (mut model, params) =
            build_with(source, mode, device, |vb| Self::new(config, thex, vb))?;
        model.params = params;
        Ok(model)
    }

    /// Builds the model from any `VarBuilder` (the same definition serves loading, inference
    /// and, with `VarBuilder::from_varmap`, training). [`ThexModel::params`] stays empty: use
    /// [`ThexModel::from_tensors`] for a model that can be saved.
    pub fn new(config: &BertConfig, thex: &ThexConfig, vb: VarBuilder) -> Result<Self> {
        let reciprocal = match &thex.softmax {
            SoftmaxConfig::Thex(s) => Some(ReciprocalMlp::new(
                s.reciprocal_hidden,
                vb.pp(RECIPROCAL_PREFIX),
            )?),
            SoftmaxConfig::Exact => None,
        };
        let embeddings = Embeddings::new(config, vb.pp(EMBEDDINGS_PREFIX))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                EncoderLayer::new(
                    config,
                    thex,
                    reciprocal.as_ref(),
                    vb.pp("encoder.layer").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let classifier = match &thex.head {
            Some(head) => Some(candle_nn::linear(
                config.hidden_size,
                head.labels.len(),
                vb.pp(CLASSIFIER_PREFIX),
            )?),
            None => None,
        };
        Ok(ThexModel {
            config: config.clone(),
            thex: thex.clone(),
            embeddings,
            layers,
            reciprocal,
            classifier,
            params: Vec::new(),
            device: vb.device().clone(),
        })
    }

    /// The (truncated) BERT configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The approximation settings.
    pub fn thex(&self) -> &ThexConfig {
        &self.thex
    }

    /// The classification head settings, if any.
    pub fn head(&self) -> Option<&HeadConfig> {
        self.thex.head.as_ref()
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every named tensor the model uses, in load order (what [`crate::save_model_dir`]
    /// writes). Trainable ones share storage with their `Var`, so they show current values.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The client-side embedding module.
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// The encoder layers.
    pub fn layers(&self) -> &[EncoderLayer] {
        &self.layers
    }

    /// The shared reciprocal network `T` (THE-X softmax only).
    pub fn reciprocal(&self) -> Option<&ReciprocalMlp> {
        self.reciprocal.as_ref()
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let n = batch.seq_len();
        if n == 0 || n > self.config.max_position_embeddings {
            return Err(ModelError::BadSequenceLength {
                len: n,
                max: self.config.max_position_embeddings,
            });
        }
        if batch.max_id() as usize >= self.config.vocab_size {
            return Err(ModelError::TokenOutOfRange {
                id: batch.max_id(),
                vocab_size: self.config.vocab_size,
            });
        }
        Ok(())
    }

    fn run(
        &self,
        batch: &Batch,
        train: bool,
        mut trace: Option<&mut Trace>,
    ) -> Result<ModelOutput> {
        self.check_batch(batch)?;
        let input_ids = batch.input_ids().to_device(&self.device)?;
        let mask = batch.attention_mask().to_device(&self.device)?;
        let mut x = self.embeddings.forward(&input_ids, train)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.embeddings = x.clone();
        }
        for layer in &self.layers {
            x = layer.forward(
                &x,
                &mask,
                train,
                trace.as_deref_mut().map(|t| &mut t.layers),
            )?;
        }
        let pooled = mean_pool(&x, &mask)?;
        let logits = match (&self.classifier, self.thex.head.as_ref().map(|h| h.pooling)) {
            (Some(c), Some(Pooling::Mean)) => Some(c.forward(&pooled)?),
            _ => None,
        };
        Ok(ModelOutput {
            last_hidden_state: x,
            pooled,
            logits,
        })
    }

    /// Forward pass; `train` enables dropout.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<ModelOutput> {
        self.run(batch, train, None)
    }

    /// Evaluation-mode forward pass that also returns every intermediate value.
    pub fn forward_traced(&self, batch: &Batch) -> Result<(ModelOutput, Trace)> {
        let mut trace = Trace {
            embeddings: Tensor::zeros(1, candle_core::DType::F32, &self.device)?,
            layers: Vec::with_capacity(self.layers.len()),
        };
        let out = self.run(batch, false, Some(&mut trace))?;
        Ok((out, trace))
    }
}

/// Mean of `hidden` `[b, n, h]` over positions where `mask` `[b, n]` is 1.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}
