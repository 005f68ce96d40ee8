//! [`SlotBackend`] on real CKKS ciphertexts (the `ckks` crate), with the same key-switch
//! accounting as the cleartext evaluator.

use std::borrow::Cow;
#[cfg(feature = "os-rng")]
use std::collections::BTreeSet;

use ckks::{
    Ciphertext, CompactPlaintext, Encoder, Evaluator, GaloisKeys, Parameters, Plaintext, RelinKey,
    SecretKey,
};
#[cfg(feature = "os-rng")]
use ckks::{Decryptor, KeyGenerator};

#[cfg(feature = "os-rng")]
use crate::backend::SlotClient;
use crate::backend::{OpStats, SlotBackend};
use crate::error::{Error, Result};

/// A plaintext of [`CkksBackend`]: NTT form (`level + 1` limbs of `N` words, fastest
/// products) or compact (`N` integer coefficients, transformed per product; bit-identical
/// results). [`CkksBackend::compact_plaintexts`] chooses what `encode` produces.
#[derive(Debug, Clone, PartialEq)]
pub enum CkksPlaintext {
    /// NTT form.
    Ntt(Plaintext),
    /// Integer coefficients.
    Compact(CompactPlaintext),
}

impl crate::backend::PlaintextSize for CkksPlaintext {
    fn heap_bytes(&self) -> usize {
        CkksPlaintext::heap_bytes(self)
    }
}

impl CkksPlaintext {
    /// Level.
    pub fn level(&self) -> usize {
        match self {
            Self::Ntt(p) => p.level(),
            Self::Compact(p) => p.level(),
        }
    }
    /// Scale.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Ntt(p) => p.scale(),
            Self::Compact(p) => p.scale(),
        }
    }
    /// Bytes of polynomial data held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Ntt(p) => (p.level() + 1) * p.poly().n() * 8,
            Self::Compact(p) => p.heap_bytes(),
        }
    }
    /// The NTT form (borrowed, or expanded from the coefficients).
    pub fn to_ntt(&self, params: &Parameters) -> std::borrow::Cow<'_, Plaintext> {
        match self {
            Self::Ntt(p) => std::borrow::Cow::Borrowed(p),
            Self::Compact(p) => std::borrow::Cow::Owned(p.expand(params)),
        }
    }
}

/// CKKS evaluator with its evaluation keys (and, on the client side, the secret key), or only
/// an encoder ([`CkksBackend::encoder_only`]).
pub struct CkksBackend {
    params: Parameters,
    encoder: Encoder,
    eval: Evaluator,
    rlk: Option<RelinKey>,
    gks: Option<GaloisKeys>,
    sk: Option<SecretKey>,
    moduli: Vec<f64>,
    compact: bool,
    stats: OpStats,
}

impl std::fmt::Debug for CkksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkksBackend")
            .field("params", &self.params)
            .field("has_secret_key", &self.sk.is_some())
            .field("compact_plaintexts", &self.compact)
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
    #[cfg(feature = "os-rng")]
    pub fn keygen(params: &Parameters) -> Result<Self> {
        let mut kg = KeyGenerator::new(params);
        let sk = kg.secret_key();
        let rlk = kg.relin_key(&sk)?;
        Ok(Self::from_keys(params, rlk, None, Some(sk)))
    }

    /// A backend without any key: it encodes (e.g. a server's weights before any client
    /// key exists); every operation that needs a key is an error.
    pub fn encoder_only(params: &Parameters) -> Self {
        Self::build(params, None, None, None)
    }

    /// Chooses what [`SlotBackend::encode`] produces: compact plaintexts (`true`: `N`
    /// coefficients each, for weights held in memory) or NTT form (`false`, the default).
    /// Products with either are bit-identical.
    pub fn compact_plaintexts(mut self, compact: bool) -> Self {
        self.compact = compact;
        self
    }

    /// A backend from existing keys; without a secret key it is server-only.
    pub fn from_keys(
        params: &Parameters,
        rlk: RelinKey,
        gks: Option<GaloisKeys>,
        sk: Option<SecretKey>,
    ) -> Self {
        Self::build(params, Some(rlk), gks, sk)
    }

    fn build(
        params: &Parameters,
        rlk: Option<RelinKey>,
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
            compact: false,
            stats: OpStats::default(),
        }
    }

    /// Generates Galois keys for exactly `steps` (left rotations), e.g. from
    /// [`crate::Plan::galois_steps`]. Needs the secret key.
    #[cfg(feature = "os-rng")]
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

    /// The relinearization key (none for [`CkksBackend::encoder_only`]).
    pub fn relin_key(&self) -> Option<&RelinKey> {
        self.rlk.as_ref()
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
    type Pt = CkksPlaintext;

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
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<CkksPlaintext> {
        let v = self.full(values)?;
        Ok(if self.compact {
            CkksPlaintext::Compact(self.encoder.encode_compact(&v, level, scale)?)
        } else {
            CkksPlaintext::Ntt(self.encoder.encode(&v, level, scale)?)
        })
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
    fn add_plain(&self, a: &Ciphertext, p: &CkksPlaintext) -> Result<Ciphertext> {
        Ok(self.eval.add_plain(a, &p.to_ntt(&self.params))?)
    }
    fn expanded<'a>(&self, p: &'a CkksPlaintext) -> std::borrow::Cow<'a, CkksPlaintext> {
        match p {
            CkksPlaintext::Ntt(_) => std::borrow::Cow::Borrowed(p),
            CkksPlaintext::Compact(c) => {
                std::borrow::Cow::Owned(CkksPlaintext::Ntt(c.expand(&self.params)))
            }
        }
    }
    fn mul_plain(&self, a: &Ciphertext, p: &CkksPlaintext) -> Result<Ciphertext> {
        self.stats.record_pt_mult();
        Ok(match p {
            CkksPlaintext::Ntt(p) => self.eval.multiply_plain(a, p)?,
            CkksPlaintext::Compact(p) => self.eval.multiply_compact(a, p)?,
        })
    }
    fn mul_plain_add(&self, acc: &mut Ciphertext, a: &Ciphertext, p: &CkksPlaintext) -> Result<()> {
        self.stats.record_pt_mult();
        // Fused and allocation-free; bit-identical to `mul_plain` followed by `add_assign`.
        match p {
            CkksPlaintext::Ntt(p) => self.eval.multiply_plain_acc(acc, a, p)?,
            CkksPlaintext::Compact(p) => self.eval.multiply_compact_acc(acc, a, p)?,
        }
        Ok(())
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
            let pt = self
                .encoder
                .encode(&vec![c; self.slots()], a.level(), const_scale)?;
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
    fn mul_add(&self, acc: &mut Ciphertext, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        self.stats.record_ct_mult();
        Ok(self.eval.multiply_acc(acc, a, b)?)
    }
    fn mul_sums(&self, sums: &[Vec<(&Ciphertext, &Ciphertext)>]) -> Result<Vec<Ciphertext>> {
        for pairs in sums {
            for _ in pairs {
                self.stats.record_ct_mult();
            }
        }
        let refs: Vec<&[(&Ciphertext, &Ciphertext)]> = sums.iter().map(Vec::as_slice).collect();
        Ok(self.eval.multiply_sums(&refs)?)
    }
    fn mul_plain_sums(
        &self,
        sums: &[Vec<(&Ciphertext, &CkksPlaintext)>],
    ) -> Result<Vec<Ciphertext>> {
        // Compact plaintexts are transformed here (callers pass expanded ones to share it).
        let ntt: Vec<Vec<(&Ciphertext, Cow<'_, Plaintext>)>> = sums
            .iter()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|&(a, p)| {
                        self.stats.record_pt_mult();
                        match p {
                            CkksPlaintext::Ntt(p) => (a, Cow::Borrowed(p)),
                            CkksPlaintext::Compact(c) => (a, Cow::Owned(c.expand(&self.params))),
                        }
                    })
                    .collect()
            })
            .collect();
        let pairs: Vec<Vec<(&Ciphertext, &Plaintext)>> = ntt
            .iter()
            .map(|v| v.iter().map(|(a, p)| (*a, p.as_ref())).collect())
            .collect();
        let refs: Vec<&[(&Ciphertext, &Plaintext)]> = pairs.iter().map(Vec::as_slice).collect();
        Ok(self.eval.multiply_plain_sums(&refs)?)
    }
    fn relinearize(&self, mut a: Ciphertext) -> Result<Ciphertext> {
        if a.degree() < 2 {
            return Ok(a);
        }
        let rlk = self
            .rlk
            .as_ref()
            .ok_or_else(|| Error::Unsupported("no relinearization key".into()))?;
        self.stats.record_relinearization();
        self.eval.relinearize_assign(&mut a, rlk)?;
        Ok(a)
    }
    fn rescale(&self, mut a: Ciphertext) -> Result<Ciphertext> {
        self.stats.record_rescale();
        self.eval.rescale_assign(&mut a)?;
        Ok(a)
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

#[cfg(feature = "os-rng")]
impl SlotClient for CkksBackend {
    fn encrypt(&self, values: &[f64], level: usize, scale: f64) -> Result<Ciphertext> {
        let sk = self.sk.as_ref().ok_or(Error::NoSecretKey)?;
        let pt = self.encoder.encode(&self.full(values)?, level, scale)?;
        Ok(Decryptor::new(sk).encrypt(&pt)?)
    }
    fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        let sk = self.sk.as_ref().ok_or(Error::NoSecretKey)?;
        let pt = Decryptor::new(sk).decrypt(ct)?;
        Ok(self.encoder.decode(&pt))
    }
}
