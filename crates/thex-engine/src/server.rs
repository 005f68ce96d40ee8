//! The server side of the protocol: a state machine over the compiled program, holding only
//! evaluation keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckks::{Ciphertext, Parameters, SeededCiphertext};
use he_linalg::{CkksBackend, CkksPlaintext, OpCounts, PackedMatrix, SlotBackend, scales_match};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::program::{LayerProgram, ServerModel};
use crate::segments::{Outcome, Paused, Segments};
use thex_client::{
    At, EncryptedInput, EncryptedLogits, Error as ProtocolError, EvaluationKeys, Message,
    MessageLimits, NONCE_BYTES, Outgoing, ReluItem, ReluReply, ReluRequest, Step, check_size,
};

type Packed = PackedMatrix<Ciphertext>;

/// The inference in progress, waiting for the client.
struct Running {
    bucket: usize,
    layer: usize,
    round: u32,
    nonce: [u8; NONCE_BYTES],
    prog: Arc<LayerProgram<CkksPlaintext>>,
    paused: Paused<Ciphertext>,
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
    /// The buckets whose rotation keys were checked.
    buckets: Vec<usize>,
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
    at: At,
    what: &str,
) -> Result<Vec<Ciphertext>> {
    if cts.len() != expected {
        return Err(ProtocolError::WrongCount {
            what: format!("ciphertexts of {what}"),
            expected,
            got: cts.len(),
        }
        .into());
    }
    // Expanding a seeded ciphertext regenerates its uniform half: in parallel.
    cts.par_iter()
        .enumerate()
        .map(|(i, c)| {
            let ct = c.expand(params);
            let bad = |problem: String| {
                EngineError::from(ProtocolError::BadCiphertext {
                    what: what.to_string(),
                    index: i,
                    problem,
                })
            };
            if ct.level() != at.level {
                return Err(bad(format!(
                    "level {}, expected a fresh ciphertext at level {}",
                    ct.level(),
                    at.level
                )));
            }
            if !scales_match(ct.scale(), at.scale) {
                return Err(bad(format!(
                    "scale 2^{:.3}, expected 2^{:.3}",
                    ct.scale().log2(),
                    at.scale.log2()
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
        let buckets = if buckets.is_empty() {
            model.buckets().to_vec()
        } else {
            buckets.to_vec()
        };
        Ok(Self {
            model,
            buckets,
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

    /// The round waiting for the client's reply, if any.
    pub fn pending_round(&self) -> Option<u32> {
        self.state.as_ref().map(|r| r.round)
    }

    /// Whether the session takes a client message of this kind now (an input when idle, a
    /// reply while a round is pending): callers check before parsing the message's bytes.
    pub fn accepts(&self, message: Outgoing) -> Result<()> {
        let (got, ok) = match message {
            Outgoing::Input => ("new input", self.state.is_none()),
            Outgoing::Reply => ("ReLU reply", self.state.is_some()),
        };
        if ok {
            return Ok(());
        }
        Err(ProtocolError::UnexpectedMessage {
            got,
            state: self.state_name(),
        }
        .into())
    }

    fn state_name(&self) -> String {
        match &self.state {
            None => "idle (no round is pending)".into(),
            Some(r) => format!("waiting for round {} (layer {})", r.round, r.layer),
        }
    }

    /// The segments of `bucket` on this session's keys, recording taps if asked to.
    fn run_segment<T>(
        &mut self,
        bucket: usize,
        f: impl FnOnce(&mut Segments<'_, CkksBackend>) -> Result<T>,
    ) -> Result<T> {
        let sched = self.model.schedule(bucket)?;
        let recording = self.taps.is_some();
        let taps = &mut self.taps;
        let mut sink = |name: String, value: &Packed| {
            if let Some(t) = taps.as_mut() {
                t.push(Tap {
                    name,
                    value: value.clone(),
                });
            }
        };
        let mut segments = Segments {
            b: &self.backend,
            sched,
            taps: if recording { Some(&mut sink) } else { None },
            blind_bits: self.model.resolved().config.blind_bits,
        };
        f(&mut segments)
    }

    /// Discards the inference in progress, if any (e.g. after the client gave up on it), so
    /// that the session can [`ServerSession::start`] a new one. Keys and timings stay.
    pub fn abort(&mut self) {
        self.state = None;
    }

    /// The exact sizes a client message of this kind may have now: the input of one of the
    /// session's buckets, or the reply to the pending round. Callers refuse a body of another
    /// size before reading it; the session's state is checked first ([`ServerSession::accepts`]).
    pub fn message_sizes(&self, kind: Outgoing) -> Result<Vec<usize>> {
        self.accepts(kind)?;
        let params = self.model.params();
        match &self.state {
            None => self
                .buckets
                .iter()
                .map(|&b| {
                    Ok(EncryptedInput::serialized_len(
                        params,
                        self.model.schedule(b)?,
                    ))
                })
                .collect(),
            Some(run) => {
                let sched = self.model.schedule(run.bucket)?;
                let round = sched.round(run.round).ok_or_else(|| {
                    EngineError::Internal(format!("round {} is pending", run.round))
                })?;
                Ok(vec![ReluReply::serialized_len(params, &round)])
            }
        }
    }

    /// Handles one client message in its byte form: refuses it if the session does not take
    /// this kind now or if its size is not the exact one expected (both before parsing),
    /// parses it within `limits`, then [`ServerSession::start`] or [`ServerSession::resume`].
    pub fn receive(&mut self, kind: Outgoing, bytes: &[u8], limits: MessageLimits) -> Result<Step> {
        let what = match kind {
            Outgoing::Input => "encrypted input",
            Outgoing::Reply => "round reply",
        };
        check_size(what, bytes.len(), &self.message_sizes(kind)?)?;
        let params = self.model.params().clone();
        match kind {
            Outgoing::Input => self.start(EncryptedInput::from_bytes(&params, bytes, limits)?),
            Outgoing::Reply => self.resume(ReluReply::from_bytes(&params, bytes, limits)?),
        }
    }

    /// Starts an inference on an encrypted input. Fails if one is running.
    pub fn start(&mut self, input: EncryptedInput) -> Result<Step> {
        self.accepts(Outgoing::Input)?;
        // A bucket the keys were not checked for would fail deep in the program.
        if !self.buckets.contains(&input.bucket) {
            return Err(ProtocolError::UnknownBucket {
                bucket: input.bucket,
                available: self.buckets.clone(),
            }
            .into());
        }
        let sched = self.model.schedule(input.bucket)?;
        let layout = sched.layouts().hidden.clone();
        let cts = check_fresh(
            self.model.params(),
            input.cts,
            layout.n_cts(),
            sched.input(),
            "input",
        )?;
        self.compute.clear();
        let x = PackedMatrix::new(layout, cts)?;
        self.begin_layer(input.bucket, 0, 1, x)
    }

    /// Layer input → Q, K, V and the softmax request.
    fn begin_layer(&mut self, bucket: usize, layer: usize, round: u32, x: Packed) -> Result<Step> {
        let t0 = Instant::now();
        let prog = self.model.layer_program(bucket, layer)?;
        if !self.model.resolved().config.pre_encode {
            self.compute
                .push((format!("layer{layer}.encode_weights"), t0.elapsed()));
        }
        let t0 = Instant::now();
        let outcome = self.run_segment(bucket, |s| s.attention_scores(&prog, layer, x))?;
        self.compute
            .push((format!("layer{layer}.attention_scores"), t0.elapsed()));
        self.pause(bucket, layer, round, prog, outcome)
    }

    /// Sends a segment's request and waits for the reply (or finishes with the logits).
    fn pause(
        &mut self,
        bucket: usize,
        layer: usize,
        round: u32,
        prog: Arc<LayerProgram<CkksPlaintext>>,
        outcome: Outcome<Ciphertext>,
    ) -> Result<Step> {
        match outcome {
            Outcome::Request(items, paused) => {
                let items = items
                    .into_iter()
                    .map(|(kind, m)| ReluItem {
                        kind,
                        layer,
                        cts: m.into_cts(),
                    })
                    .collect();
                let nonce: [u8; NONCE_BYTES] = ckks::rng::os_seed()[..NONCE_BYTES]
                    .try_into()
                    .expect("a seed is longer than a nonce");
                self.state = Some(Running {
                    bucket,
                    layer,
                    round,
                    nonce,
                    prog,
                    paused,
                });
                Ok(Step::NeedRelu(ReluRequest {
                    round,
                    nonce,
                    items,
                }))
            }
            Outcome::NextLayer(x) => self.begin_layer(bucket, layer + 1, round, x),
            Outcome::Logits(ct) => Ok(Step::Done(EncryptedLogits { bucket, ct })),
        }
    }

    /// Continues with the client's answer to the pending round.
    pub fn resume(&mut self, reply: ReluReply) -> Result<Step> {
        self.accepts(Outgoing::Reply)?;
        let Some(run) = self.state.as_ref() else {
            return Err(EngineError::Internal(
                "a reply is accepted while idle".into(),
            ));
        };
        if reply.round != run.round {
            return Err(ProtocolError::WrongRound {
                got: reply.round,
                expected: run.round,
            }
            .into());
        }
        if reply.nonce != run.nonce {
            return Err(ProtocolError::StaleReply { round: run.round }.into());
        }
        let sched = self.model.schedule(run.bucket)?;
        let round = sched
            .round(run.round)
            .ok_or_else(|| EngineError::Internal(format!("round {} is pending", run.round)))?;
        if reply.items.len() != round.items.len() {
            return Err(ProtocolError::WrongCount {
                what: format!("items in the reply to round {}", run.round),
                expected: round.items.len(),
                got: reply.items.len(),
            }
            .into());
        }
        let mut fresh = Vec::with_capacity(round.items.len());
        for (cts, it) in reply.items.into_iter().zip(&round.items) {
            let what = format!("{:?}", it.kind);
            let n = it.reply_ciphertexts;
            fresh.push(check_fresh(self.model.params(), cts, n, it.reply, &what)?);
        }
        // Validated: the round is consumed whatever happens next.
        let Running {
            bucket,
            layer,
            round,
            prog,
            paused,
            ..
        } = self.state.take().expect("checked above");
        let t0 = Instant::now();
        let result = self
            .run_segment(bucket, |s| s.resume(&prog, layer, paused, fresh))
            .and_then(|(segment, outcome)| {
                self.compute
                    .push((format!("layer{layer}.{segment}"), t0.elapsed()));
                self.pause(bucket, layer, round + 1, prog, outcome)
            });
        if result.is_err() {
            self.state = None;
        }
        result
    }
}
