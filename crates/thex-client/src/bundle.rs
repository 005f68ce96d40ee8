//! The client bundle: everything the server publishes for its clients (CKKS parameters, model
//! shapes, per-bucket plans and the embedding tables), and its binary form.

use std::collections::BTreeSet;
use std::fmt::Display;

use ckks::{Parameters, ParametersLiteral};
use he_linalg::attention::AvMasking;
use serde::{Deserialize, Serialize};

use crate::embedding::{EmbeddingTables, ModelDims};
use crate::error::{Error, Result};
use crate::schedule::{Rounds, Schedule};
use crate::wire::{Cursor, MessageLimits};

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
    /// Ciphertexts in each round's request, round by round (the reply carries as many, or
    /// twice as many for the ReLU items of blinded rounds).
    pub round_ciphertexts: Vec<usize>,
    /// How attention · V is masked; sets the layer input level (see [`Schedule`]).
    pub attention_values: AvMasking,
}

/// What the server gives the client once: CKKS parameters, the request scale, model shapes,
/// buckets with their Galois steps and round sizes, and the embedding tables. No other weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientBundle {
    /// CKKS parameters (validated, 128-bit secure, when the session is created).
    pub params: ParametersLiteral,
    /// Scale of every ciphertext the client decrypts.
    pub request_scale: f64,
    /// Whether the server blinds the rounds (the client's reply has two parts per ReLU item).
    pub rounds: Rounds,
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
pub const BUNDLE_VERSION: u16 = 4;
/// Largest JSON header a client reads (real ones take a few kilobytes).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// The error for a bundle field the client refuses.
pub(crate) fn bad_field(field: &str, problem: impl Display) -> Error {
    Error::Malformed(format!("client bundle field {field}: {problem}"))
}

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

    /// Reads a bundle: the header within [`MAX_HEADER_BYTES`], every table length checked
    /// against the header's shapes and the bytes left before allocating it, then
    /// [`ClientBundle::validate`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut cur = Cursor::new(bytes);
        cur.header(BUNDLE_MAGIC, BUNDLE_VERSION, "client bundle")?;
        let len = cur.len64()?;
        if len > MAX_HEADER_BYTES {
            return Err(Error::LimitExceeded {
                what: "client bundle header bytes",
                value: len as u64,
                limit: MAX_HEADER_BYTES as u64,
            });
        }
        let mut b: ClientBundle = serde_json::from_slice(cur.take(len)?)
            .map_err(|e| Error::Malformed(format!("bundle header: {e}")))?;
        let h = b.embeddings.hidden;
        let words = b.embeddings.word_values()?;
        let mut table = |field: &str, max: usize, exact: bool| -> Result<Vec<f32>> {
            let n = cur.len64()?;
            if n > max || (exact && n != max) || n % h != 0 {
                return Err(bad_field(
                    field,
                    format_args!(
                        "table of {n} values (expected {}{max}, a multiple of {h})",
                        if exact { "" } else { "at most " }
                    ),
                ));
            }
            if n > cur.remaining() / 4 {
                return Err(bad_field(
                    field,
                    format_args!("table of {n} values, {} bytes left", cur.remaining()),
                ));
            }
            Ok(cur
                .take(4 * n)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        let word = table("embeddings.word", words, true)?;
        let position = table("embeddings.position", bytes.len() / 4, false)?;
        let token_type = table("embeddings.token_type", h, true)?;
        let ln_gamma = table("embeddings.ln_gamma", h, true)?;
        let ln_beta = table("embeddings.ln_beta", h, true)?;
        if cur.remaining() != 0 {
            return Err(Error::Malformed(format!(
                "{} trailing bytes after the bundle",
                cur.remaining()
            )));
        }
        b.embeddings = EmbeddingTables {
            word,
            position,
            token_type,
            ln_gamma,
            ln_beta,
            ..b.embeddings
        };
        b.validate()?;
        Ok(b)
    }

    /// Checks everything a client computes with and returns the validated (128-bit secure)
    /// parameters: the shapes ([`ModelDims::check`], [`EmbeddingTables::check`], one hidden
    /// width), a finite request scale in `[1, Q]`, distinct power-of-two buckets that fit the
    /// slots, ascending Galois steps in `1..slots` (at most [`MessageLimits::max_galois_keys`]
    /// of the default limits in all), every bucket's schedule with rounds of at most
    /// [`MessageLimits::max_ciphertexts`] ciphertexts, and round sizes equal to the
    /// schedule's. The error names the field.
    pub fn validate(&self) -> Result<Parameters> {
        self.dims.check()?;
        self.embeddings.check()?;
        if self.embeddings.hidden != self.dims.hidden {
            return Err(bad_field(
                "embeddings.hidden",
                format_args!(
                    "{} vs model width dims.hidden {}",
                    self.embeddings.hidden, self.dims.hidden
                ),
            ));
        }
        if self.plans.is_empty() {
            return Err(bad_field("plans", "no length bucket"));
        }
        let params = Parameters::new(&self.params)?;
        let rs = self.request_scale;
        if !(rs.is_finite() && rs >= 1.0 && rs.log2() <= params.log_q()) {
            return Err(bad_field(
                "request_scale",
                format_args!("{rs} (must be finite, in [1, 2^{:.1}])", params.log_q()),
            ));
        }
        let limits = MessageLimits::default();
        let slots = params.max_slots();
        let mut steps = BTreeSet::new();
        for (i, p) in self.plans.iter().enumerate() {
            let field = |name: &str| format!("plans[{i}].{name}");
            if p.bucket < 2 || !p.bucket.is_power_of_two() || p.bucket > slots {
                return Err(bad_field(
                    &field("bucket"),
                    format_args!("{} (must be a power of two in 2..={slots})", p.bucket),
                ));
            }
            if self.plans[..i].iter().any(|o| o.bucket == p.bucket) {
                return Err(bad_field(
                    &field("bucket"),
                    format_args!("{} listed twice", p.bucket),
                ));
            }
            let g = &p.galois_steps;
            if let Some(s) = g.iter().find(|&&s| s == 0 || s >= slots) {
                return Err(bad_field(
                    &field("galois_steps"),
                    format_args!("step {s} outside 1..{slots}"),
                ));
            }
            if g.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad_field(&field("galois_steps"), "not strictly ascending"));
            }
            steps.extend(g.iter().copied());
            if steps.len() > limits.max_galois_keys {
                return Err(bad_field(
                    &field("galois_steps"),
                    format_args!(
                        "more than {} distinct steps in all buckets",
                        limits.max_galois_keys
                    ),
                ));
            }
            let sched = self.schedule(&params, p.bucket)?;
            // Every layer has the same round sizes: the first layer's are compared with each
            // layer's without building every round (up to 4 × 4096 of them). Each layout
            // holds at most `max_ciphertexts` (see `BucketLayouts::new`): no sum overflows.
            let rounds: Vec<_> = (1..=(sched.n_rounds() / sched.layers()) as u32)
                .filter_map(|n| sched.round(n))
                .collect();
            let per_layer: Vec<usize> = rounds
                .iter()
                .map(|r| r.items.iter().map(|it| it.ciphertexts).sum())
                .collect();
            let replies = rounds
                .iter()
                .map(|r| r.items.iter().map(|it| it.reply_ciphertexts).sum());
            if let Some(n) = per_layer
                .iter()
                .copied()
                .chain(replies)
                .find(|&n| n > limits.max_ciphertexts)
            {
                return Err(bad_field(
                    "dims.ffn",
                    format_args!(
                        "a round of {n} ciphertexts at bucket {} (at most {})",
                        p.bucket, limits.max_ciphertexts
                    ),
                ));
            }
            let got = &p.round_ciphertexts;
            if got.len() != sched.n_rounds() {
                return Err(bad_field(
                    &field("round_ciphertexts"),
                    format_args!(
                        "{} rounds, the schedule has {}",
                        got.len(),
                        sched.n_rounds()
                    ),
                ));
            }
            let want = |k: usize| per_layer[k % per_layer.len()];
            if let Some(k) = (0..got.len()).find(|&k| got[k] != want(k)) {
                return Err(bad_field(
                    &field("round_ciphertexts"),
                    format_args!("round {}: {}, the schedule's {}", k + 1, got[k], want(k)),
                ));
            }
        }
        Ok(params)
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
            .ok_or_else(|| Error::UnknownBucket {
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
            .ok_or(Error::SequenceTooLong {
                tokens,
                max: b.last().copied().unwrap_or(0),
            })
    }
    /// The schedule of a compiled bucket under the bundle's (validated) parameters.
    pub fn schedule(&self, params: &Parameters, bucket: usize) -> Result<Schedule> {
        let masking = self.plan(bucket)?.attention_values;
        Schedule::for_params(
            &self.dims,
            params,
            (bucket, masking, self.rounds),
            self.request_scale,
        )
    }
}
