//! The client: holds the secret key, embeds and encrypts the input, answers the ReLU rounds
//! and decrypts the logits. It checks that every request follows the published schedule, so
//! the server cannot use it to decrypt anything else than the rounds of one inference.

use std::collections::BTreeMap;

use ckks::{
    Ciphertext, Decryptor, Encoder, KeyGenerator, Parameters, ParametersLiteral, SecretKey,
    SeededCiphertext,
};
use he_linalg::Matrix;
use he_linalg::attention::key_mask;
use serde::{Deserialize, Serialize};
use thex_model::BertTokenizer;

use crate::error::{EngineError, Result};
use crate::messages::{
    EncryptedInput, EncryptedLogits, EvaluationKeys, ReluItem, ReluReply, ReluRequest,
};
use rayon::prelude::*;

use crate::program::{BucketLayouts, BucketPlan, ItemKind, input_level, reply_level, round_items};
use crate::weights::{EmbeddingTables, ModelDims};

/// What the server gives the client once: CKKS parameters, model shapes, buckets with their
/// Galois steps and round sizes, and the embedding tables. No other weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientBundle {
    /// CKKS parameters (validated, 128-bit secure, when the session is created).
    pub params: ParametersLiteral,
    /// Model shapes and softmax constants.
    pub dims: ModelDims,
    /// Per length bucket: Galois steps and round sizes.
    pub plans: Vec<BucketPlan>,
    /// The client's embedding tables.
    pub embeddings: EmbeddingTables,
}

/// Magic of a serialized client bundle.
pub const BUNDLE_MAGIC: [u8; 4] = *b"THXB";
/// Version of the client bundle format.
pub const BUNDLE_VERSION: u16 = 2;

impl ClientBundle {
    /// Serializes: magic, version, a JSON header (everything but the embedding tables), then
    /// the tables as little-endian `f32` (word, position, token type, LayerNorm gamma, beta).
    pub fn to_bytes(&self) -> Vec<u8> {
        let e = &self.embeddings;
        let mut header = self.clone();
        for t in [
            &mut header.embeddings.word,
            &mut header.embeddings.position,
            &mut header.embeddings.token_type,
            &mut header.embeddings.ln_gamma,
            &mut header.embeddings.ln_beta,
        ] {
            t.clear();
        }
        let json = serde_json::to_vec(&header).expect("bundle header serializes");
        let tables = [&e.word, &e.position, &e.token_type, &e.ln_gamma, &e.ln_beta];
        let floats: usize = tables.iter().map(|t| t.len()).sum();
        let mut out = Vec::with_capacity(14 + json.len() + 4 * floats + 40);
        out.extend_from_slice(&BUNDLE_MAGIC);
        out.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for t in tables {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            for x in t.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// SHA-256 of [`ClientBundle::to_bytes`], hex: what a client checks a cached bundle by.
    pub fn hash_hex(bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Reads a bundle, checking every table length against the header's shapes before
    /// allocating it, and the parameters' security.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            if bytes.len() - pos < n {
                return Err(EngineError::Malformed(format!(
                    "bundle truncated at offset {pos} ({n} bytes needed)"
                )));
            }
            pos += n;
            Ok(&bytes[pos - n..pos])
        };
        if take(4)? != BUNDLE_MAGIC {
            return Err(EngineError::Malformed(
                "not a client bundle (bad magic)".into(),
            ));
        }
        let version = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes"));
        if version != BUNDLE_VERSION {
            return Err(EngineError::Malformed(format!(
                "bundle version {version}, this build reads {BUNDLE_VERSION}"
            )));
        }
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let json = take(usize::try_from(len).unwrap_or(usize::MAX))?;
        let mut b: ClientBundle = serde_json::from_slice(json)
            .map_err(|e| EngineError::Malformed(format!("bundle header: {e}")))?;
        Parameters::new(&b.params)?;
        let h = b.embeddings.hidden;
        let vocab = b.embeddings.vocab;
        if h != b.dims.hidden || h == 0 {
            return Err(EngineError::Malformed(format!(
                "embedding width {h} vs model width {}",
                b.dims.hidden
            )));
        }
        let mut table = |max: usize, exact: bool| -> Result<Vec<f32>> {
            let n = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max || (exact && n != max) || n % h != 0 {
                return Err(EngineError::Malformed(format!(
                    "embedding table of {n} values (expected {}{max}, a multiple of {h})",
                    if exact { "" } else { "at most " }
                )));
            }
            Ok(take(4 * n)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        let word = table(vocab.saturating_mul(h), true)?;
        let position = table(bytes.len() / 4, false)?;
        let token_type = table(h, true)?;
        let ln_gamma = table(h, true)?;
        let ln_beta = table(h, true)?;
        b.embeddings.word = word;
        b.embeddings.position = position;
        b.embeddings.token_type = token_type;
        b.embeddings.ln_gamma = ln_gamma;
        b.embeddings.ln_beta = ln_beta;
        if pos != bytes.len() {
            return Err(EngineError::Malformed(format!(
                "{} trailing bytes after the bundle",
                bytes.len() - pos
            )));
        }
        Ok(b)
    }

    /// The compiled buckets, ascending.
    pub fn buckets(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.plans.iter().map(|p| p.bucket).collect();
        b.sort_unstable();
        b
    }
    /// The plan of a compiled bucket.
    pub fn plan(&self, bucket: usize) -> Result<&BucketPlan> {
        self.plans
            .iter()
            .find(|p| p.bucket == bucket)
            .ok_or_else(|| EngineError::UnknownBucket {
                bucket,
                available: self.buckets(),
            })
    }
    /// The smallest bucket holding `tokens` tokens.
    pub fn bucket_for(&self, tokens: usize) -> Result<usize> {
        let b = self.buckets();
        b.iter()
            .copied()
            .find(|&x| x >= tokens)
            .ok_or(EngineError::SequenceTooLong {
                tokens,
                max: b.last().copied().unwrap_or(0),
            })
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Idle,
    Running {
        bucket: usize,
        tokens: usize,
        next_round: u32,
    },
}

/// Where the client's encryption randomness comes from.
enum Randomness {
    /// A fresh OS seed for every ciphertext and key generator.
    Os,
    /// Derived from one seed and a message counter (reproducible runs and tests only).
    Seeded { seed: [u8; 32], messages: u64 },
}

impl Randomness {
    /// The seed of the next message's batch of encryptions (`None`: OS seeds).
    fn next_batch(&mut self) -> Option<[u8; 32]> {
        match self {
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
    tokenizer: Option<BertTokenizer>,
    layouts: BTreeMap<usize, BucketLayouts>,
    state: ClientState,
    randomness: Randomness,
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
    /// A client with a fresh secret key (OS randomness) for the bundle's parameters.
    pub fn new(bundle: ClientBundle) -> Result<Self> {
        let params = Parameters::new(&bundle.params)?;
        let sk = KeyGenerator::new(&params).secret_key();
        Self::with_secret_key(bundle, sk)
    }

    /// A deterministic client: its secret key, evaluation keys and every encryption derive
    /// from `seed`. For reproducible runs and tests only: anyone who knows the seed can
    /// decrypt.
    pub fn from_seed(bundle: ClientBundle, seed: [u8; 32]) -> Result<Self> {
        let params = Parameters::new(&bundle.params)?;
        let sk =
            KeyGenerator::from_seed(&params, derive_seed(&seed, b"secret key", 0)).secret_key();
        let mut client = Self::with_secret_key(bundle, sk)?;
        client.randomness = Randomness::Seeded { seed, messages: 0 };
        Ok(client)
    }

    /// A client reusing a stored secret key (see [`ClientSession::secret_key_bytes`]).
    pub fn with_secret_key(bundle: ClientBundle, sk: SecretKey) -> Result<Self> {
        let params = Parameters::new(&bundle.params)?;
        if sk.params() != &params {
            return Err(EngineError::Ckks(ckks::Error::ParametersMismatch {
                found: sk.params().id(),
                expected: params.id(),
            }));
        }
        let mut layouts = BTreeMap::new();
        for b in bundle.buckets() {
            layouts.insert(b, BucketLayouts::new(&bundle.dims, params.max_slots(), b)?);
        }
        Ok(Self {
            encoder: Encoder::new(&params),
            params,
            sk,
            tokenizer: None,
            layouts,
            state: ClientState::Idle,
            randomness: Randomness::Os,
            bundle,
        })
    }

    /// Adds the tokenizer used by [`ClientSession::encrypt_text`].
    pub fn with_tokenizer(mut self, tokenizer: BertTokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
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
            ClientState::Idle => None,
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
                .ok_or_else(|| EngineError::UnknownBucket {
                    bucket: *b,
                    available: self.bundle.buckets(),
                })?;
            steps.extend(plan.galois_steps.iter().map(|&s| s as i64));
        }
        let steps: Vec<i64> = steps.into_iter().collect();
        let mut kg = match &self.randomness {
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

    /// Tokenizes, embeds, pads and encrypts a text.
    pub fn encrypt_text(&mut self, text: &str) -> Result<EncryptedInput> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            EngineError::UnsupportedModel("client has no tokenizer (use with_tokenizer)".into())
        })?;
        let ids = tok.encode(text)?;
        self.encrypt_ids(&ids)
    }

    /// Embeds (plaintext: tables, positions, exact LayerNorm), pads to the smallest bucket and
    /// encrypts token ids. Starts an inference; a running one is abandoned.
    pub fn encrypt_ids(&mut self, ids: &[u32]) -> Result<EncryptedInput> {
        if ids.is_empty() {
            return Err(EngineError::Malformed("empty token sequence".into()));
        }
        let bucket = self.bundle.bucket_for(ids.len())?;
        let x = self.bundle.embeddings.embed(ids)?;
        let layout = &self.layouts[&bucket].hidden;
        let padded = Matrix::from_fn(bucket, x.cols(), |t, c| {
            if t < x.rows() { x.get(t, c) } else { 0.0 }
        });
        let level = self.input_level(bucket)?;
        let batch = self.randomness.next_batch();
        let cts = layout
            .pack(&padded)?
            .iter()
            .enumerate()
            .map(|(i, v)| self.encrypt_fresh(v, level, (batch, i as u64)))
            .collect::<Result<Vec<_>>>()?;
        self.state = ClientState::Running {
            bucket,
            tokens: ids.len(),
            next_round: 1,
        };
        Ok(EncryptedInput { bucket, cts })
    }

    /// The level of the layer inputs at `bucket` (set by its A·V masking).
    fn input_level(&self, bucket: usize) -> Result<usize> {
        Ok(input_level(
            &self.params,
            self.bundle.plan(bucket)?.attention_values,
        ))
    }

    /// Encrypts `values` fresh at `level`; the randomness is the OS's, or derived from the
    /// batch seed and the ciphertext's index in it.
    fn encrypt_fresh(
        &self,
        values: &[f64],
        level: usize,
        (batch, index): (Option<[u8; 32]>, u64),
    ) -> Result<SeededCiphertext> {
        let pt = self
            .encoder
            .encode(values, level, self.params.default_scale())?;
        let mut enc = match batch {
            None => Decryptor::new(&self.sk),
            Some(seed) => Decryptor::from_seed(&self.sk, derive_seed(&seed, b"ciphertext", index)),
        };
        Ok(enc.encrypt_seeded(&pt)?)
    }

    /// Discards the inference in progress, if any: further requests of it are refused.
    pub fn abort(&mut self) {
        self.state = ClientState::Idle;
    }

    /// Decrypts one ciphertext under this client's key into its slot values. Refuses values
    /// above a quarter of the modulus over the scale ([`EngineError::OutOfRange`]): a wrapped
    /// coefficient shifts every slot by about modulus/scale, so real values never get there and
    /// wrapped ones almost surely do.
    pub fn decrypt_slots(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        if ct.slots() != self.params.max_slots() {
            return Err(EngineError::BadCiphertext {
                what: "decryption".into(),
                index: 0,
                problem: format!("{} slots, expected {}", ct.slots(), self.params.max_slots()),
            });
        }
        let pt = Decryptor::new(&self.sk).decrypt(ct)?;
        let v = self.encoder.decode(&pt);
        let log_q: f64 = self.params.q_moduli()[..=ct.level()]
            .iter()
            .map(|&q| (q as f64).log2())
            .sum();
        let limit = (log_q - 2.0 - ct.scale().log2()).exp2();
        let value = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        if value > limit {
            return Err(EngineError::OutOfRange {
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
        }
    }

    /// Answers a ReLU round: checks it is the next round of the schedule with the expected
    /// items and ciphertext counts, decrypts, applies the item's function (ReLU, power, masks,
    /// row weights) and re-encrypts fresh at the item's [`reply_level`].
    pub fn answer(&mut self, req: &ReluRequest) -> Result<ReluReply> {
        let ClientState::Running {
            bucket,
            tokens,
            next_round,
        } = self.state
        else {
            return Err(EngineError::UnexpectedMessage {
                got: "ReLU request",
                state: self.state_name(),
            });
        };
        if req.round != next_round {
            return Err(EngineError::WrongRound {
                got: req.round,
                expected: next_round,
            });
        }
        let layers = self.bundle.dims.layers;
        let (layer, kinds) =
            round_items(layers, req.round).ok_or_else(|| EngineError::UnexpectedMessage {
                got: "ReLU request after the last round",
                state: self.state_name(),
            })?;
        if req.items.len() != kinds.len() {
            return Err(EngineError::WrongCount {
                what: format!("items in round {}", req.round),
                expected: kinds.len(),
                got: req.items.len(),
            });
        }
        for (i, (it, &k)) in req.items.iter().zip(kinds).enumerate() {
            if it.kind != k || it.layer != layer {
                return Err(EngineError::WrongItem {
                    index: i,
                    expected: format!("{k:?} of layer {layer}"),
                    got: format!("{:?} of layer {}", it.kind, it.layer),
                });
            }
        }
        let last = layer + 1 == layers;
        let batch = self.randomness.next_batch();
        let items = req
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let batch = batch.map(|s| derive_seed(&s, b"item", i as u64));
                self.answer_item(it, (bucket, tokens, last), batch)
            })
            .collect::<Result<Vec<_>>>()?;
        self.state = ClientState::Running {
            bucket,
            tokens,
            next_round: next_round + 1,
        };
        Ok(ReluReply {
            round: req.round,
            items,
        })
    }

    /// The slot-wise multiplier of an item: 0/1 masks, with `1/tokens` on the last layer's
    /// FFN and residual rows (mean pooling).
    fn item_weights(
        &self,
        kind: ItemKind,
        bucket: usize,
        tokens: usize,
        last: bool,
    ) -> Result<Vec<f64>> {
        let l = &self.layouts[&bucket];
        let layout = kind.layout(l);
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

    fn answer_item(
        &self,
        it: &ReluItem,
        (bucket, tokens, last): (usize, usize, bool),
        batch: Option<[u8; 32]>,
    ) -> Result<Vec<SeededCiphertext>> {
        let layout = it.kind.layout(&self.layouts[&bucket]);
        if it.cts.len() != layout.n_cts() {
            return Err(EngineError::WrongCount {
                what: format!("ciphertexts of {:?}", it.kind),
                expected: layout.n_cts(),
                got: it.cts.len(),
            });
        }
        let weights = self.item_weights(it.kind, bucket, tokens, last)?;
        let level = reply_level(&self.params, self.input_level(bucket)?, it.kind, last);
        let slots = self.params.max_slots();
        let power = self.bundle.dims.softmax_power as i32;
        // Ciphertexts are independent: decrypt, apply and re-encrypt them in parallel.
        it.cts
            .par_iter()
            .enumerate()
            .map(|(i, ct)| {
                if ct.degree() != 1 {
                    return Err(EngineError::BadCiphertext {
                        what: format!("{:?}", it.kind),
                        index: i,
                        problem: format!("degree {}", ct.degree()),
                    });
                }
                let v = self.decrypt_slots(ct)?;
                let w = &weights[i * slots..(i + 1) * slots];
                let out: Vec<f64> = v
                    .iter()
                    .zip(w)
                    .map(|(&x, &m)| {
                        let y = match it.kind {
                            ItemKind::Softmax => relu(x.powi(power)),
                            ItemKind::Residual => x,
                            _ => relu(x),
                        };
                        if m == 0.0 { 0.0 } else { y * m }
                    })
                    .collect();
                self.encrypt_fresh(&out, level, (batch, i as u64))
            })
            .collect()
    }

    /// Decrypts the logits after the last round; ends the inference.
    pub fn decrypt_logits(&mut self, out: &EncryptedLogits) -> Result<ClientPrediction> {
        let rounds = (self.bundle.dims.layers * crate::program::LAYER_ROUNDS.len()) as u32;
        match self.state {
            ClientState::Running {
                bucket, next_round, ..
            } if next_round == rounds + 1 => {
                if out.bucket != bucket {
                    return Err(EngineError::UnknownBucket {
                        bucket: out.bucket,
                        available: vec![bucket],
                    });
                }
                let v = self.decrypt_slots(&out.ct)?;
                let layout = &self.layouts[&bucket].logits;
                let logits: Vec<f64> = (0..self.bundle.dims.labels.len())
                    .map(|c| {
                        let (ct, slot) = layout.position(0, c);
                        v[ct * self.params.max_slots() + slot]
                    })
                    .collect();
                self.state = ClientState::Idle;
                Ok(prediction(logits, &self.bundle.dims.labels))
            }
            _ => Err(EngineError::UnexpectedMessage {
                got: "logits",
                state: self.state_name(),
            }),
        }
    }
}

/// Softmax and argmax of decrypted logits.
pub fn prediction(logits: Vec<f64>, labels: &[String]) -> ClientPrediction {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    let label_id = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    ClientPrediction {
        probabilities: exps.iter().map(|e| e / total).collect(),
        label: labels.get(label_id).cloned().unwrap_or_default(),
        label_id,
        logits,
    }
}
