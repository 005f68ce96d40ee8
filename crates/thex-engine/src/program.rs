//! The compiler: folded weights and, per length bucket, the encoded operations of every layer
//! at the levels of the bucket's [`Schedule`], the exact Galois key set and the plan summary.
//!
//! The affine LayerNorms are folded into the neighbouring linear maps (`W₁` takes `γ₁`, `W₂`
//! takes `γ₂`, the classifier both); only `γ₁γ₂ ⊙ S₁` remains a separate plaintext product.
//! `w`, the client's row weight, is 1 for real tokens and 0 for padding, or `1/n` in the last
//! layer, which turns the token sum into THE-X's masked mean pooling without telling the
//! server `n`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ckks::Parameters;
use he_linalg::attention::{AttentionValues, AvMasking, QkScores, RowSplit, row_sums_plan};
use he_linalg::plan::{OpPlan, Plan};
use he_linalg::{
    CkksBackend, CkksPlaintext, ColumnOrder, EncodedLinear, Layout, LinearMethod, LinearSpec,
    Matrix, PlainMatrix, PlaintextSize, SlotBackend,
};

use crate::error::{EngineError, Result};
use crate::params::EngineParams;
use crate::resolve::{Calibration, ResolvedPlan};
use crate::weights::ModelWeights;
use thex_client::{BucketLayouts, BucketPlan, ClientBundle, EmbeddingTables, ModelDims, Schedule};

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
pub(crate) struct SharedProgram<P> {
    pub qk: QkScores<P>,
    pub t1_mul: PlainMatrix<P>,
    pub t1_add: PlainMatrix<P>,
    pub t2: EncodedLinear<P>,
    pub t3: EncodedLinear<P>,
    pub av: AttentionValues<P>,
    /// With [`AvMasking::WeightRows`]: splits the fresh softmax reply `e` by rows (lo/hi, see
    /// [`RowSplit`]) in the level it has to spare above `T(s)`.
    pub split: Option<RowSplit<P>>,
}

impl<P: PlaintextSize> SharedProgram<P> {
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
pub(crate) struct LayerProgram<P> {
    pub q: EncodedLinear<P>,
    pub k: EncodedLinear<P>,
    pub v: EncodedLinear<P>,
    pub shared: Arc<SharedProgram<P>>,
    pub shift: f64,
    pub wo: EncodedLinear<P>,
    pub w1: EncodedLinear<P>,
    pub tail: LayerTail<P>,
    pub plan: Plan,
}

impl<P: PlaintextSize> LayerProgram<P> {
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
pub(crate) enum LayerTail<P> {
    Next {
        w2: EncodedLinear<P>,
        g12: PlainMatrix<P>,
    },
    Logits {
        m1: EncodedLinear<P>,
        m2: EncodedLinear<P>,
        /// Token-sum rotation steps `1, 2, 4, …, bucket/2`.
        steps: Vec<usize>,
        /// `c·Wc + bc` at the start of each label's chunk.
        bias: P,
    },
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

/// A BSGS map of a ciphertext at the encoding scale `delta`; the output at `out_scale`
/// (`None`: the same).
fn bsgs<B: SlotBackend>(
    enc: &B,
    (m, b): (&Matrix, Option<&[f64]>),
    (input, out_order): (&Layout, ColumnOrder),
    (level, delta): (usize, f64),
    out_scale: Option<f64>,
) -> Result<EncodedLinear<B::Pt>> {
    let spec = LinearSpec {
        weights: m,
        bias: b,
        out_order,
        out_scale,
    };
    Ok(EncodedLinear::from_spec(
        enc,
        spec,
        input,
        level,
        delta,
        LinearMethod::Bsgs,
    )?)
}

/// Encodes the parts every layer shares at the levels of `sched`; what the client decrypts
/// (scores, `z₁`, `z₂`) comes out at the request scale.
pub(crate) fn encode_shared<B: SlotBackend>(
    enc: &B,
    w: &ModelWeights,
    sched: &Schedule,
) -> Result<SharedProgram<B::Pt>> {
    let (l, lv) = (sched.layouts(), sched.levels());
    let (delta, request) = (sched.delta(), sched.request_scale());
    let d = &w.dims;
    let factor = d.softmax_scale / (d.head_dim as f64).sqrt();
    let qk = QkScores::with_out_scale(enc, &l.heads, lv.qk, (delta, delta), factor, request)?;

    // Reciprocal network on fresh `e` / `h₁` / `h₂`.
    let (mul, add, t2m, t2b, t3m) = reciprocal_mats(w, l);
    let t1_scale = sched.multiplier_scale(lv.top, delta, request);
    let t1_mul = PlainMatrix::encode(enc, &mul, &l.reciprocal, lv.top, t1_scale)?;
    let t1_add = PlainMatrix::encode(enc, &add, &l.reciprocal, lv.top - 1, request)?;
    let rec = (&l.reciprocal, l.reciprocal.order());
    let t2 = bsgs(
        enc,
        (&t2m, Some(&t2b)),
        rec,
        (lv.reciprocal_reply, delta),
        Some(request),
    )?;
    let t3_bias = vec![w.reciprocal.b3; d.heads * l.bucket];
    let t3 = bsgs(
        enc,
        (&t3m, Some(&t3_bias)),
        (&l.reciprocal, l.scores.order()),
        (lv.top, delta),
        None,
    )?;

    // P = e ⊙ T (e fresh, T one level lower): with row parts, e is split by rows in its
    // spare level first.
    let masking = sched.attention_values();
    let split = match masking {
        AvMasking::WeightRows => Some(RowSplit::new(enc, &l.scores, lv.top, delta)?),
        AvMasking::ValueTokens => None,
    };
    let av = AttentionValues::new(
        enc,
        (&l.scores, &l.heads),
        masking,
        (lv.probs, sched.probs_scale()),
        (lv.values, delta),
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

/// Encodes one layer's own weights at the levels of `sched`; what the client decrypts (`u`,
/// the logits) comes out at the request scale.
pub(crate) fn encode_layer<B: SlotBackend>(
    enc: &B,
    w: &ModelWeights,
    f: &FoldedLayer,
    sched: &Schedule,
    shared: Arc<SharedProgram<B::Pt>>,
) -> Result<LayerProgram<B::Pt>> {
    let (l, lv) = (sched.layouts(), sched.levels());
    let (delta, request) = (sched.delta(), sched.request_scale());
    let lin = |m: &Matrix, b: Option<&[f64]>, input: &Layout, level| {
        bsgs(
            enc,
            (m, b),
            (input, ColumnOrder::Contiguous),
            (level, delta),
            None,
        )
    };
    let to_client = |m: &Matrix, b: Option<&[f64]>, input: &Layout, level| {
        let order = ColumnOrder::Contiguous;
        bsgs(enc, (m, b), (input, order), (level, delta), Some(request))
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
    let [q, k, v]: [EncodedLinear<B::Pt>; 3] =
        EncodedLinear::new_shared(enc, &specs, &l.hidden, lv.input, delta, LinearMethod::Bsgs)?
            .try_into()
            .map_err(|_| EngineError::Internal("Q/K/V projections: not three maps".into()))?;
    let d = &w.dims;
    let wo = lin(&f.wo, Some(&f.bo), &l.heads, lv.context)?;
    let w1 = to_client(&f.w1, Some(&f.b1), &l.hidden, lv.residual)?;

    let (tail, tail_plan) = match &f.tail {
        FoldedTail::Next { w2, g12, c } => {
            let w2 = lin(w2, Some(c), &l.ffn, lv.ffn_reply)?;
            let gm = Matrix::from_fn(l.bucket, d.hidden, |_, j| g12[j]);
            let g_scale = sched.modulus(lv.ffn_reply);
            let g12 = PlainMatrix::encode(enc, &gm, &l.hidden, lv.ffn_reply, g_scale)?;
            let mut p = vec![w2.plan(), OpPlan::plaintext("gamma1*gamma2", 1)];
            p[0].name = format!("FFN out {}", p[0].name);
            (LayerTail::Next { w2, g12 }, p)
        }
        FoldedTail::Logits { m1, m2, bias } => {
            let m1 = to_client(m1, None, &l.ffn, lv.last_reply)?;
            let m2 = to_client(m2, None, &l.hidden, lv.last_reply)?;
            let steps: Vec<usize> = (0..l.bucket.trailing_zeros()).map(|j| 1 << j).collect();
            let mut v = vec![0.0; enc.slots()];
            for (c, b) in bias.iter().enumerate() {
                v[l.logits.position(0, c).1] = *b;
            }
            let bias = enc.encode(&v, sched.logits().level, request)?;
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
    })
}

/// The keyless backend that encodes the server's weights: compact plaintexts (one `i64` per
/// coefficient, transformed to NTT form inside each product) or NTT form (`level + 1` limbs).
fn weight_encoder(params: &Parameters, compact: bool) -> CkksBackend {
    CkksBackend::encoder_only(params).compact_plaintexts(compact)
}

/// Every layer's encoded program at one bucket.
type EncodedLayers = Vec<Arc<LayerProgram<CkksPlaintext>>>;

/// One bucket's encoded layers (empty unless pre-encoded), their plans and the summary.
struct EncodedBucket {
    programs: Vec<Arc<LayerProgram<CkksPlaintext>>>,
    layer_plans: Vec<Plan>,
    plan: BucketPlan,
}

/// The compiled server program. Holds no key: sessions bring their evaluation keys.
pub struct ServerModel {
    params: Parameters,
    resolved: ResolvedPlan,
    weights: ModelWeights,
    folded: Vec<FoldedLayer>,
    embeddings: EmbeddingTables,
    schedules: BTreeMap<usize, Schedule>,
    plans: BTreeMap<usize, BucketPlan>,
    layer_plans: BTreeMap<usize, Vec<Plan>>,
    encoded: Mutex<BTreeMap<usize, Arc<EncodedLayers>>>,
}

impl std::fmt::Debug for ServerModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerModel")
            .field("params", &self.params)
            .field("dims", &self.weights.dims)
            .field("buckets", &self.resolved.config.buckets)
            .field("pre_encode", &self.resolved.config.pre_encode)
            .finish()
    }
}

impl ServerModel {
    /// Compiles a THE-X model (see [`crate::split_model`]): [`ServerModel::resolve`], then
    /// [`ServerModel::compile_plan`].
    pub fn compile(model: &thex_model::ThexModel, config: &EngineParams) -> Result<Self> {
        let (weights, embeddings) = crate::weights::split_model(model)?;
        let plan = Self::resolve_split(model, &weights, &embeddings, config)?;
        Self::build(weights, embeddings, plan)
    }

    /// Resolves `config` for `model` without compiling: the encoding scale is
    /// `config.log_scale`; the ciphertexts the client decrypts may have a lower one: the largest
    /// value the client will decrypt is measured on the plaintext model (random token
    /// sequences of the smallest and largest bucket) and their scale `Δ_r` leaves it 16× below
    /// the client's refusal threshold `q_0/4Δ_r`, down to 2^26; models with larger values get
    /// one extra level instead. A request scale set in `config` is kept if it is lower.
    pub fn resolve(model: &thex_model::ThexModel, config: &EngineParams) -> Result<ResolvedPlan> {
        let (weights, embeddings) = crate::weights::split_model(model)?;
        Self::resolve_split(model, &weights, &embeddings, config)
    }

    fn resolve_split(
        model: &thex_model::ThexModel,
        weights: &ModelWeights,
        embeddings: &EmbeddingTables,
        config: &EngineParams,
    ) -> Result<ResolvedPlan> {
        config.validate()?;
        let lengths: BTreeSet<usize> = [config.buckets.iter().min(), config.buckets.iter().max()]
            .into_iter()
            .flatten()
            .map(|&b| b.min(embeddings.max_positions()))
            .collect();
        let lengths: Vec<usize> = lengths.into_iter().collect();
        let magnitude =
            crate::calibrate::max_decrypted_magnitude(model, weights, embeddings.vocab, &lengths)?;
        let Some(room) = crate::calibrate::fit_headroom(
            config.log_q0,
            config.log_scale,
            config.extra_levels,
            magnitude,
        ) else {
            return Err(EngineError::Config(format!(
                "the client would decrypt values up to {magnitude:.3e}: more than the {}-bit q0 \
                 and {} extra levels leave room for (raise log_q0 or extra_levels)",
                config.log_q0, config.extra_levels
            )));
        };
        let request = config
            .request_log_scale
            .map_or(room.request_log_scale, |r| r.min(room.request_log_scale));
        ResolvedPlan::new(
            config,
            &weights.dims,
            Some(Calibration {
                max_decrypted: magnitude,
            }),
            request,
            room.extra_levels,
        )
    }

    /// Compiles `model` by a plan resolved before (by [`ServerModel::resolve`], or saved from
    /// [`ServerModel::resolved`]): no calibration; the plan must fit the model's shapes.
    pub fn compile_plan(model: &thex_model::ThexModel, plan: &ResolvedPlan) -> Result<Self> {
        let (weights, embeddings) = crate::weights::split_model(model)?;
        plan.check(&weights.dims)?;
        Self::build(weights, embeddings, plan.clone())
    }

    /// Compiles from already extracted weights at the configured scales (no calibration).
    pub fn compile_weights(
        weights: ModelWeights,
        embeddings: EmbeddingTables,
        config: &EngineParams,
    ) -> Result<Self> {
        let plan = ResolvedPlan::new(
            config,
            &weights.dims,
            None,
            config.request_log_scale.unwrap_or(config.log_scale),
            config.extra_levels,
        )?;
        Self::build(weights, embeddings, plan)
    }

    fn build(
        weights: ModelWeights,
        embeddings: EmbeddingTables,
        plan: ResolvedPlan,
    ) -> Result<Self> {
        if weights.layers.is_empty() {
            return Err(EngineError::UnsupportedModel("no encoder layers".into()));
        }
        let max_bucket = plan.config.max_bucket();
        if max_bucket > embeddings.max_positions() {
            return Err(EngineError::Config(format!(
                "bucket {max_bucket} exceeds the {} position embeddings",
                embeddings.max_positions()
            )));
        }
        let params = Parameters::new(&plan.params)?;
        let folded = fold(&weights)?;
        let mut schedules = BTreeMap::new();
        for (&b, &masking) in &plan.attention_values {
            let sched = Schedule::for_params(
                &weights.dims,
                &params,
                (b, masking, plan.config.rounds),
                plan.request_scale(),
            )?;
            schedules.insert(b, sched);
        }
        let mut model = Self {
            params,
            resolved: plan,
            weights,
            folded,
            embeddings,
            schedules,
            plans: BTreeMap::new(),
            layer_plans: BTreeMap::new(),
            encoded: Mutex::new(BTreeMap::new()),
        };
        let compact = weight_encoder(&model.params, true);
        let ntt = weight_encoder(&model.params, false);
        let pre_encode = model.resolved.config.pre_encode;
        // NTT form while the bound `compact bytes × (max_level + 1)` stays within the limit.
        let mut ntt_left = if pre_encode {
            model.resolved.config.ntt_weights_max_bytes
        } else {
            0
        };
        for b in model.buckets().to_vec() {
            let mut bucket = model.encode_bucket(&compact, b)?;
            let bound = bucket.plan.weight_bytes * (model.params.max_level() + 1);
            if bound <= ntt_left {
                bucket = model.encode_bucket(&ntt, b)?;
                ntt_left -= bound;
            }
            model.layer_plans.insert(b, bucket.layer_plans);
            model.plans.insert(b, bucket.plan);
            if pre_encode {
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
        let sched = self.schedule(b)?;
        let shared = Arc::new(encode_shared(enc, &self.weights, sched)?);
        bytes += shared.heap_bytes();
        pts += shared.t2.n_plaintexts() + shared.t3.n_plaintexts();
        for f in &self.folded {
            let p = encode_layer(enc, &self.weights, f, sched, shared.clone())?;
            layer_plans.push(p.plan.clone());
            steps.extend(p.plan.galois_steps());
            ks += p.plan.key_switches();
            pts += p.linear_plaintexts();
            bytes += p.heap_bytes();
            if self.resolved.config.pre_encode {
                programs.push(Arc::new(p));
            }
        }
        let round_ciphertexts = sched
            .rounds()
            .iter()
            .map(|r| r.items.iter().map(|it| it.ciphertexts).sum())
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
                attention_values: sched.attention_values(),
            },
        })
    }

    /// The encoded program of `layer` at `bucket` (cached, or encoded now).
    pub(crate) fn layer_program(
        &self,
        bucket: usize,
        layer: usize,
    ) -> Result<Arc<LayerProgram<CkksPlaintext>>> {
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
        let sched = self.schedule(bucket)?;
        let folded = self.folded.get(layer).ok_or_else(|| {
            EngineError::Internal(format!("layer {layer} of {}", self.folded.len()))
        })?;
        let shared = Arc::new(encode_shared(&enc, &self.weights, sched)?);
        Ok(Arc::new(encode_layer(
            &enc,
            &self.weights,
            folded,
            sched,
            shared,
        )?))
    }

    /// The model's weights.
    pub(crate) fn weights(&self) -> &ModelWeights {
        &self.weights
    }
    /// The folded layers.
    pub(crate) fn folded(&self) -> &[FoldedLayer] {
        &self.folded
    }

    /// The largest value the client decrypts on the calibration inputs (when compiled with a
    /// calibration): the request scale leaves room for 16× of it.
    pub fn calibrated_magnitude(&self) -> Option<f64> {
        self.resolved.calibration.map(|c| c.max_decrypted)
    }
    /// What the configuration resolved to: save it to compile the same program again
    /// ([`ServerModel::compile_plan`]).
    pub fn resolved(&self) -> &ResolvedPlan {
        &self.resolved
    }

    /// The CKKS parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }
    /// The scale of every ciphertext the client decrypts (the encoding scale, or lower: see
    /// [`EngineParams::request_log_scale`]).
    pub fn request_scale(&self) -> f64 {
        self.resolved.request_scale()
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
        self.schedules.values().next().map_or(0, Schedule::n_rounds)
    }
    /// The compiled buckets, ascending.
    pub fn buckets(&self) -> &[usize] {
        &self.resolved.config.buckets
    }
    fn unknown_bucket(&self, bucket: usize) -> EngineError {
        thex_client::Error::UnknownBucket {
            bucket,
            available: self.buckets().to_vec(),
        }
        .into()
    }
    /// The schedule of a compiled bucket: layouts, levels, scales and rounds.
    pub fn schedule(&self, bucket: usize) -> Result<&Schedule> {
        self.schedules
            .get(&bucket)
            .ok_or_else(|| self.unknown_bucket(bucket))
    }
    /// The per-operation plans of every layer at a compiled bucket (key switches, rotation
    /// steps and depth of each operation, in execution order).
    pub fn layer_plans(&self, bucket: usize) -> Result<&[Plan]> {
        self.layer_plans
            .get(&bucket)
            .map(Vec::as_slice)
            .ok_or_else(|| self.unknown_bucket(bucket))
    }

    /// The plan summary of a compiled bucket.
    pub fn plan(&self, bucket: usize) -> Result<&BucketPlan> {
        self.plans
            .get(&bucket)
            .ok_or_else(|| self.unknown_bucket(bucket))
    }
    /// Union of the Galois steps of `buckets` (all compiled buckets if empty).
    pub fn galois_steps(&self, buckets: &[usize]) -> Result<BTreeSet<usize>> {
        let bs: Vec<usize> = if buckets.is_empty() {
            self.buckets().to_vec()
        } else {
            buckets.to_vec()
        };
        let mut out = BTreeSet::new();
        for b in bs {
            out.extend(self.plan(b)?.galois_steps.iter().copied());
        }
        Ok(out)
    }
    /// The Galois elements (ascending) of the rotation keys of `buckets` (all if empty): the
    /// exact key set a client uploads for them.
    pub fn galois_elements(&self, buckets: &[usize]) -> Result<Vec<u64>> {
        let elements: BTreeSet<u64> = self
            .galois_steps(buckets)?
            .into_iter()
            .map(|s| self.params.galois_element(s as i64))
            .collect();
        Ok(elements.into_iter().collect())
    }
    /// What the client needs: parameters, shapes, buckets, Galois steps and the embedding
    /// tables — none of the server's other weights.
    pub fn client_bundle(&self) -> ClientBundle {
        ClientBundle {
            params: self.params.literal().clone(),
            request_scale: self.request_scale(),
            rounds: self.resolved.config.rounds,
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
