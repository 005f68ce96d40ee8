//! The compiled server program: folded weights, per-bucket layouts and encoded operations,
//! levels, the exact Galois key set and the round schedule.
//!
//! Per encoder layer (levels for a fresh ciphertext at `L`; a layer's input `X` is at
//! [`input_level`], `L - 2` or `L - 1` by the bucket's [`AvMasking`]; every request is dropped
//! to [`decrypt_level`] before it is sent, and replies come back at [`reply_level`]):
//!
//! | segment | server computes | client round |
//! |---|---|---|
//! | `X` → softmax | `Q, K, V = X·W + b`; `y = (scale/√d)·Q·Kᵀ + shift` (4 levels) | `e = ReLU(y^p) ⊙ mask` |
//! | `e` → T₁ | `s = Σ_keys e` (no level); `z₁ = s·w₁ + b₁` (1) | `h₁ = ReLU(z₁)` |
//! | `h₁` → T₂ | `z₂ = h₁·W₂ + b₂` (1) | `h₂ = ReLU(z₂)` |
//! | `h₂` → FFN | `T = h₂·w₃ + b₃` broadcast over keys (1); `P = e ⊙ T` (1); `C = P·V` (2); `S₁ = C·Wo + bo + X` (1); `u = S₁·(γ₁W₁) + β₁W₁ + b₁` (1) | `ReLU(u) ⊙ w`, refresh `S₁ ⊙ w` |
//! | FFN → next | `X' = ReLU(u)·(W₂γ₂) + γ₁γ₂ ⊙ S₁ + γ₂(b₂ + β₁) + β₂` (1) | |
//! | FFN → logits (last layer) | `Σ_t [ReLU(u)·(W₂γ₂Wc) + S₁·(γ₁γ₂Wc)] + (γ₂(b₂+β₁)+β₂)·Wc + bc` (1) | |
//!
//! `w` is the client's row weight: 1 for real tokens and 0 for padding, or `1/n` in the last
//! layer, which turns the token sum into THE-X's masked mean pooling without telling the
//! server `n`. The affine LayerNorms are folded into the neighbouring linear maps; only
//! `γ₁γ₂ ⊙ S₁` remains a separate plaintext product.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ckks::Parameters;
use he_linalg::attention::{
    AttentionValues, AvMasking, QkScores, RowSplit, row_sums_plan, scores_layout,
};
use he_linalg::plan::{OpPlan, Plan};
use he_linalg::{
    CkksBackend, CkksPlaintext, ColumnOrder, EncodedLinear, Layout, LinearMethod, LinearSpec,
    Matrix, PlainMatrix, SlotBackend,
};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::params::{EngineParams, PIPELINE_DEPTH};
use crate::weights::{EmbeddingTables, ModelDims, ModelWeights};

/// The packed layouts of one length bucket (shared by client and server).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketLayouts {
    /// Padded sequence length (a power of two).
    pub bucket: usize,
    /// Hidden states `bucket × hidden`, contiguous columns.
    pub hidden: Layout,
    /// Q, K, V and the attention context, head-interleaved.
    pub heads: Layout,
    /// Attention scores in diagonal form.
    pub scores: Layout,
    /// Hidden units of the reciprocal network per (token, head), head-interleaved.
    pub reciprocal: Layout,
    /// FFN activations `bucket × ffn`.
    pub ffn: Layout,
    /// Per-token logits before the token sum `bucket × labels`.
    pub logits: Layout,
}

impl BucketLayouts {
    /// Layouts for `bucket` rows in ciphertexts of `slots` slots.
    pub fn new(dims: &ModelDims, slots: usize, bucket: usize) -> Result<Self> {
        let hidden = Layout::new(slots, bucket, dims.hidden, ColumnOrder::Contiguous)?;
        let heads = hidden.with_cols(
            dims.hidden,
            ColumnOrder::HeadInterleaved {
                heads: dims.heads,
                head_dim: dims.head_dim,
            },
        )?;
        let scores = scores_layout(&heads)?;
        let reciprocal = hidden.with_cols(
            dims.heads * dims.reciprocal_hidden,
            ColumnOrder::HeadInterleaved {
                heads: dims.heads,
                head_dim: dims.reciprocal_hidden,
            },
        )?;
        let ffn = hidden.with_cols(dims.ffn, ColumnOrder::Contiguous)?;
        let logits = hidden.with_cols(dims.labels.len(), ColumnOrder::Contiguous)?;
        if logits.n_cts() != 1 {
            return Err(EngineError::UnsupportedModel(format!(
                "{} labels do not fit one ciphertext at bucket {bucket}",
                dims.labels.len()
            )));
        }
        Ok(Self {
            bucket,
            hidden,
            heads,
            scores,
            reciprocal,
            ffn,
            logits,
        })
    }

    /// Slots a bucket needs: every head-interleaved layout must fit its padded heads, and the
    /// labels must fit one ciphertext.
    pub fn slots_needed(dims: &ModelDims, bucket: usize) -> usize {
        bucket * dims.heads.next_power_of_two().max(dims.labels.len())
    }
}

/// What the client is asked to do with the ciphertexts of one request item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ItemKind {
    /// Softmax surrogate: `ReLU(y^power)`, padded keys and rows zeroed (scores layout).
    Softmax,
    /// First hidden ReLU of the reciprocal network (reciprocal layout).
    ReciprocalHidden1,
    /// Second hidden ReLU of the reciprocal network (reciprocal layout).
    ReciprocalHidden2,
    /// FFN ReLU, times the row weight (FFN layout).
    Ffn,
    /// Residual stream refresh: identity times the row weight (hidden layout).
    Residual,
}

impl ItemKind {
    /// Wire tag.
    pub fn tag(self) -> u8 {
        match self {
            ItemKind::Softmax => 1,
            ItemKind::ReciprocalHidden1 => 2,
            ItemKind::ReciprocalHidden2 => 3,
            ItemKind::Ffn => 4,
            ItemKind::Residual => 5,
        }
    }
    /// Kind of a wire tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => ItemKind::Softmax,
            2 => ItemKind::ReciprocalHidden1,
            3 => ItemKind::ReciprocalHidden2,
            4 => ItemKind::Ffn,
            5 => ItemKind::Residual,
            _ => return None,
        })
    }
    /// The layout of this item's ciphertexts.
    pub fn layout(self, l: &BucketLayouts) -> &Layout {
        match self {
            ItemKind::Softmax => &l.scores,
            ItemKind::ReciprocalHidden1 | ItemKind::ReciprocalHidden2 => &l.reciprocal,
            ItemKind::Ffn => &l.ffn,
            ItemKind::Residual => &l.hidden,
        }
    }
}

/// The client rounds of one encoder layer, in order; each inner list is one round's items.
pub const LAYER_ROUNDS: [&[ItemKind]; 4] = [
    &[ItemKind::Softmax],
    &[ItemKind::ReciprocalHidden1],
    &[ItemKind::ReciprocalHidden2],
    &[ItemKind::Ffn, ItemKind::Residual],
];

/// The items of round `round` (1-based) of a model with `layers` layers: `(layer, kinds)`.
pub fn round_items(layers: usize, round: u32) -> Option<(usize, &'static [ItemKind])> {
    let r = (round as usize).checked_sub(1)?;
    let layer = r / LAYER_ROUNDS.len();
    (layer < layers).then(|| (layer, LAYER_ROUNDS[r % LAYER_ROUNDS.len()]))
}

/// Weights with the affine LayerNorms folded into the linear maps (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct FoldedLayer {
    wq: Matrix,
    bq: Vec<f64>,
    wk: Matrix,
    bk: Vec<f64>,
    wv: Matrix,
    bv: Vec<f64>,
    wo: Matrix,
    bo: Vec<f64>,
    /// `diag(γ₁)·W₁`.
    w1: Matrix,
    /// `β₁·W₁ + b₁`.
    b1: Vec<f64>,
    tail: FoldedTail,
}

#[derive(Debug, Clone)]
enum FoldedTail {
    /// `W₂·diag(γ₂)`, `γ₁⊙γ₂`, `γ₂⊙(b₂+β₁)+β₂`.
    Next {
        w2: Matrix,
        g12: Vec<f64>,
        c: Vec<f64>,
    },
    /// `W₂·diag(γ₂)·Wc`, `diag(γ₁γ₂)·Wc`, `c·Wc + bc`.
    Logits {
        m1: Matrix,
        m2: Matrix,
        bias: Vec<f64>,
    },
}

fn scale_rows(m: &Matrix, s: &[f64]) -> Matrix {
    Matrix::from_fn(m.rows(), m.cols(), |i, j| m.get(i, j) * s[i])
}

fn scale_cols(m: &Matrix, s: &[f64]) -> Matrix {
    Matrix::from_fn(m.rows(), m.cols(), |i, j| m.get(i, j) * s[j])
}

fn vec_mat(v: &[f64], m: &Matrix) -> Vec<f64> {
    (0..m.cols())
        .map(|j| v.iter().enumerate().map(|(i, x)| x * m.get(i, j)).sum())
        .collect()
}

fn fold(w: &ModelWeights) -> Result<Vec<FoldedLayer>> {
    let last = w.layers.len() - 1;
    w.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let w1 = scale_rows(&l.w1, &l.ln1_gamma);
            let b1: Vec<f64> = vec_mat(&l.ln1_beta, &l.w1)
                .iter()
                .zip(&l.b1)
                .map(|(a, b)| a + b)
                .collect();
            let w2 = scale_cols(&l.w2, &l.ln2_gamma);
            let c: Vec<f64> = (0..l.b2.len())
                .map(|j| l.ln2_gamma[j] * (l.b2[j] + l.ln1_beta[j]) + l.ln2_beta[j])
                .collect();
            let g12: Vec<f64> = l
                .ln1_gamma
                .iter()
                .zip(&l.ln2_gamma)
                .map(|(a, b)| a * b)
                .collect();
            let tail = if i == last {
                let m1 = w2.matmul(&w.classifier)?;
                let m2 = scale_rows(&w.classifier, &g12);
                let bias = vec_mat(&c, &w.classifier)
                    .iter()
                    .zip(&w.classifier_bias)
                    .map(|(a, b)| a + b)
                    .collect();
                FoldedTail::Logits { m1, m2, bias }
            } else {
                FoldedTail::Next { w2, g12, c }
            };
            Ok(FoldedLayer {
                wq: l.wq.clone(),
                bq: l.bq.clone(),
                wk: l.wk.clone(),
                bk: l.bk.clone(),
                wv: l.wv.clone(),
                bv: l.bv.clone(),
                wo: l.wo.clone(),
                bo: l.bo.clone(),
                w1,
                b1,
                tail,
            })
        })
        .collect()
}

/// Encoded operations that are the same in every layer of a bucket: the attention masks (same
/// layouts, levels and `1/√d`) and the reciprocal network (one per model). Encoded once per
/// bucket and shared by the layers' programs.
#[derive(Debug)]
pub(crate) struct SharedProgram {
    pub qk: QkScores<CkksPlaintext>,
    pub t1_mul: PlainMatrix<CkksPlaintext>,
    pub t1_add: PlainMatrix<CkksPlaintext>,
    pub t2: EncodedLinear<CkksPlaintext>,
    pub t3: EncodedLinear<CkksPlaintext>,
    pub av: AttentionValues<CkksPlaintext>,
    /// With [`AvMasking::WeightRows`]: splits the fresh softmax reply `e` by rows (lo/hi, see
    /// [`RowSplit`]) in the level it has to spare above `T(s)`.
    pub split: Option<RowSplit<CkksPlaintext>>,
}

impl SharedProgram {
    /// Bytes of encoded masks and weights.
    pub fn heap_bytes(&self) -> usize {
        self.qk.heap_bytes()
            + self.av.heap_bytes()
            + self.t1_mul.heap_bytes()
            + self.t1_add.heap_bytes()
            + self.t2.heap_bytes()
            + self.t3.heap_bytes()
            + self.split.as_ref().map_or(0, RowSplit::heap_bytes)
    }
}

/// Encoded operations of one layer at one bucket.
#[derive(Debug)]
pub(crate) struct LayerProgram {
    pub q: EncodedLinear<CkksPlaintext>,
    pub k: EncodedLinear<CkksPlaintext>,
    pub v: EncodedLinear<CkksPlaintext>,
    pub shared: Arc<SharedProgram>,
    pub shift: f64,
    pub wo: EncodedLinear<CkksPlaintext>,
    pub w1: EncodedLinear<CkksPlaintext>,
    pub tail: LayerTail,
    pub plan: Plan,
    /// Scale of the ciphertexts sent to the client (see [`EngineParams::request_log_scale`]).
    pub request_scale: f64,
}

impl LayerProgram {
    /// Bytes of the layer's own encoded weights (without the [`SharedProgram`]).
    pub fn heap_bytes(&self) -> usize {
        let lins = [&self.q, &self.k, &self.v, &self.wo, &self.w1];
        let tail: usize = match &self.tail {
            LayerTail::Next { w2, g12 } => w2.heap_bytes() + g12.heap_bytes(),
            LayerTail::Logits { m1, m2, bias, .. } => {
                m1.heap_bytes() + m2.heap_bytes() + bias.heap_bytes()
            }
        };
        lins.iter().map(|l| l.heap_bytes()).sum::<usize>() + tail
    }

    /// Encoded plaintexts of the layer's own linear maps.
    fn linear_plaintexts(&self) -> usize {
        let tail = match &self.tail {
            LayerTail::Next { w2, .. } => w2.n_plaintexts(),
            LayerTail::Logits { m1, m2, .. } => m1.n_plaintexts() + m2.n_plaintexts(),
        };
        [&self.q, &self.k, &self.v, &self.wo, &self.w1]
            .iter()
            .map(|x| x.n_plaintexts())
            .sum::<usize>()
            + tail
    }
}

/// The end of a layer: the next layer's input, or the logits.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per layer program, never moved in a hot loop
pub(crate) enum LayerTail {
    Next {
        w2: EncodedLinear<CkksPlaintext>,
        g12: PlainMatrix<CkksPlaintext>,
    },
    Logits {
        m1: EncodedLinear<CkksPlaintext>,
        m2: EncodedLinear<CkksPlaintext>,
        /// Token-sum rotation steps `1, 2, 4, …, bucket/2`.
        steps: Vec<usize>,
        /// `c·Wc + bc` at the start of each label's chunk.
        bias: CkksPlaintext,
    },
}

/// The level every ciphertext the client decrypts is sent at: `max_level - PIPELINE_DEPTH`
/// (the engine's `extra_levels`, 0 by default: only `q_0` is left, 2^14 or more above the
/// request scale). The server drops requests and logits to it before sending them.
pub fn decrypt_level(params: &Parameters) -> usize {
    params.max_level().saturating_sub(PIPELINE_DEPTH)
}

/// The level of Q and K for Q·Kᵀ (three levels above [`decrypt_level`]: where the projections
/// leave them).
pub fn qk_level(params: &Parameters) -> usize {
    decrypt_level(params) + 3
}

/// The level of every layer's input `X` (the client encrypts its input there) when attention ·
/// V uses `masking`: the value projection `V`, one level below `X`, meets `P = e ⊙ T(s)` (two
/// levels below fresh) where A·V takes it, and no prime more is carried through the Q/K/V
/// products. With [`AvMasking::WeightRows`] that is one level below `P` (`X` two below fresh),
/// with [`AvMasking::ValueTokens`] at `P`'s level (`X` one below fresh).
pub fn input_level(params: &Parameters, masking: AvMasking) -> usize {
    params.max_level()
        - match masking {
            AvMasking::WeightRows => 2,
            AvMasking::ValueTokens => 1,
        }
}

/// The level the client encrypts a reply item at (`input_level`: the bucket's
/// [`input_level`]): the lowest from which the server's next segment still ends at
/// [`decrypt_level`]. The reciprocal network's first hidden layer and the last layer's
/// FFN/residual feed one linear map before the next decryption; the other FFN/residual feed
/// the output projection to the next layer's input (one level above `input_level`); the rest
/// feed the deep segments and come back at the top level.
pub fn reply_level(
    params: &Parameters,
    input_level: usize,
    kind: ItemKind,
    last_layer: bool,
) -> usize {
    match kind {
        ItemKind::ReciprocalHidden1 => decrypt_level(params) + 1,
        ItemKind::Ffn | ItemKind::Residual if last_layer => decrypt_level(params) + 1,
        ItemKind::Ffn | ItemKind::Residual => input_level + 1,
        _ => params.max_level(),
    }
}

/// The attention · V masking [`ServerModel::compile`] picks for a bucket when
/// [`EngineParams::attention_values`] is unset. [`AvMasking::ValueTokens`] halves A·V's
/// broadcast products per layer (`n'·min(g, d_h)` with [`AvMasking::WeightRows`], `g` feature
/// groups per ciphertext) and its weight rotations, and takes the Q/K/V projections and the
/// FFN output one prime higher (their dense products per slot: `(4h² + 2h·f)·n'/slots` per
/// layer with the other maps). It is picked when the first is at least a quarter of the
/// second: measured (docs/benchmarks.md) BERT-tiny at 128 tokens (ratio 1.3) 18% faster with
/// it, the default model at 16 tokens (0.04) the same, at 64 tokens (0.009) 13% slower.
pub fn auto_masking(dims: &ModelDims, l: &BucketLayouts) -> AvMasking {
    let (_, g) = l.heads.head_groups().unwrap_or((1, 1));
    let np = l.heads.row_stride();
    let broadcast = np * g.min(dims.head_dim);
    let (h, f) = (dims.hidden, dims.ffn);
    let dense = (4 * h * h + 2 * h * f) * np / l.hidden.slots();
    if 4 * broadcast >= dense {
        AvMasking::ValueTokens
    } else {
        AvMasking::WeightRows
    }
}

/// The shared parts of the reciprocal network as big matrices for one bucket.
fn reciprocal_mats(
    w: &ModelWeights,
    l: &BucketLayouts,
) -> (Matrix, Matrix, Matrix, Vec<f64>, Matrix) {
    let (heads, th, np) = (w.dims.heads, w.dims.reciprocal_hidden, l.bucket);
    let r = &w.reciprocal;
    let cols = heads * th;
    let mul = Matrix::from_fn(np, cols, |_, c| r.w1[c % th]);
    let add = Matrix::from_fn(np, cols, |_, c| r.b1[c % th]);
    let t2 = Matrix::from_fn(cols, cols, |i, j| {
        if i / th == j / th {
            r.w2.get(i % th, j % th)
        } else {
            0.0
        }
    });
    let b2: Vec<f64> = (0..cols).map(|c| r.b2[c % th]).collect();
    let t3 = Matrix::from_fn(cols, heads * np, |i, j| {
        if i / th == j / np { r.w3[i % th] } else { 0.0 }
    });
    (mul, add, t2, b2, t3)
}

/// Checks and constants both encoders use: the top level, the layer input level and Δ.
fn levels(
    enc: &CkksBackend,
    params: &Parameters,
    masking: AvMasking,
) -> Result<(usize, usize, f64)> {
    let top = params.max_level();
    let lx = input_level(params, masking);
    if lx < 3 || top < PIPELINE_DEPTH {
        return Err(EngineError::NotEnoughLevels {
            needed: PIPELINE_DEPTH,
            available: top,
        });
    }
    Ok((top, lx, enc.default_scale()))
}

/// A BSGS map of a ciphertext at the encoding scale; the output at `out_scale` (`None`: the
/// same).
fn bsgs(
    enc: &CkksBackend,
    (m, b): (&Matrix, Option<&[f64]>),
    input: &Layout,
    out_order: ColumnOrder,
    level: usize,
    out_scale: Option<f64>,
) -> Result<EncodedLinear<CkksPlaintext>> {
    let spec = LinearSpec {
        weights: m,
        bias: b,
        out_order,
        out_scale,
    };
    let delta = enc.default_scale();
    Ok(EncodedLinear::from_spec(
        enc,
        spec,
        input,
        level,
        delta,
        LinearMethod::Bsgs,
    )?)
}

/// Encodes the parts every layer shares for A·V's `masking`; what the client decrypts (scores,
/// `z₁`, `z₂`) comes out at `request_scale`.
fn encode_shared(
    enc: &CkksBackend,
    w: &ModelWeights,
    l: &BucketLayouts,
    params: &Parameters,
    (masking, request_scale): (AvMasking, f64),
) -> Result<SharedProgram> {
    let (top, lx, delta) = levels(enc, params, masking)?;
    let d = &w.dims;
    let factor = d.softmax_scale / (d.head_dim as f64).sqrt();
    // Q and K leave the projections at `lx - 1`, three levels above the decrypt level.
    let qk = QkScores::with_out_scale(
        enc,
        &l.heads,
        qk_level(params),
        (delta, delta),
        factor,
        request_scale,
    )?;

    // Reciprocal network on fresh `e` / `h₁` / `h₂` at the top level.
    let (mul, add, t2m, t2b, t3m) = reciprocal_mats(w, l);
    let t1_scale = enc.rescale_factor(top) * request_scale / delta;
    let t1_mul = PlainMatrix::encode(enc, &mul, &l.reciprocal, top, t1_scale)?;
    let t1_add = PlainMatrix::encode(enc, &add, &l.reciprocal, top - 1, request_scale)?;
    let low = top - PIPELINE_DEPTH + 1;
    let rec = &l.reciprocal;
    let t2 = bsgs(
        enc,
        (&t2m, Some(&t2b)),
        rec,
        rec.order(),
        low,
        Some(request_scale),
    )?;
    let t3_bias = vec![w.reciprocal.b3; d.heads * l.bucket];
    let t3 = bsgs(
        enc,
        (&t3m, Some(&t3_bias)),
        rec,
        l.scores.order(),
        top,
        None,
    )?;

    // P = e ⊙ T at top - 2 with scale Δ²/q_{top-1} (e fresh, T at top - 1): with row parts,
    // e is split by rows to top - 1 first (its spare level); V at lx - 1.
    let split = match masking {
        AvMasking::WeightRows => Some(RowSplit::new(enc, &l.scores, top, delta)?),
        AvMasking::ValueTokens => None,
    };
    let p_scale = delta * delta / enc.rescale_factor(top - 1);
    let av = AttentionValues::new(
        enc,
        (&l.scores, &l.heads),
        masking,
        (top - 2, p_scale),
        (lx - 1, delta),
    )?;
    Ok(SharedProgram {
        qk,
        t1_mul,
        t1_add,
        t2,
        t3,
        av,
        split,
    })
}

/// Encodes one layer's own weights; what the client decrypts (`u`, the logits) comes out at
/// `request_scale`.
fn encode_layer(
    enc: &CkksBackend,
    w: &ModelWeights,
    f: &FoldedLayer,
    l: &BucketLayouts,
    params: &Parameters,
    (shared, request_scale): (Arc<SharedProgram>, f64),
) -> Result<LayerProgram> {
    let (top, lx, delta) = levels(enc, params, shared.av.masking())?;
    let lin = |m: &Matrix, b: Option<&[f64]>, input: &Layout, order, level| {
        bsgs(enc, (m, b), input, order, level, None)
    };
    let to_client = |m: &Matrix, b: Option<&[f64]>, input: &Layout, level| {
        let out = Some(request_scale);
        bsgs(enc, (m, b), input, ColumnOrder::Contiguous, level, out)
    };
    let heads_order = l.heads.order();
    // Q, K and V share the baby-step rotations of X (one giant step for the three).
    let specs =
        [(&f.wq, &f.bq), (&f.wk, &f.bk), (&f.wv, &f.bv)].map(|(weights, bias)| LinearSpec {
            weights,
            bias: Some(bias.as_slice()),
            out_order: heads_order,
            out_scale: None,
        });
    let mut qkv = EncodedLinear::new_shared(enc, &specs, &l.hidden, lx, delta, LinearMethod::Bsgs)?
        .into_iter();
    let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
        return Err(
            he_linalg::Error::Unsupported("internal: Q/K/V projections missing".into()).into(),
        );
    };
    let d = &w.dims;
    let low = top - PIPELINE_DEPTH + 1;
    let ctx_level = (top - 3).min(lx - 1) - 1;
    let wo = lin(
        &f.wo,
        Some(&f.bo),
        &l.heads,
        ColumnOrder::Contiguous,
        ctx_level,
    )?;
    let w1 = to_client(&f.w1, Some(&f.b1), &l.hidden, ctx_level - 1)?;

    let (tail, tail_plan) = match &f.tail {
        FoldedTail::Next { w2, g12, c } => {
            let w2 = lin(w2, Some(c), &l.ffn, ColumnOrder::Contiguous, lx + 1)?;
            let gm = Matrix::from_fn(l.bucket, d.hidden, |_, j| g12[j]);
            let g12 = PlainMatrix::encode(enc, &gm, &l.hidden, lx + 1, enc.rescale_factor(lx + 1))?;
            let mut p = vec![w2.plan(), OpPlan::plaintext("gamma1*gamma2", 1)];
            p[0].name = format!("FFN out {}", p[0].name);
            (LayerTail::Next { w2, g12 }, p)
        }
        FoldedTail::Logits { m1, m2, bias } => {
            let m1 = to_client(m1, None, &l.ffn, low)?;
            let m2 = to_client(m2, None, &l.hidden, low)?;
            let steps: Vec<usize> = (0..l.bucket.trailing_zeros()).map(|j| 1 << j).collect();
            let mut v = vec![0.0; enc.slots()];
            for (c, b) in bias.iter().enumerate() {
                v[l.logits.position(0, c).1] = *b;
            }
            let bias = enc.encode(&v, low - 1, request_scale)?;
            let sum = OpPlan {
                name: format!("token sum x{}", l.bucket),
                rotation_steps: steps.iter().copied().collect(),
                rotations: steps.len() as u64,
                hoisted_rotations: 0,
                relinearizations: 0,
                depth: 0,
            };
            let p = vec![m1.plan(), m2.plan(), sum];
            (
                LayerTail::Logits {
                    m1,
                    m2,
                    steps,
                    bias,
                },
                p,
            )
        }
    };

    let mut plan = Plan::new();
    let mut qkv_plan = EncodedLinear::plan_many(&[&q, &k, &v])?;
    qkv_plan.name = format!("Q/K/V shared {}", qkv_plan.name);
    let sh = &*shared;
    plan.then(qkv_plan)
        .then(sh.qk.plan())
        .then(OpPlan::plaintext("softmax shift", 0))
        .then(row_sums_plan(&l.scores)?)
        .then(OpPlan::plaintext("T fc1", 1))
        .then(sh.t2.plan())
        .then(sh.t3.plan())
        .then(OpPlan {
            // The row split of e uses e's spare level (it is fresh, T(s) one level lower).
            name: match sh.split {
                Some(_) => "e row split, e * T(s)",
                None => "e * T(s)",
            }
            .into(),
            relinearizations: (l.scores.n_cts() * sh.av.parts()) as u64,
            depth: 1,
            ..OpPlan::default()
        })
        .then(sh.av.plan())
        .then(wo.plan())
        .then(w1.plan())
        .alongside(tail_plan);
    Ok(LayerProgram {
        q,
        k,
        v,
        shared,
        shift: d.softmax_shift,
        wo,
        w1,
        tail,
        plan,
        request_scale,
    })
}

/// The keyless backend that encodes the server's weights: compact plaintexts (one `i64` per
/// coefficient, transformed to NTT form inside each product) or NTT form (`level + 1` limbs).
fn weight_encoder(params: &Parameters, compact: bool) -> CkksBackend {
    CkksBackend::encoder_only(params).compact_plaintexts(compact)
}

/// One bucket's encoded layers (empty unless pre-encoded), their plans and the summary.
struct EncodedBucket {
    programs: Vec<Arc<LayerProgram>>,
    layer_plans: Vec<Plan>,
    plan: BucketPlan,
}

/// Summary of one compiled bucket (for reports and the client bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketPlan {
    /// Padded length.
    pub bucket: usize,
    /// Exact rotation steps (Galois keys) the program uses at this bucket.
    pub galois_steps: Vec<usize>,
    /// Key switches of one inference (all layers).
    pub key_switches: u64,
    /// Encoded plaintexts of all layers' linear maps (the reciprocal network, the same in
    /// every layer, counted once).
    pub plaintexts: usize,
    /// Bytes of the server's encoded weights and masks at this bucket (all layers, the parts
    /// every layer shares counted once; what pre-encoding keeps in memory).
    #[serde(default)]
    pub weight_bytes: usize,
    /// Ciphertexts in each round's request (the same count goes back up), round by round.
    pub round_ciphertexts: Vec<usize>,
    /// How attention · V is masked; sets the layer input level ([`input_level`]).
    pub attention_values: AvMasking,
}

/// The compiled server program. Holds no key: sessions bring their evaluation keys.
pub struct ServerModel {
    params: Parameters,
    engine: EngineParams,
    weights: ModelWeights,
    folded: Vec<FoldedLayer>,
    embeddings: EmbeddingTables,
    layouts: BTreeMap<usize, BucketLayouts>,
    plans: BTreeMap<usize, BucketPlan>,
    layer_plans: BTreeMap<usize, Vec<Plan>>,
    encoded: Mutex<BTreeMap<usize, Arc<Vec<Arc<LayerProgram>>>>>,
    /// Largest decrypted magnitude measured when compiling from a model.
    calibrated: Option<f64>,
}

impl std::fmt::Debug for ServerModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerModel")
            .field("params", &self.params)
            .field("dims", &self.weights.dims)
            .field("buckets", &self.engine.buckets)
            .field("pre_encode", &self.engine.pre_encode)
            .finish()
    }
}

impl ServerModel {
    /// Compiles a THE-X model (see [`crate::split_model`]) with parameters chosen from
    /// `engine`.
    ///
    /// The encoding scale is `engine.log_scale`; the ciphertexts the client decrypts may have
    /// a lower one: the largest value the client will decrypt is measured on the plaintext
    /// model (random token sequences of the smallest and largest bucket, [`crate::calibrate`])
    /// and their scale `Δ_r` leaves it 16× below the client's refusal threshold `q_0/4Δ_r`,
    /// down to 2^[`crate::calibrate::MIN_REQUEST_LOG_SCALE`]; models with larger values get
    /// one extra level instead ([`crate::calibrate::fit_headroom`]). See
    /// [`ServerModel::calibrated_magnitude`].
    pub fn compile(model: &thex_model::ThexModel, engine: &EngineParams) -> Result<Self> {
        let (weights, embeddings) = crate::weights::split_model(model)?;
        let (engine, magnitude) = Self::calibrate(model, &weights, &embeddings, engine)?;
        let mut compiled = Self::compile_weights(weights, embeddings, &engine)?;
        compiled.calibrated = Some(magnitude);
        Ok(compiled)
    }

    /// The calibration step of [`ServerModel::compile`] alone: `engine` with the request scale
    /// (and extra levels) that leave room for the largest value the client will decrypt, and that
    /// value. Lets a caller compile bucket by bucket at one scale.
    pub fn calibrated(
        model: &thex_model::ThexModel,
        engine: &EngineParams,
    ) -> Result<(EngineParams, f64)> {
        let (weights, embeddings) = crate::weights::split_model(model)?;
        Self::calibrate(model, &weights, &embeddings, engine)
    }

    fn calibrate(
        model: &thex_model::ThexModel,
        weights: &ModelWeights,
        embeddings: &EmbeddingTables,
        engine: &EngineParams,
    ) -> Result<(EngineParams, f64)> {
        engine.validate()?;
        let lengths: BTreeSet<usize> = [engine.buckets.iter().min(), engine.buckets.iter().max()]
            .into_iter()
            .flatten()
            .map(|&b| b.min(embeddings.max_positions()))
            .collect();
        let lengths: Vec<usize> = lengths.into_iter().collect();
        let magnitude =
            crate::calibrate::max_decrypted_magnitude(model, weights, embeddings.vocab, &lengths)?;
        let Some(room) = crate::calibrate::fit_headroom(
            engine.log_q0,
            engine.log_scale,
            engine.extra_levels,
            magnitude,
        ) else {
            return Err(EngineError::UnsupportedModel(format!(
                "the client would decrypt values up to {magnitude:.3e}: more than the {}-bit q0 \
                 and {} extra levels leave room for (raise log_q0 or extra_levels)",
                engine.log_q0, engine.extra_levels
            )));
        };
        // A request scale set by the caller is kept if it is lower.
        let request = engine
            .request_log_scale
            .map_or(room.request_log_scale, |r| r.min(room.request_log_scale));
        let engine = EngineParams {
            request_log_scale: (request < engine.log_scale).then_some(request),
            extra_levels: room.extra_levels,
            ..engine.clone()
        };
        Ok((engine, magnitude))
    }

    /// Compiles from already extracted weights, at `engine.log_scale` as given (no
    /// calibration).
    pub fn compile_weights(
        weights: ModelWeights,
        embeddings: EmbeddingTables,
        engine: &EngineParams,
    ) -> Result<Self> {
        engine.validate()?;
        if weights.layers.is_empty() {
            return Err(EngineError::UnsupportedModel("no encoder layers".into()));
        }
        if engine.max_bucket() > embeddings.max_positions() {
            return Err(EngineError::UnsupportedModel(format!(
                "bucket {} exceeds the {} position embeddings",
                engine.max_bucket(),
                embeddings.max_positions()
            )));
        }
        let mut buckets = engine.buckets.clone();
        buckets.sort_unstable();
        let slots = buckets
            .iter()
            .map(|&b| BucketLayouts::slots_needed(&weights.dims, b))
            .max()
            .unwrap_or(1);
        let params = engine.choose(slots)?;
        if params.max_level() < PIPELINE_DEPTH {
            return Err(EngineError::NotEnoughLevels {
                needed: PIPELINE_DEPTH,
                available: params.max_level(),
            });
        }
        let folded = fold(&weights)?;
        let mut layouts = BTreeMap::new();
        for &b in &buckets {
            layouts.insert(b, BucketLayouts::new(&weights.dims, params.max_slots(), b)?);
        }
        let mut model = Self {
            params,
            engine: EngineParams {
                buckets,
                ..engine.clone()
            },
            weights,
            folded,
            embeddings,
            layouts,
            plans: BTreeMap::new(),
            layer_plans: BTreeMap::new(),
            encoded: Mutex::new(BTreeMap::new()),
            calibrated: None,
        };
        let compact = weight_encoder(&model.params, true);
        let ntt = weight_encoder(&model.params, false);
        // NTT form while the bound `compact bytes × (max_level + 1)` stays within the limit.
        let mut ntt_left = if model.engine.pre_encode {
            model.engine.ntt_weights_max_bytes
        } else {
            0
        };
        for &b in &model.engine.buckets.clone() {
            let mut bucket = model.encode_bucket(&compact, b)?;
            let bound = bucket.plan.weight_bytes * (model.params.max_level() + 1);
            if bound <= ntt_left {
                bucket = model.encode_bucket(&ntt, b)?;
                ntt_left -= bound;
            }
            model.layer_plans.insert(b, bucket.layer_plans);
            model.plans.insert(b, bucket.plan);
            if model.engine.pre_encode {
                model
                    .encoded
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(b, Arc::new(bucket.programs));
            }
        }
        Ok(model)
    }

    /// Encodes every layer of bucket `b` with `enc` and summarizes it.
    fn encode_bucket(&self, enc: &CkksBackend, b: usize) -> Result<EncodedBucket> {
        let mut steps = BTreeSet::new();
        let (mut ks, mut pts, mut bytes) = (0, 0, 0);
        let mut programs = Vec::new();
        let mut layer_plans = Vec::new();
        let masking = self.masking(b)?;
        let shared = Arc::new(encode_shared(
            enc,
            &self.weights,
            self.layouts(b)?,
            &self.params,
            (masking, self.request_scale()),
        )?);
        bytes += shared.heap_bytes();
        pts += shared.t2.n_plaintexts() + shared.t3.n_plaintexts();
        for layer in 0..self.folded.len() {
            let p = self.encode(enc, b, layer, shared.clone())?;
            layer_plans.push(p.plan.clone());
            steps.extend(p.plan.galois_steps());
            ks += p.plan.key_switches();
            pts += p.linear_plaintexts();
            bytes += p.heap_bytes();
            if self.engine.pre_encode {
                programs.push(Arc::new(p));
            }
        }
        let l = &self.layouts[&b];
        let round_ciphertexts = (0..self.folded.len())
            .flat_map(|_| LAYER_ROUNDS.iter())
            .map(|kinds| kinds.iter().map(|k| k.layout(l).n_cts()).sum())
            .collect();
        Ok(EncodedBucket {
            programs,
            layer_plans,
            plan: BucketPlan {
                bucket: b,
                galois_steps: steps.into_iter().collect(),
                key_switches: ks,
                plaintexts: pts,
                weight_bytes: bytes,
                round_ciphertexts,
                attention_values: masking,
            },
        })
    }

    fn encode(
        &self,
        enc: &CkksBackend,
        bucket: usize,
        layer: usize,
        shared: Arc<SharedProgram>,
    ) -> Result<LayerProgram> {
        let l = self.layouts(bucket)?;
        encode_layer(
            enc,
            &self.weights,
            &self.folded[layer],
            l,
            &self.params,
            (shared, self.request_scale()),
        )
    }

    /// The encoded program of `layer` at `bucket` (cached, or encoded now).
    pub(crate) fn layer_program(&self, bucket: usize, layer: usize) -> Result<Arc<LayerProgram>> {
        if let Some(p) = self
            .encoded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&bucket)
        {
            return Ok(p[layer].clone());
        }
        // Not pre-encoded: the shared part too is encoded per layer and dropped after use.
        let enc = weight_encoder(&self.params, true);
        let shared = encode_shared(
            &enc,
            &self.weights,
            self.layouts(bucket)?,
            &self.params,
            (self.masking(bucket)?, self.request_scale()),
        )?;
        Ok(Arc::new(self.encode(
            &enc,
            bucket,
            layer,
            Arc::new(shared),
        )?))
    }

    /// A·V's masking at a compiled bucket: the engine's setting, or [`auto_masking`].
    fn masking(&self, bucket: usize) -> Result<AvMasking> {
        let l = self.layouts(bucket)?;
        Ok(self
            .engine
            .attention_values
            .unwrap_or_else(|| auto_masking(&self.weights.dims, l)))
    }

    /// The largest value the client decrypts on the calibration inputs (when compiled from a
    /// model): the encoding scale leaves room for 16× of it.
    pub fn calibrated_magnitude(&self) -> Option<f64> {
        self.calibrated
    }

    /// The CKKS parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
    /// The scale of every ciphertext the client decrypts (the encoding scale, or lower: see
    /// [`EngineParams::request_log_scale`]).
    pub fn request_scale(&self) -> f64 {
        self.engine.request_scale(self.params.default_scale())
    }
    /// The engine settings (buckets sorted).
    pub fn engine_params(&self) -> &EngineParams {
        &self.engine
    }
    /// Model shapes and constants.
    pub fn dims(&self) -> &ModelDims {
        &self.weights.dims
    }
    /// Number of encoder layers.
    pub fn layers(&self) -> usize {
        self.folded.len()
    }
    /// Client rounds of one inference (4 per layer).
    pub fn rounds(&self) -> usize {
        self.folded.len() * LAYER_ROUNDS.len()
    }
    /// The compiled buckets, ascending.
    pub fn buckets(&self) -> &[usize] {
        &self.engine.buckets
    }
    /// Layouts of a compiled bucket.
    pub fn layouts(&self, bucket: usize) -> Result<&BucketLayouts> {
        self.layouts
            .get(&bucket)
            .ok_or_else(|| EngineError::UnknownBucket {
                bucket,
                available: self.engine.buckets.clone(),
            })
    }
    /// The per-operation plans of every layer at a compiled bucket (key switches, rotation
    /// steps and depth of each operation, in execution order).
    pub fn layer_plans(&self, bucket: usize) -> Result<&[Plan]> {
        self.layer_plans
            .get(&bucket)
            .map(Vec::as_slice)
            .ok_or_else(|| EngineError::UnknownBucket {
                bucket,
                available: self.engine.buckets.clone(),
            })
    }

    /// The level of every layer's input at a compiled bucket ([`input_level`] for its
    /// [`BucketPlan::attention_values`]).
    pub fn input_level(&self, bucket: usize) -> Result<usize> {
        Ok(input_level(
            &self.params,
            self.plan(bucket)?.attention_values,
        ))
    }

    /// The plan summary of a compiled bucket.
    pub fn plan(&self, bucket: usize) -> Result<&BucketPlan> {
        self.plans
            .get(&bucket)
            .ok_or_else(|| EngineError::UnknownBucket {
                bucket,
                available: self.engine.buckets.clone(),
            })
    }
    /// Union of the Galois steps of `buckets` (all compiled buckets if empty).
    pub fn galois_steps(&self, buckets: &[usize]) -> Result<BTreeSet<usize>> {
        let bs: Vec<usize> = if buckets.is_empty() {
            self.engine.buckets.clone()
        } else {
            buckets.to_vec()
        };
        let mut out = BTreeSet::new();
        for b in bs {
            out.extend(self.plan(b)?.galois_steps.iter().copied());
        }
        Ok(out)
    }
    /// What the client needs: parameters, shapes, buckets, Galois steps and the embedding
    /// tables — none of the server's other weights.
    pub fn client_bundle(&self) -> crate::client::ClientBundle {
        crate::client::ClientBundle {
            params: self.params.literal().clone(),
            dims: self.weights.dims.clone(),
            plans: self.plans.values().cloned().collect(),
            embeddings: self.embeddings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_share_one_encoding_of_the_masks_and_the_reciprocal_network() {
        let model = thex_model::synthetic::model(thex_model::synthetic::SMALL, 3).unwrap();
        let engine = EngineParams {
            buckets: vec![16],
            ..Default::default()
        };
        let m = ServerModel::compile(&model, &engine).unwrap();
        assert!(m.layers() >= 2);
        let progs: Vec<_> = (0..m.layers())
            .map(|l| m.layer_program(16, l).unwrap())
            .collect();
        for p in &progs[1..] {
            assert!(Arc::ptr_eq(&p.shared, &progs[0].shared));
        }
        // The bucket's memory counts the shared part once.
        let own: usize = progs.iter().map(|p| p.heap_bytes()).sum();
        let shared = progs[0].shared.heap_bytes();
        assert!(shared > 0);
        assert_eq!(m.plan(16).unwrap().weight_bytes, own + shared);
    }
}
