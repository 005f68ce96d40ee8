//! The server side of the protocol: a state machine over the compiled program, holding only
//! evaluation keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckks::{Ciphertext, Parameters, SeededCiphertext};
use he_linalg::attention::row_sums;
use he_linalg::{
    CkksBackend, EncodedLinear, OpCounts, PackedMatrix, SlotBackend, ops, scales_match,
};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::messages::{
    EncryptedInput, EncryptedLogits, EvaluationKeys, ReluItem, ReluReply, ReluRequest, Step,
};
use crate::program::{
    BucketLayouts, ItemKind, LayerProgram, LayerTail, ServerModel, decrypt_level, reply_level,
    round_items,
};

type Packed = PackedMatrix<Ciphertext>;

/// Where the server stands inside one inference, waiting for the client.
enum Pending {
    /// Sent `y`; waits for `e`.
    Softmax { x: Packed, v: Packed },
    /// Sent `z₁`; waits for `h₁`.
    Reciprocal1 { x: Packed, v: Packed, e: Packed },
    /// Sent `z₂`; waits for `h₂`.
    Reciprocal2 { x: Packed, v: Packed, e: Packed },
    /// Sent `u` and `S₁`; waits for `ReLU(u)` and the refreshed `S₁`.
    Ffn,
}

struct Running {
    bucket: usize,
    layer: usize,
    round: u32,
    prog: Arc<LayerProgram>,
    pending: Pending,
}

/// A named intermediate value recorded for debugging and tests.
#[derive(Debug, Clone)]
pub struct Tap {
    /// Name, e.g. `"layer0.context"`.
    pub name: String,
    /// The packed value.
    pub value: PackedMatrix<Ciphertext>,
}

/// The server side of one client session: compiled model plus that client's evaluation keys.
pub struct ServerSession {
    model: Arc<ServerModel>,
    backend: CkksBackend,
    state: Option<Running>,
    taps: Option<Vec<Tap>>,
    compute: Vec<(String, Duration)>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("state", &self.state_name())
            .finish_non_exhaustive()
    }
}

fn check_fresh(
    params: &Parameters,
    cts: Vec<SeededCiphertext>,
    expected: usize,
    level: usize,
    what: &str,
) -> Result<Vec<Ciphertext>> {
    if cts.len() != expected {
        return Err(EngineError::WrongCount {
            what: format!("ciphertexts of {what}"),
            expected,
            got: cts.len(),
        });
    }
    // Expanding a seeded ciphertext regenerates its uniform half: in parallel.
    cts.par_iter()
        .enumerate()
        .map(|(i, c)| {
            let ct = c.expand(params);
            let bad = |problem: String| EngineError::BadCiphertext {
                what: what.to_string(),
                index: i,
                problem,
            };
            if ct.level() != level {
                return Err(bad(format!(
                    "level {}, expected a fresh ciphertext at level {level}",
                    ct.level(),
                )));
            }
            if !scales_match(ct.scale(), params.default_scale()) {
                return Err(bad(format!(
                    "scale 2^{:.3}, expected 2^{:.3}",
                    ct.scale().log2(),
                    params.default_scale().log2()
                )));
            }
            if ct.slots() != params.max_slots() {
                return Err(bad(format!(
                    "{} slots, expected {}",
                    ct.slots(),
                    params.max_slots()
                )));
            }
            Ok(ct)
        })
        .collect()
}

impl ServerSession {
    /// A session for one client: checks the keys are for the model's parameters and contain
    /// every rotation key of the compiled buckets the client will use (`buckets`, all if
    /// empty).
    pub fn new(model: Arc<ServerModel>, keys: EvaluationKeys, buckets: &[usize]) -> Result<Self> {
        let params = model.params().clone();
        if keys.relin.params() != &params || keys.galois.params() != &params {
            return Err(EngineError::Ckks(ckks::Error::ParametersMismatch {
                found: keys.galois.params().id(),
                expected: params.id(),
            }));
        }
        let missing: Vec<usize> = model
            .galois_steps(buckets)?
            .into_iter()
            .filter(|&s| !keys.galois.has_rotation(s as i64))
            .collect();
        if !missing.is_empty() {
            return Err(EngineError::MissingRotationKeys { missing });
        }
        let backend = CkksBackend::from_keys(&params, keys.relin, Some(keys.galois), None);
        Ok(Self {
            model,
            backend,
            state: None,
            taps: None,
            compute: Vec::new(),
        })
    }

    /// Records named intermediate values from now on (tests and debugging; costs memory).
    pub fn record_taps(&mut self) {
        self.taps = Some(Vec::new());
    }

    /// The recorded intermediate values (empty unless [`ServerSession::record_taps`]).
    pub fn take_taps(&mut self) -> Vec<Tap> {
        self.taps.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Server time per segment of the last inference (`layer{i}.{segment}`; with
    /// `pre_encode = false` also `layer{i}.encode_weights`).
    pub fn timings(&self) -> &[(String, Duration)] {
        &self.compute
    }

    /// Homomorphic operation counts so far.
    pub fn op_counts(&self) -> OpCounts {
        self.backend.stats().snapshot()
    }

    /// The compiled model.
    pub fn model(&self) -> &Arc<ServerModel> {
        &self.model
    }

    fn state_name(&self) -> String {
        match &self.state {
            None => "idle".into(),
            Some(r) => format!("waiting for round {} (layer {})", r.round, r.layer),
        }
    }

    fn tap(taps: &mut Option<Vec<Tap>>, name: String, value: &Packed) {
        if let Some(t) = taps.as_mut() {
            t.push(Tap {
                name,
                value: value.clone(),
            });
        }
    }

    /// Discards the inference in progress, if any (e.g. after the client gave up on it), so
    /// that the session can [`ServerSession::start`] a new one. Keys and timings stay.
    pub fn abort(&mut self) {
        self.state = None;
    }

    /// Starts an inference on an encrypted input. Fails if one is running.
    pub fn start(&mut self, input: EncryptedInput) -> Result<Step> {
        if self.state.is_some() {
            return Err(EngineError::UnexpectedMessage {
                got: "new input",
                state: self.state_name(),
            });
        }
        let layouts = self.model.layouts(input.bucket)?.clone();
        let params = self.model.params();
        let cts = check_fresh(
            params,
            input.cts,
            layouts.hidden.n_cts(),
            self.model.input_level(input.bucket)?,
            "input",
        )?;
        self.compute.clear();
        let x = PackedMatrix::new(layouts.hidden.clone(), cts)?;
        self.begin_layer(input.bucket, 0, 1, x)
    }

    /// Layer input → Q, K, V and the softmax request.
    fn begin_layer(&mut self, bucket: usize, layer: usize, round: u32, x: Packed) -> Result<Step> {
        let t0 = Instant::now();
        let prog = self.model.layer_program(bucket, layer)?;
        if !self.model.engine_params().pre_encode {
            self.compute
                .push((format!("layer{layer}.encode_weights"), t0.elapsed()));
        }
        let t0 = Instant::now();
        let b = &self.backend;
        Self::tap(&mut self.taps, format!("layer{layer}.input"), &x);
        // Q, K and V share the hoisted baby rotations of X; their outputs are computed in
        // parallel (bit-identical to serial).
        let mut qkv = EncodedLinear::apply_many(b, &[&prog.q, &prog.k, &prog.v], &x)?.into_iter();
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            return Err(he_linalg::Error::Unsupported(
                "internal: Q/K/V projections missing".into(),
            )
            .into());
        };
        // Q·Kᵀ drops Q and K to its level (`program::qk_level`) if they are above it.
        let y = prog.shared.qk.apply(b, &q, &k)?;
        let y = ops::add_const(b, &y, prog.shift)?;
        self.compute
            .push((format!("layer{layer}.attention_scores"), t0.elapsed()));
        let req = self.request(round, layer, vec![(ItemKind::Softmax, y)])?;
        self.state = Some(Running {
            bucket,
            layer,
            round,
            prog,
            pending: Pending::Softmax { x, v },
        });
        Ok(Step::NeedRelu(req))
    }

    /// A round request, every ciphertext dropped to the level the client decrypts at (fewer
    /// limbs to send).
    fn request(
        &self,
        round: u32,
        layer: usize,
        items: Vec<(ItemKind, Packed)>,
    ) -> Result<ReluRequest> {
        let (b, level) = (&self.backend, decrypt_level(self.model.params()));
        let items = items
            .into_iter()
            .map(|(kind, m)| {
                let cts = m
                    .into_cts()
                    .iter()
                    .map(|c| b.drop_to_level(c, level.min(c.level())))
                    .collect::<he_linalg::Result<Vec<_>>>()?;
                Ok(ReluItem { kind, layer, cts })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ReluRequest { round, items })
    }

    /// Continues with the client's answer to the pending round.
    pub fn resume(&mut self, reply: ReluReply) -> Result<Step> {
        let Some(run) = self.state.as_ref() else {
            return Err(EngineError::UnexpectedMessage {
                got: "ReLU reply",
                state: self.state_name(),
            });
        };
        if reply.round != run.round {
            return Err(EngineError::WrongRound {
                got: reply.round,
                expected: run.round,
            });
        }
        let layouts = self.model.layouts(run.bucket)?.clone();
        let (layer, kinds) = round_items(self.model.layers(), run.round).ok_or_else(|| {
            EngineError::UnexpectedMessage {
                got: "ReLU reply",
                state: "past the last round".into(),
            }
        })?;
        if reply.items.len() != kinds.len() {
            return Err(EngineError::WrongCount {
                what: format!("items in the reply to round {}", run.round),
                expected: kinds.len(),
                got: reply.items.len(),
            });
        }
        let mut fresh = Vec::with_capacity(kinds.len());
        for (cts, &k) in reply.items.into_iter().zip(kinds) {
            let layout = k.layout(&layouts);
            let params = self.model.params();
            let last = layer + 1 == self.model.layers();
            let level = reply_level(params, self.model.input_level(run.bucket)?, k, last);
            let cts = check_fresh(params, cts, layout.n_cts(), level, &format!("{k:?}"))?;
            fresh.push(PackedMatrix::new(layout.clone(), cts)?);
        }
        // Validated: the round is consumed whatever happens next.
        let run = self.state.take().expect("checked above");
        let result = self.advance(run, fresh, &layouts);
        if result.is_err() {
            self.state = None;
        }
        result
    }

    fn advance(&mut self, run: Running, mut fresh: Vec<Packed>, l: &BucketLayouts) -> Result<Step> {
        let Running {
            bucket,
            layer,
            round,
            prog,
            pending,
        } = run;
        let b = &self.backend;
        let t0 = Instant::now();
        let next = round + 1;
        let (segment, step, pending) = match pending {
            Pending::Softmax { x, v } => {
                let e = fresh.remove(0);
                let s = row_sums(b, &e)?;
                let s = PackedMatrix::new(
                    l.reciprocal.clone(),
                    vec![s.cts()[0].clone(); l.reciprocal.n_cts()],
                )?;
                let z1 = ops::add_plain(
                    b,
                    &ops::mul_plain(b, &s, &prog.shared.t1_mul)?,
                    &prog.shared.t1_add,
                )?;
                let req = self.request(next, layer, vec![(ItemKind::ReciprocalHidden1, z1)])?;
                ("reciprocal1", req, Pending::Reciprocal1 { x, v, e })
            }
            Pending::Reciprocal1 { x, v, e } => {
                let z2 = prog.shared.t2.apply(b, &fresh.remove(0))?;
                let req = self.request(next, layer, vec![(ItemKind::ReciprocalHidden2, z2)])?;
                ("reciprocal2", req, Pending::Reciprocal2 { x, v, e })
            }
            Pending::Reciprocal2 { x, v, e } => {
                let t = prog.shared.t3.apply(b, &fresh.remove(0))?;
                // P = e ⊙ T, whole or by the row parts of e.
                let p = match &prog.shared.split {
                    Some(split) => split
                        .apply(b, &e)?
                        .iter()
                        .map(|part| ops::mul(b, part, &t))
                        .collect::<he_linalg::Result<Vec<_>>>()?,
                    None => vec![ops::mul(b, &e, &t)?],
                };
                let ctx = prog.shared.av.apply(b, &p, &v)?;
                let y = prog.wo.apply(b, &ctx)?;
                let s1 = ops::add(b, &y, &x)?;
                let u = prog.w1.apply(b, &s1)?;
                Self::tap(&mut self.taps, format!("layer{layer}.reciprocal"), &t);
                if self.taps.is_some() {
                    let mut parts = p.into_iter();
                    if let Some(mut whole) = parts.next() {
                        for part in parts {
                            whole = ops::add(b, &whole, &part)?;
                        }
                        Self::tap(&mut self.taps, format!("layer{layer}.probs"), &whole);
                    }
                }
                Self::tap(&mut self.taps, format!("layer{layer}.context"), &ctx);
                // S₁ has a level to spare above the decrypt level (W₁ consumes it for `u`):
                // its copy for the client takes the request scale there.
                let s1 = if scales_match(prog.request_scale, ops::scale(b, &s1)) {
                    s1
                } else {
                    let c = b.rescale_factor(ops::level(b, &s1)) * prog.request_scale
                        / ops::scale(b, &s1);
                    let cts = s1
                        .cts()
                        .iter()
                        .map(|ct| b.rescale(b.mul_const(ct, 1.0, c)?))
                        .collect::<he_linalg::Result<Vec<_>>>()?;
                    PackedMatrix::new(s1.layout().clone(), cts)?
                };
                let req = self.request(
                    next,
                    layer,
                    vec![(ItemKind::Ffn, u), (ItemKind::Residual, s1)],
                )?;
                ("attention_ffn_in", req, Pending::Ffn)
            }
            Pending::Ffn => {
                let h = fresh.remove(0);
                let s1 = fresh.remove(0);
                match &prog.tail {
                    LayerTail::Next { w2, g12 } => {
                        let out = ops::add(b, &w2.apply(b, &h)?, &ops::mul_plain(b, &s1, g12)?)?;
                        self.compute
                            .push((format!("layer{layer}.ffn_out"), t0.elapsed()));
                        return self.begin_layer(bucket, layer + 1, next, out);
                    }
                    LayerTail::Logits {
                        m1,
                        m2,
                        steps,
                        bias,
                    } => {
                        let per_token = ops::add(b, &m1.apply(b, &h)?, &m2.apply(b, &s1)?)?;
                        let mut acc = per_token.cts()[0].clone();
                        for &s in steps {
                            let r = b.rotate(&acc, s)?;
                            b.add_assign(&mut acc, &r)?;
                        }
                        let ct = b.add_plain(&acc, bias)?;
                        let ct = b.drop_to_level(&ct, decrypt_level(self.model.params()))?;
                        self.compute
                            .push((format!("layer{layer}.logits"), t0.elapsed()));
                        return Ok(Step::Done(EncryptedLogits { bucket, ct }));
                    }
                }
            }
        };
        self.compute
            .push((format!("layer{layer}.{segment}"), t0.elapsed()));
        self.state = Some(Running {
            bucket,
            layer,
            round: next,
            prog,
            pending,
        });
        Ok(Step::NeedRelu(step))
    }
}
