//! The client bundle: everything the server publishes for its clients (CKKS parameters, model
//! shapes, per-bucket plans and the embedding tables), and its binary form.

use ckks::{Parameters, ParametersLiteral};
use he_linalg::attention::AvMasking;
use serde::{Deserialize, Serialize};

use crate::embedding::{EmbeddingTables, ModelDims};
use crate::error::{Error, Result};
use crate::schedule::Schedule;
use crate::wire::Cursor;

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
pub const BUNDLE_VERSION: u16 = 3;

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

    /// Reads a bundle, checking every table length against the header's shapes before
    /// allocating it, and the parameters' security.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut cur = Cursor::new(bytes);
        cur.header(BUNDLE_MAGIC, BUNDLE_VERSION, "client bundle")?;
        let len = cur.len64()?;
        let mut b: ClientBundle = serde_json::from_slice(cur.take(len)?)
            .map_err(|e| Error::Malformed(format!("bundle header: {e}")))?;
        Parameters::new(&b.params)?;
        let h = b.embeddings.hidden;
        let vocab = b.embeddings.vocab;
        if h != b.dims.hidden || h == 0 {
            return Err(Error::Malformed(format!(
                "embedding width {h} vs model width {}",
                b.dims.hidden
            )));
        }
        let mut table = |max: usize, exact: bool| -> Result<Vec<f32>> {
            let n = cur.len64()?;
            if n > max || (exact && n != max) || n % h != 0 {
                return Err(Error::Malformed(format!(
                    "embedding table of {n} values (expected {}{max}, a multiple of {h})",
                    if exact { "" } else { "at most " }
                )));
            }
            Ok(cur
                .take(4 * n)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        b.embeddings.word = table(vocab.saturating_mul(h), true)?;
        b.embeddings.position = table(bytes.len() / 4, false)?;
        b.embeddings.token_type = table(h, true)?;
        b.embeddings.ln_gamma = table(h, true)?;
        b.embeddings.ln_beta = table(h, true)?;
        if cur.remaining() != 0 {
            return Err(Error::Malformed(format!(
                "{} trailing bytes after the bundle",
                cur.remaining()
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
        Schedule::for_params(&self.dims, params, (bucket, masking), self.request_scale)
    }
}
