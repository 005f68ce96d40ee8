//! The client: holds the secret key, embeds and encrypts the input, answers the ReLU rounds
//! and decrypts the logits. It checks that every request follows the published schedule, so
//! the server cannot use it to decrypt anything else than the rounds of one inference.

use std::collections::BTreeMap;

use ckks::{Ciphertext, Decryptor, Encoder, KeyGenerator, Parameters, SecretKey, SeededCiphertext};
use he_linalg::attention::key_mask;
use he_linalg::{Matrix, scales_match};
use rayon::prelude::*;
use serde::Serialize;

use crate::bundle::ClientBundle;
use crate::error::{Error, Result};
use crate::schedule::{At, ItemKind, RoundItem, Schedule};
use crate::wire::{
    EncryptedInput, EncryptedLogits, EvaluationKeys, ReluItem, ReluReply, ReluRequest,
};

/// The client's result of one inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientPrediction {
    /// Decrypted logits.
    pub logits: Vec<f64>,
    /// Softmax of the logits.
    pub probabilities: Vec<f64>,
    /// Index of the largest logit.
    pub label_id: usize,
    /// Its name.
    pub label: String,
}

/// One request item as the client decrypted it: what a curious client learns from a round
/// (recorded only after [`ClientSession::record_transcript`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decrypted {
    /// The round (from 1).
    pub round: u32,
    /// The encoder layer.
    pub layer: usize,
    /// The item's kind.
    pub kind: ItemKind,
    /// The decrypted values, unpacked by the item's layout (`bucket × columns`; the scores in
    /// diagonal form, see `he_linalg::attention::scores_to_heads`).
    pub values: Matrix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientState {
    Idle,
    Running {
        bucket: usize,
        tokens: usize,
        next_round: u32,
    },
    /// A server message was refused: nothing more is answered or sent with this key.
    Refused {
        reason: String,
    },
}

/// Where the client's encryption randomness comes from.
enum Randomness {
    /// A fresh OS seed for every ciphertext and key generator.
    #[cfg(feature = "os-rng")]
    Os,
    /// Derived from one seed and a message counter (reproducible runs and tests only).
    Seeded { seed: [u8; 32], messages: u64 },
}

impl Randomness {
    /// The seed of the next message's batch of encryptions (`None`: OS seeds).
    fn next_batch(&mut self) -> Option<[u8; 32]> {
        match self {
            #[cfg(feature = "os-rng")]
            Randomness::Os => None,
            Randomness::Seeded { seed, messages } => {
                *messages += 1;
                Some(derive_seed(seed, b"message", *messages))
            }
        }
    }
}

/// SHA-256 of `seed`, a label and an index: independent seeds from one seed.
fn derive_seed(seed: &[u8; 32], label: &[u8], index: u64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed);
    h.update(label);
    h.update(index.to_le_bytes());
    h.finalize().into()
}

/// The client side of the protocol. Owns the secret key, which never leaves it.
pub struct ClientSession {
    bundle: ClientBundle,
    params: Parameters,
    encoder: Encoder,
    sk: SecretKey,
    schedules: BTreeMap<usize, Schedule>,
    state: ClientState,
    randomness: Randomness,
    transcript: Option<Vec<Decrypted>>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("params", &self.params)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn relu(x: f64) -> f64 {
    x.max(0.0)
}

impl ClientSession {
    /// A client with a fresh secret key (OS randomness) for the bundle's parameters; the
    /// bundle must pass [`ClientBundle::validate`].
    #[cfg(feature = "os-rng")]
    pub fn new(bundle: ClientBundle) -> Result<Self> {
        let params = bundle.validate()?;
        let sk = KeyGenerator::new(&params).secret_key();
        Self::with_randomness(bundle, params, sk, Randomness::Os)
    }

    /// A client whose secret key, evaluation keys and every encryption derive from `seed`:
    /// 32 bytes from a CSPRNG where the OS is not reachable from Rust (a browser's
    /// `crypto.getRandomValues`), or a fixed seed for reproducible runs and tests (anyone who
    /// knows the seed can decrypt).
    pub fn from_seed(bundle: ClientBundle, seed: [u8; 32]) -> Result<Self> {
        let params = bundle.validate()?;
        let sk =
            KeyGenerator::from_seed(&params, derive_seed(&seed, b"secret key", 0)).secret_key();
        Self::with_randomness(bundle, params, sk, Randomness::Seeded { seed, messages: 0 })
    }

    /// A client reusing a stored secret key (see [`ClientSession::secret_key_bytes`]); its
    /// encryptions draw OS randomness.
    #[cfg(feature = "os-rng")]
    pub fn with_secret_key(bundle: ClientBundle, sk: SecretKey) -> Result<Self> {
        let params = bundle.validate()?;
        if sk.params() != &params {
            return Err(Error::Ckks(ckks::Error::ParametersMismatch {
                found: sk.params().id(),
                expected: params.id(),
            }));
        }
        Self::with_randomness(bundle, params, sk, Randomness::Os)
    }

    /// `params`: the bundle's, from [`ClientBundle::validate`]; `sk` made under them.
    fn with_randomness(
        bundle: ClientBundle,
        params: Parameters,
        sk: SecretKey,
        randomness: Randomness,
    ) -> Result<Self> {
        let mut schedules = BTreeMap::new();
        for b in bundle.buckets() {
            schedules.insert(b, bundle.schedule(&params, b)?);
        }
        Ok(Self {
            encoder: Encoder::new(&params),
            params,
            sk,
            schedules,
            state: ClientState::Idle,
            randomness,
            transcript: None,
            bundle,
        })
    }

    /// From now on, keeps every request item this session decrypts (see
    /// [`ClientSession::take_transcript`]): for measuring what the rounds reveal.
    pub fn record_transcript(&mut self) {
        self.transcript.get_or_insert_with(Vec::new);
    }

    /// The items decrypted since the last call (empty unless
    /// [`ClientSession::record_transcript`]).
    pub fn take_transcript(&mut self) -> Vec<Decrypted> {
        self.transcript
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The CKKS parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    /// The bundle this client was made from.
    pub fn bundle(&self) -> &ClientBundle {
        &self.bundle
    }

    /// Tokens of the running inference (`None` when idle).
    pub fn tokens_in_flight(&self) -> Option<usize> {
        match self.state {
            ClientState::Running { tokens, .. } => Some(tokens),
            ClientState::Idle | ClientState::Refused { .. } => None,
        }
    }

    /// The secret key in the `ckks` format, for storage on the client only.
    pub fn secret_key_bytes(&self) -> Vec<u8> {
        self.sk.to_bytes_secret()
    }

    /// Relinearization key and exactly the Galois keys of `buckets` (all if empty).
    pub fn evaluation_keys(&self, buckets: &[usize]) -> Result<EvaluationKeys> {
        let wanted = if buckets.is_empty() {
            self.bundle.buckets()
        } else {
            buckets.to_vec()
        };
        let mut steps = std::collections::BTreeSet::new();
        for b in &wanted {
            let plan = self
                .bundle
                .plans
                .iter()
                .find(|p| p.bucket == *b)
                .ok_or_else(|| Error::UnknownBucket {
                    bucket: *b,
                    available: self.bundle.buckets(),
                })?;
            steps.extend(plan.galois_steps.iter().map(|&s| s as i64));
        }
        let steps: Vec<i64> = steps.into_iter().collect();
        let mut kg = match &self.randomness {
            #[cfg(feature = "os-rng")]
            Randomness::Os => KeyGenerator::new(&self.params),
            Randomness::Seeded { seed, .. } => {
                KeyGenerator::from_seed(&self.params, derive_seed(seed, b"evaluation keys", 0))
            }
        };
        Ok(EvaluationKeys {
            relin: kg.relin_key(&self.sk)?,
            galois: kg.galois_keys(&self.sk, &steps, false)?,
        })
    }

    /// Embeds (plaintext: tables, positions, exact LayerNorm), pads to the smallest bucket and
    /// encrypts token ids. Starts an inference; a running one is abandoned.
    pub fn encrypt_ids(&mut self, ids: &[u32]) -> Result<EncryptedInput> {
        self.check_not_refused()?;
        if ids.is_empty() {
            return Err(Error::Malformed("empty token sequence".into()));
        }
        let bucket = self.bundle.bucket_for(ids.len())?;
        let x = self.bundle.embeddings.embed(ids)?;
        let sched = self.schedule(bucket)?;
        let padded = Matrix::from_fn(bucket, x.cols(), |t, c| {
            if t < x.rows() { x.get(t, c) } else { 0.0 }
        });
        let at = sched.input();
        let packed = sched.layouts().hidden.pack(&padded)?;
        let batch = self.randomness.next_batch();
        let cts = packed
            .iter()
            .enumerate()
            .map(|(i, v)| self.encrypt_fresh(v, at, (batch, i as u64)))
            .collect::<Result<Vec<_>>>()?;
        self.state = ClientState::Running {
            bucket,
            tokens: ids.len(),
            next_round: 1,
        };
        Ok(EncryptedInput { bucket, cts })
    }

    /// The schedule of a bucket of the bundle.
    fn schedule(&self, bucket: usize) -> Result<&Schedule> {
        self.schedules
            .get(&bucket)
            .ok_or_else(|| Error::UnknownBucket {
                bucket,
                available: self.bundle.buckets(),
            })
    }

    /// Encrypts `values` fresh at `at`; the randomness is the OS's, or derived from the batch
    /// seed and the ciphertext's index in it.
    fn encrypt_fresh(
        &self,
        values: &[f64],
        at: At,
        (batch, index): (Option<[u8; 32]>, u64),
    ) -> Result<SeededCiphertext> {
        let pt = self.encoder.encode(values, at.level, at.scale)?;
        let seed = match batch {
            Some(seed) => derive_seed(&seed, b"ciphertext", index),
            None => Self::os_seed()?,
        };
        let mut enc = Decryptor::from_seed(&self.sk, seed);
        Ok(enc.encrypt_seeded(&pt)?)
    }

    /// A fresh seed from the OS (only reached with [`Randomness::Os`]).
    fn os_seed() -> Result<[u8; 32]> {
        #[cfg(feature = "os-rng")]
        {
            Ok(ckks::rng::os_seed())
        }
        #[cfg(not(feature = "os-rng"))]
        {
            Err(Error::Internal(
                "OS randomness requested without the os-rng feature".into(),
            ))
        }
    }

    /// Discards the inference in progress, if any: further requests of it are refused. A
    /// session that refused a server message stays refused.
    pub fn abort(&mut self) {
        if let ClientState::Running { .. } = self.state {
            self.state = ClientState::Idle;
        }
    }

    /// Whether this session refused a server message (then it answers and encrypts nothing
    /// more: a hostile server learns at most one bit per key from a refusal).
    pub fn is_refused(&self) -> bool {
        matches!(self.state, ClientState::Refused { .. })
    }

    fn check_not_refused(&self) -> Result<()> {
        match &self.state {
            ClientState::Refused { reason } => Err(Error::Refused {
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Records a refusal of a server message: every later call fails.
    fn refuse<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && !self.is_refused()
        {
            self.state = ClientState::Refused {
                reason: e.to_string(),
            };
        }
        result
    }

    /// Decrypts one ciphertext under this client's key into its slot values. Refuses values
    /// above a quarter of the modulus over the scale ([`Error::OutOfRange`]): a wrapped
    /// coefficient shifts every slot by about modulus/scale, so real values never get there and
    /// wrapped ones almost surely do.
    pub fn decrypt_slots(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        if ct.slots() != self.params.max_slots() {
            return Err(Error::BadCiphertext {
                what: "decryption".into(),
                index: 0,
                problem: format!("{} slots, expected {}", ct.slots(), self.params.max_slots()),
            });
        }
        let pt = self.sk.decrypt(ct)?;
        let v = self.encoder.decode(&pt);
        let log_q: f64 = self.params.q_moduli()[..=ct.level()]
            .iter()
            .map(|&q| (q as f64).log2())
            .sum();
        let limit = (log_q - 2.0 - ct.scale().log2()).exp2();
        let value = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        if value > limit {
            return Err(Error::OutOfRange {
                value,
                limit,
                level: ct.level(),
            });
        }
        Ok(v)
    }

    fn state_name(&self) -> String {
        match self.state {
            ClientState::Idle => "idle".into(),
            ClientState::Running { next_round, .. } => {
                format!("waiting for round {next_round}")
            }
            ClientState::Refused { .. } => "refused".into(),
        }
    }

    /// Answers a ReLU round: checks it is the next round of the schedule with the expected
    /// items and ciphertext counts, decrypts, applies the item's function (ReLU, power, masks,
    /// row weights) and re-encrypts fresh at the item's reply level and scale ([`RoundItem::reply`]).
    /// Any refusal ends this session for good ([`ClientSession::is_refused`]).
    pub fn answer(&mut self, req: &ReluRequest) -> Result<ReluReply> {
        self.check_not_refused()?;
        let result = self.answer_checked(req);
        self.refuse(result)
    }

    fn answer_checked(&mut self, req: &ReluRequest) -> Result<ReluReply> {
        let ClientState::Running {
            bucket,
            tokens,
            next_round,
        } = self.state
        else {
            return Err(Error::UnexpectedMessage {
                got: "ReLU request",
                state: self.state_name(),
            });
        };
        if req.round != next_round {
            return Err(Error::WrongRound {
                got: req.round,
                expected: next_round,
            });
        }
        let batch = self.randomness.next_batch();
        let sched = self.schedule(bucket)?;
        let round = sched
            .round(req.round)
            .ok_or_else(|| Error::UnexpectedMessage {
                got: "ReLU request after the last round",
                state: self.state_name(),
            })?;
        if req.items.len() != round.items.len() {
            return Err(Error::WrongCount {
                what: format!("items in round {}", req.round),
                expected: round.items.len(),
                got: req.items.len(),
            });
        }
        let layer = round.layer;
        for (i, (it, want)) in req.items.iter().zip(&round.items).enumerate() {
            if it.kind != want.kind || it.layer != layer {
                return Err(Error::WrongItem {
                    index: i,
                    expected: format!("{:?} of layer {layer}", want.kind),
                    got: format!("{:?} of layer {}", it.kind, it.layer),
                });
            }
        }
        let last = layer + 1 == sched.layers();
        let items = req
            .items
            .iter()
            .zip(&round.items)
            .enumerate()
            .map(|(i, (it, want))| {
                let batch = batch.map(|s| derive_seed(&s, b"item", i as u64));
                self.answer_item(it, want, (sched, tokens, last), batch)
            })
            .collect::<Result<Vec<_>>>()?;
        if self.transcript.is_some() {
            let decrypted = req
                .items
                .iter()
                .map(|it| {
                    let slots = it
                        .cts
                        .iter()
                        .map(|ct| self.decrypt_slots(ct))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Decrypted {
                        round: req.round,
                        layer,
                        kind: it.kind,
                        values: it.kind.layout(sched.layouts()).unpack(&slots)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            self.transcript
                .get_or_insert_with(Vec::new)
                .extend(decrypted);
        }
        self.state = ClientState::Running {
            bucket,
            tokens,
            next_round: next_round + 1,
        };
        Ok(ReluReply {
            round: req.round,
            nonce: req.nonce,
            items,
        })
    }

    /// The slot-wise multiplier of an item: 0/1 masks, with `1/tokens` on the last layer's
    /// FFN and residual rows (mean pooling).
    fn item_weights(
        kind: ItemKind,
        sched: &Schedule,
        tokens: usize,
        last: bool,
    ) -> Result<Vec<f64>> {
        let bucket = sched.bucket();
        let layout = kind.layout(sched.layouts());
        let m = match kind {
            ItemKind::Softmax => key_mask(layout, tokens)?,
            _ => {
                let w = match kind {
                    ItemKind::Ffn | ItemKind::Residual if last => 1.0 / tokens as f64,
                    _ => 1.0,
                };
                Matrix::from_fn(
                    bucket,
                    layout.cols(),
                    |t, _| if t < tokens { w } else { 0.0 },
                )
            }
        };
        Ok(layout.pack(&m)?.concat())
    }

    /// One item's reply: every request ciphertext decrypted, the item's function applied with
    /// its row weights and re-encrypted fresh; for a ReLU item of blinded rounds the
    /// ciphertexts of `f(v)` and then those of `f(-v)`.
    fn answer_item(
        &self,
        it: &ReluItem,
        want: &RoundItem,
        (sched, tokens, last): (&Schedule, usize, bool),
        batch: Option<[u8; 32]>,
    ) -> Result<Vec<SeededCiphertext>> {
        if it.cts.len() != want.ciphertexts {
            return Err(Error::WrongCount {
                what: format!("ciphertexts of {:?}", it.kind),
                expected: want.ciphertexts,
                got: it.cts.len(),
            });
        }
        let weights = Self::item_weights(it.kind, sched, tokens, last)?;
        let slots = self.params.max_slots();
        let power = sched.reply_power(it.kind) as i32;
        let f = |x: f64| match it.kind {
            ItemKind::Softmax => relu(x.powi(power)),
            ItemKind::Residual => x,
            _ => relu(x),
        };
        let n = it.cts.len();
        let parts = want.reply_ciphertexts / n.max(1);
        // Ciphertexts are independent: decrypt them in parallel, then apply and re-encrypt
        // each part (the negated values second) in parallel.
        let decrypted = it
            .cts
            .par_iter()
            .enumerate()
            .map(|(i, ct)| {
                check_request(ct, want.request, slots).map_err(|problem| Error::BadCiphertext {
                    what: format!("{:?}", it.kind),
                    index: i,
                    problem,
                })?;
                self.decrypt_slots(ct)
            })
            .collect::<Result<Vec<_>>>()?;
        (0..parts * n)
            .into_par_iter()
            .map(|j| {
                let (part, i) = (j / n, j % n);
                let sign = if part == 0 { 1.0 } else { -1.0 };
                let w = &weights[i * slots..(i + 1) * slots];
                let out: Vec<f64> = decrypted[i]
                    .iter()
                    .zip(w)
                    .map(|(&x, &m)| if m == 0.0 { 0.0 } else { f(sign * x) * m })
                    .collect();
                self.encrypt_fresh(&out, want.reply, (batch, j as u64))
            })
            .collect()
    }

    /// Decrypts the logits after the last round; ends the inference. Any refusal ends this
    /// session for good.
    pub fn decrypt_logits(&mut self, out: &EncryptedLogits) -> Result<ClientPrediction> {
        self.check_not_refused()?;
        let result = self.decrypt_logits_checked(out);
        self.refuse(result)
    }

    fn decrypt_logits_checked(&mut self, out: &EncryptedLogits) -> Result<ClientPrediction> {
        match self.state {
            ClientState::Running {
                bucket, next_round, ..
            } if next_round as usize == self.schedule(bucket)?.n_rounds() + 1 => {
                if out.bucket != bucket {
                    return Err(Error::UnknownBucket {
                        bucket: out.bucket,
                        available: vec![bucket],
                    });
                }
                let sched = self.schedule(bucket)?;
                check_request(&out.ct, sched.logits(), self.params.max_slots()).map_err(
                    |problem| Error::BadCiphertext {
                        what: "logits".into(),
                        index: 0,
                        problem,
                    },
                )?;
                let v = self.decrypt_slots(&out.ct)?;
                let layout = &sched.layouts().logits;
                let logits: Vec<f64> = (0..self.bundle.dims.labels.len())
                    .map(|c| {
                        let (ct, slot) = layout.position(0, c);
                        v[ct * self.params.max_slots() + slot]
                    })
                    .collect();
                self.state = ClientState::Idle;
                prediction(logits, &self.bundle.dims.labels)
            }
            _ => Err(Error::UnexpectedMessage {
                got: "logits",
                state: self.state_name(),
            }),
        }
    }
}

/// Checks a ciphertext from the server against the schedule: degree 1, every slot, its level
/// and scale.
fn check_request(ct: &Ciphertext, want: At, slots: usize) -> std::result::Result<(), String> {
    if ct.degree() != 1 {
        return Err(format!("degree {}", ct.degree()));
    }
    if ct.slots() != slots {
        return Err(format!("{} slots, expected {slots}", ct.slots()));
    }
    if ct.level() != want.level {
        return Err(format!("level {}, expected {}", ct.level(), want.level));
    }
    if !scales_match(ct.scale(), want.scale) {
        return Err(format!(
            "scale 2^{:.3}, expected 2^{:.3}",
            ct.scale().log2(),
            want.scale.log2()
        ));
    }
    Ok(())
}

/// Softmax and argmax of decrypted logits, one per label; other counts and non-finite
/// logits are refused.
pub fn prediction(logits: Vec<f64>, labels: &[String]) -> Result<ClientPrediction> {
    if logits.is_empty() || logits.len() != labels.len() {
        return Err(Error::WrongCount {
            what: "logits (one per label)".into(),
            expected: labels.len(),
            got: logits.len(),
        });
    }
    if let Some(x) = logits.iter().find(|x| !x.is_finite()) {
        return Err(Error::Malformed(format!("logit {x} is not finite")));
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    let label_id = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    Ok(ClientPrediction {
        probabilities: exps.iter().map(|e| e / total).collect(),
        label: labels[label_id].clone(),
        label_id,
        logits,
    })
}
