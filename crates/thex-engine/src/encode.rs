//! A [`SlotBackend`] that can only encode: used to build the server's encoded weights before
//! any client key exists. Its plaintexts are the `ckks` plaintexts that
//! [`he_linalg::CkksBackend`] consumes, so weights encoded here are applied there.

use ckks::{Ciphertext, Encoder, Parameters, Plaintext};
use he_linalg::{OpStats, SlotBackend};

/// Encoding-only backend (no keys); every ciphertext operation is an error.
pub(crate) struct EncodeOnly {
    params: Parameters,
    encoder: Encoder,
    moduli: Vec<f64>,
    stats: OpStats,
}

impl std::fmt::Debug for EncodeOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeOnly")
            .field("params", &self.params)
            .finish()
    }
}

impl EncodeOnly {
    pub(crate) fn new(params: &Parameters) -> Self {
        Self {
            params: params.clone(),
            encoder: Encoder::new(params),
            moduli: params.q_moduli().iter().map(|&q| q as f64).collect(),
            stats: OpStats::default(),
        }
    }
}

fn no_eval<T>() -> he_linalg::Result<T> {
    Err(he_linalg::Error::Unsupported(
        "the encoding backend evaluates nothing".into(),
    ))
}

impl SlotBackend for EncodeOnly {
    type Ct = Ciphertext;
    type Pt = Plaintext;

    fn slots(&self) -> usize {
        self.params.max_slots()
    }
    fn max_level(&self) -> usize {
        self.params.max_level()
    }
    fn default_scale(&self) -> f64 {
        self.params.default_scale()
    }
    fn rescale_factor(&self, level: usize) -> f64 {
        self.moduli[level.min(self.moduli.len() - 1)]
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> he_linalg::Result<Plaintext> {
        let slots = self.slots();
        if values.len() > slots {
            return Err(he_linalg::Error::TooManyValues {
                got: values.len(),
                slots,
            });
        }
        let mut v = values.to_vec();
        v.resize(slots, 0.0);
        Ok(self.encoder.encode(&v, level, scale)?)
    }
    fn level(&self, ct: &Ciphertext) -> usize {
        ct.level()
    }
    fn scale(&self, ct: &Ciphertext) -> f64 {
        ct.scale()
    }
    fn degree(&self, ct: &Ciphertext) -> usize {
        ct.degree()
    }
    fn add(&self, _: &Ciphertext, _: &Ciphertext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn sub(&self, _: &Ciphertext, _: &Ciphertext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn add_plain(&self, _: &Ciphertext, _: &Plaintext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn mul_plain(&self, _: &Ciphertext, _: &Plaintext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn mul_const(&self, _: &Ciphertext, _: f64, _: f64) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn add_const(&self, _: &Ciphertext, _: f64) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn mul(&self, _: &Ciphertext, _: &Ciphertext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn relinearize(&self, _: &Ciphertext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn rescale(&self, _: &Ciphertext) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn drop_to_level(&self, _: &Ciphertext, _: usize) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn set_scale(&self, _: &Ciphertext, _: f64) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn rotate(&self, _: &Ciphertext, _: usize) -> he_linalg::Result<Ciphertext> {
        no_eval()
    }
    fn rotate_hoisted(&self, _: &Ciphertext, _: &[usize]) -> he_linalg::Result<Vec<Ciphertext>> {
        no_eval()
    }
    fn stats(&self) -> &OpStats {
        &self.stats
    }
}
