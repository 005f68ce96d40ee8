//! [`SlotBackend`] on real CKKS ciphertexts (the `ckks` crate), with the same key-switch
//! accounting as the cleartext evaluator.

use std::collections::BTreeSet;

use ckks::{
    Ciphertext, Decryptor, Encoder, Evaluator, GaloisKeys, KeyGenerator, Parameters, Plaintext,
    RelinKey, SecretKey,
};

use crate::backend::{OpStats, SlotBackend, SlotClient};
use crate::error::{Error, Result};

/// CKKS evaluator with its evaluation keys (and, on the client side, the secret key).
pub struct CkksBackend {
    params: Parameters,
    encoder: Encoder,
    eval: Evaluator,
    rlk: RelinKey,
    gks: Option<GaloisKeys>,
    sk: Option<SecretKey>,
    moduli: Vec<f64>,
    stats: OpStats,
}

impl std::fmt::Debug for CkksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkksBackend")
            .field("params", &self.params)
            .field("has_secret_key", &self.sk.is_some())
            .field(
                "rotation_keys",
                &self.gks.as_ref().map_or(0, |g| g.galois_elements().len()),
            )
            .finish()
    }
}

impl CkksBackend {
    /// A client backend: fresh secret and relinearization keys, no rotation keys yet (see
    /// [`CkksBackend::generate_rotation_keys`]).
    pub fn keygen(params: &Parameters) -> Result<Self> {
        let mut kg = KeyGenerator::new(params);
        let sk = kg.secret_key();
        let rlk = kg.relin_key(&sk)?;
        Ok(Self::from_keys(params, rlk, None, Some(sk)))
    }

    /// A backend from existing keys; without a secret key it is server-only.
    pub fn from_keys(
        params: &Parameters,
        rlk: RelinKey,
        gks: Option<GaloisKeys>,
        sk: Option<SecretKey>,
    ) -> Self {
        Self {
            encoder: Encoder::new(params),
            eval: Evaluator::new(params),
            moduli: params.q_moduli().iter().map(|&q| q as f64).collect(),
            params: params.clone(),
            rlk,
            gks,
            sk,
            stats: OpStats::default(),
        }
    }

    /// Generates Galois keys for exactly `steps` (left rotations), e.g. from
    /// [`crate::Plan::galois_steps`]. Needs the secret key.
    pub fn generate_rotation_keys(&mut self, steps: &BTreeSet<usize>) -> Result<()> {
        let sk = self.sk.as_ref().ok_or(Error::NoSecretKey)?;
        let steps: Vec<i64> = steps.iter().map(|&s| s as i64).collect();
        self.gks = Some(KeyGenerator::new(&self.params).galois_keys(sk, &steps, false)?);
        Ok(())
    }

    /// The parameters.
    pub fn params(&self) -> &Parameters {
        &self.params
    }

    /// The relinearization key.
    pub fn relin_key(&self) -> &RelinKey {
        &self.rlk
    }

    /// The rotation keys, if generated.
    pub fn galois_keys(&self) -> Option<&GaloisKeys> {
        self.gks.as_ref()
    }

    fn gks(&self) -> Result<&GaloisKeys> {
        self.gks
            .as_ref()
            .ok_or_else(|| Error::Unsupported("no rotation keys generated".into()))
    }

    fn full(&self, values: &[f64]) -> Result<Vec<f64>> {
        let slots = self.slots();
        if values.len() > slots {
            return Err(Error::TooManyValues {
                got: values.len(),
                slots,
            });
        }
        let mut v = values.to_vec();
        v.resize(slots, 0.0);
        Ok(v)
    }
}

impl SlotBackend for CkksBackend {
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
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        Ok(self.encoder.encode(&self.full(values)?, level, scale)?)
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
    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.add(a, b)?)
    }
    fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        Ok(self.eval.sub(a, b)?)
    }
    fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        Ok(self.eval.add_assign(a, b)?)
    }
    fn add_plain(&self, a: &Ciphertext, p: &Plaintext) -> Result<Ciphertext> {
        Ok(self.eval.add_plain(a, p)?)
    }
    fn mul_plain(&self, a: &Ciphertext, p: &Plaintext) -> Result<Ciphertext> {
        self.stats.record_pt_mult();
        Ok(self.eval.multiply_plain(a, p)?)
    }
    fn mul_plain_add(&self, acc: &mut Ciphertext, a: &Ciphertext, p: &Plaintext) -> Result<()> {
        self.stats.record_pt_mult();
        // Fused and allocation-free; bit-identical to `mul_plain` followed by `add_assign`.
        Ok(self.eval.multiply_plain_acc(acc, a, p)?)
    }
    fn mul_const(&self, a: &Ciphertext, c: f64, const_scale: f64) -> Result<Ciphertext> {
        self.stats.record_pt_mult();
        let v = (c * const_scale).round();
        if v.abs() < 2f64.powi(62) {
            // Exact integer product; the rounding of c·const_scale is below 2^-40 relative
            // for the scales used here.
            let mut out = self.eval.multiply_int(a, v as i64);
            out.set_scale(a.scale() * const_scale);
            Ok(out)
        } else {
            let pt = self.encode(&vec![c; self.slots()], a.level(), const_scale)?;
            Ok(self.eval.multiply_plain(a, &pt)?)
        }
    }
    fn add_const(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        Ok(self.eval.add_const(a, c)?)
    }
    fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        self.stats.record_ct_mult();
        Ok(self.eval.multiply(a, b)?)
    }
    fn relinearize(&self, a: &Ciphertext) -> Result<Ciphertext> {
        if a.degree() < 2 {
            return Ok(a.clone());
        }
        self.stats.record_relinearization();
        Ok(self.eval.relinearize(a, &self.rlk)?)
    }
    fn rescale(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.stats.record_rescale();
        Ok(self.eval.rescale(a)?)
    }
    fn drop_to_level(&self, a: &Ciphertext, level: usize) -> Result<Ciphertext> {
        if level > a.level() {
            return Err(Error::NotEnoughLevels {
                needed: level,
                available: a.level(),
            });
        }
        Ok(self.eval.drop_level(a, a.level() - level)?)
    }
    fn set_scale(&self, a: &Ciphertext, scale: f64) -> Result<Ciphertext> {
        if scale <= 0.0 || !scale.is_finite() {
            return Err(Error::InvalidParameter {
                name: "scale",
                value: scale.to_string(),
            });
        }
        // Relabelling the scale is exactly the reinterpretation the trait describes.
        let mut out = a.clone();
        out.set_scale(scale);
        Ok(out)
    }
    fn rotate(&self, a: &Ciphertext, step: usize) -> Result<Ciphertext> {
        let step = step % self.slots();
        if step == 0 {
            return Ok(a.clone());
        }
        self.stats.record_rotation(step, false);
        Ok(self.eval.rotate(a, step as i64, self.gks()?)?)
    }
    fn rotate_hoisted(&self, a: &Ciphertext, steps: &[usize]) -> Result<Vec<Ciphertext>> {
        let slots = self.slots();
        let steps: Vec<usize> = steps.iter().map(|s| s % slots).collect();
        for &s in &steps {
            if s != 0 {
                self.stats.record_rotation(s, true);
            }
        }
        let steps: Vec<i64> = steps.iter().map(|&s| s as i64).collect();
        Ok(self.eval.rotate_hoisted(a, &steps, self.gks()?)?)
    }
    fn stats(&self) -> &OpStats {
        &self.stats
    }
}

impl SlotClient for CkksBackend {
    fn encrypt(&self, values: &[f64], level: usize, scale: f64) -> Result<Ciphertext> {
        let sk = self.sk.as_ref().ok_or(Error::NoSecretKey)?;
        let pt = self.encode(values, level, scale)?;
        Ok(Decryptor::new(sk).encrypt(&pt)?)
    }
    fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        let sk = self.sk.as_ref().ok_or(Error::NoSecretKey)?;
        let pt = Decryptor::new(sk).decrypt(ct)?;
        Ok(self.encoder.decode(&pt))
    }
}
