//! Engine settings and the automatic choice of CKKS parameters.

use ckks::{Parameters, ParametersLiteral, SecretDistribution};
use he_linalg::attention::AvMasking;
use serde::{Deserialize, Serialize};

use crate::blinding::{DEFAULT_BLIND_BITS, MAX_BLIND_BITS};
use crate::error::{EngineError, Result};
use thex_client::Rounds;

/// The default length buckets: sequences are padded up to the next of these.
pub const DEFAULT_BUCKETS: [usize; 3] = [16, 32, 64];

/// The bucket a sequence of `tokens` tokens needs when buckets are chosen per input: the
/// smallest power of two that holds it, at least the smallest default bucket.
pub fn length_bucket(tokens: usize) -> usize {
    tokens.max(DEFAULT_BUCKETS[0]).next_power_of_two()
}

/// How the server program is built and which CKKS parameters it runs on, as the user asks for
/// it; compiling resolves it into a [`crate::ResolvedPlan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineParams {
    /// Length buckets (powers of two) the server compiles for.
    pub buckets: Vec<usize>,
    /// log2 of the encoding scale (also the size of the rescaling primes). Default 36: about
    /// 2^-20 relative precision per round.
    pub log_scale: u32,
    /// log2 of the scale of the ciphertexts the client decrypts (`None`: `log_scale`). With
    /// `log_q0 = 50` and a 2^36 scale the client can decrypt values up to 2^12 (it refuses
    /// larger ones, [`thex_client::Error::OutOfRange`]); [`crate::ServerModel::compile`]
    /// lowers this scale for models whose values need more room. Only the last product before
    /// each decryption carries it (its plaintext's scale is lowered to match): the rest of the
    /// program keeps `log_scale`.
    #[serde(default)]
    pub request_log_scale: Option<u32>,
    /// Bits of the base prime q_0 (headroom above the scale for the decrypted values). Primes
    /// of at most 50 bits keep the NTTs on the fast 52-bit (IFMA) kernels: 60-bit primes made
    /// an inference about 25% slower.
    pub log_q0: u32,
    /// Levels above [`thex_client::PIPELINE_DEPTH`] (and the blinding's): the client decrypts at this level (0 by default: only
    /// q_0 is left; each extra level costs one more prime in every ciphertext and product).
    pub extra_levels: usize,
    /// log2(N); `None` picks the smallest 128-bit secure ring that fits.
    pub log_n: Option<u32>,
    /// Encode every bucket's weights when compiling (`true`), or per inference and drop them
    /// afterwards (`false`: far less memory for large models, encoding time per request).
    pub pre_encode: bool,
    /// Pre-encoded weights are kept in NTT form (every product skips the transform of its
    /// plaintext: BERT-tiny-sized inference about 10% faster) while that takes at most this
    /// many bytes, bounded by `compact bytes × (max_level + 1)` per bucket in order; compact
    /// (up to `level + 1` times smaller) otherwise. 0 keeps every bucket compact.
    pub ntt_weights_max_bytes: usize,
    /// How attention × V keeps each token shift's products to their rows, for every bucket
    /// (`None`: chosen per bucket by [`crate::ServerModel::compile`]). [`AvMasking::ValueTokens`] takes each layer's input
    /// one level above [`AvMasking::WeightRows`]: cheaper attention, dearer Q/K/V projections
    /// and FFN output.
    #[serde(default)]
    pub attention_values: Option<AvMasking>,
    /// Whether the client decrypts blinded values ([`Rounds::Blinded`], two more primes in
    /// the chain) or the activations themselves ([`Rounds::Thex`], the paper's protocol).
    pub rounds: Rounds,
    /// Blinded rounds: bits the random magnitude of each decrypted value spans (its reply
    /// factor lies in `[2^-bits, 1]`, see [`crate::blinding`]); the smallest-factor slots lose
    /// up to this many bits of precision.
    pub blind_bits: u32,
}

/// Default [`EngineParams::ntt_weights_max_bytes`]: 8 GiB.
pub const DEFAULT_NTT_WEIGHTS_MAX_BYTES: usize = 8 << 30;

impl Default for EngineParams {
    fn default() -> Self {
        Self {
            buckets: DEFAULT_BUCKETS.to_vec(),
            log_scale: 36,
            request_log_scale: None,
            log_q0: 50,
            extra_levels: 0,
            log_n: None,
            pre_encode: true,
            ntt_weights_max_bytes: DEFAULT_NTT_WEIGHTS_MAX_BYTES,
            attention_values: None,
            rounds: Rounds::Blinded,
            blind_bits: DEFAULT_BLIND_BITS,
        }
    }
}

impl EngineParams {
    /// Checks the buckets and bit sizes.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.buckets.is_empty() {
            return bad("no length buckets".into());
        }
        for (i, &b) in self.buckets.iter().enumerate() {
            if !b.is_power_of_two() || b < 2 {
                return bad(format!("length bucket {b} is not a power of two >= 2"));
            }
            if self.buckets[..i].contains(&b) {
                return bad(format!("length bucket {b} listed twice"));
            }
        }
        if !(20..=60).contains(&self.log_scale) || self.log_q0 < self.log_scale {
            return bad(format!(
                "log_scale {} / log_q0 {} (need 20..=60 and q0 >= scale)",
                self.log_scale, self.log_q0
            ));
        }
        if let Some(r) = self.request_log_scale
            && !(20..=self.log_scale).contains(&r)
        {
            return bad(format!(
                "request_log_scale {r} (need 20..=log_scale {})",
                self.log_scale
            ));
        }
        if !(1..=MAX_BLIND_BITS).contains(&self.blind_bits) {
            return bad(format!(
                "blind_bits {} (need 1..={MAX_BLIND_BITS})",
                self.blind_bits
            ));
        }
        Ok(())
    }

    /// Largest bucket.
    pub fn max_bucket(&self) -> usize {
        self.buckets.iter().copied().max().unwrap_or(0)
    }

    /// The parameter literal for ring degree 2^`log_n`: `q_0`, then
    /// [`thex_client::PIPELINE_DEPTH`] + 2 for blinded rounds + `extra_levels` primes of `log_scale` bits, two
    /// 50-bit special primes (or `log_q0` bits if larger).
    pub fn literal(&self, log_n: u32) -> ParametersLiteral {
        let levels = self.rounds.depth() + self.extra_levels;
        let mut log_q = vec![self.log_q0];
        log_q.extend(std::iter::repeat_n(self.log_scale, levels));
        let p = self.log_q0.clamp(50, 60);
        ParametersLiteral {
            log_n,
            log_q,
            log_p: vec![p, p],
            log_scale: self.log_scale,
            dnum: 0,
            secret: SecretDistribution::Ternary,
            error_std: 3.2,
        }
    }

    /// The smallest 128-bit secure parameter set with at least `slots_needed` slots (or the
    /// fixed `log_n`).
    pub fn choose(&self, slots_needed: usize) -> Result<Parameters> {
        self.validate()?;
        let candidates: Vec<u32> = match self.log_n {
            Some(l) => vec![l],
            None => (12..=16).collect(),
        };
        let mut reasons = Vec::new();
        for log_n in candidates {
            if (1usize << (log_n - 1)) < slots_needed {
                reasons.push(format!("N=2^{log_n}: {} slots", 1usize << (log_n - 1)));
                continue;
            }
            match Parameters::new(&self.literal(log_n)) {
                Ok(p) => return Ok(p),
                Err(e) => reasons.push(format!("N=2^{log_n}: {e}")),
            }
        }
        Err(EngineError::NoParameters {
            depth: self.rounds.depth() + self.extra_levels,
            slots_needed,
            reason: reasons.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thex_client::PIPELINE_DEPTH;

    #[test]
    fn default_choice_is_n14_with_eight_levels_and_secure() {
        let p = EngineParams::default().choose(2048).unwrap();
        assert_eq!(p.log_n(), 14);
        // THE-X's six levels between rounds, one to blind and one to unblind.
        assert_eq!(p.max_level(), PIPELINE_DEPTH + 2);
        // Every prime fits the 52-bit IFMA NTT kernels.
        assert!(
            p.q_moduli()
                .iter()
                .chain(&p.p_moduli())
                .all(|&q| q < 1 << 50)
        );
        assert!(p.log_qp() <= 438.0, "{}", p.log_qp());
    }

    #[test]
    fn impossible_requests_are_reported() {
        let e = EngineParams {
            log_n: Some(13),
            ..Default::default()
        };
        assert!(matches!(
            e.choose(16),
            Err(EngineError::NoParameters { depth: 8, .. })
        ));
        let e = EngineParams {
            extra_levels: 40,
            ..Default::default()
        };
        assert!(e.choose(16).is_err());
        let e = EngineParams {
            buckets: vec![16, 24],
            ..Default::default()
        };
        assert!(e.validate().is_err());
        // A request scale above the encoding scale, or too small to decode.
        for r in [37, 19] {
            let e = EngineParams {
                request_log_scale: Some(r),
                ..Default::default()
            };
            assert!(e.validate().is_err(), "{r}");
        }
        let e = EngineParams {
            request_log_scale: Some(28),
            ..Default::default()
        };
        assert!(e.validate().is_ok());
    }
}
