//! Parameters: a human-written [`ParametersLiteral`] validated into immutable [`Parameters`]
//! that hold the precomputed context (primes, NTT plans) behind an `Arc`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tfhe_ntt::prime64::Plan;

use crate::arith::{Modulus, ntt_primes};
use crate::error::{Error, Result};

/// Distribution of the secret key coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretDistribution {
    /// Uniform over {-1, 0, 1} (what the HE Standard security table assumes).
    Ternary,
    /// Exactly `h` nonzero coefficients in {-1, 1}. The secure constructor requires `h >= N/2`.
    FixedHammingWeight(usize),
}

/// Parameters as a human writes them. Validate with [`Parameters::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParametersLiteral {
    /// log2 of the ring degree N.
    pub log_n: u32,
    /// Bit sizes of the ciphertext primes q_0, q_1, ..., q_L (q_0 first; rescaling drops from the end).
    pub log_q: Vec<u32>,
    /// Bit sizes of the special primes P used by key switching.
    pub log_p: Vec<u32>,
    /// log2 of the default encoding scale.
    pub log_scale: u32,
    /// Number of key-switching digits; 0 picks `ceil((L+1) / len(log_p))`.
    pub dnum: usize,
    /// Secret key distribution.
    pub secret: SecretDistribution,
    /// Standard deviation of the discrete Gaussian error.
    pub error_std: f64,
}

/// Named parameter sets (all 128-bit secure by the HE Standard table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// N = 2^13, 2 levels at scale 2^40, log QP = 180.
    N13L2,
    /// N = 2^14, 7 levels at scale 2^40, log QP = 430 (compares to TenSEAL `[60, 40 x 7, 60]`).
    N14L7,
    /// N = 2^15, 18 levels at scale 2^40, log QP = 870 (compares to TenSEAL `[60, 40 x 18, 60]`).
    N15L18,
    /// N = 2^16, 38 levels at scale 2^40, log QP = 1720.
    N16L38,
}

impl Preset {
    /// The literal of this preset.
    pub fn literal(self) -> ParametersLiteral {
        let (log_n, levels, log_p, dnum) = match self {
            Preset::N13L2 => (13, 2, vec![50], 3),
            Preset::N14L7 => (14, 7, vec![50, 50], 4),
            Preset::N15L18 => (15, 18, vec![50, 50], 10),
            Preset::N16L38 => (16, 38, vec![50, 50, 50], 13),
        };
        let mut log_q = vec![50];
        log_q.extend(std::iter::repeat_n(40, levels));
        ParametersLiteral {
            log_n,
            log_q,
            log_p,
            log_scale: 40,
            dnum,
            secret: SecretDistribution::Ternary,
            error_std: 3.2,
        }
    }
}

/// Maximum log2(QP) for 128-bit security with a ternary secret (HE Standard, Table 1).
pub fn max_log_qp_128(log_n: u32) -> Option<u32> {
    match log_n {
        10 => Some(27),
        11 => Some(54),
        12 => Some(109),
        13 => Some(218),
        14 => Some(438),
        15 => Some(881),
        16 => Some(1772),
        _ => None,
    }
}

/// Smallest error standard deviation [`Parameters::new`] accepts (HE Standard: σ ≈ 3.19).
pub const MIN_ERROR_STD: f64 = 3.19;

/// Precomputed context shared by every object made under one parameter set.
pub(crate) struct Context {
    pub literal: ParametersLiteral,
    pub log_n: u32,
    pub n: usize,
    /// q_0..q_L followed by p_0..p_{k-1}.
    pub moduli: Vec<Modulus>,
    /// NTT plans in the same order as `moduli`.
    pub plans: Vec<Plan>,
    pub q_count: usize,
    pub p_count: usize,
    /// Primes per key-switching digit.
    pub alpha: usize,
    pub dnum: usize,
    pub scale: f64,
    pub log_qp: f64,
    pub id: u64,
    /// Bit-reversal permutation of `0..N`.
    pub bitrev: Vec<u32>,
}

impl Context {
    /// Index into `moduli` of limb `k` of a polynomial with `nq` q-limbs (then the P limbs).
    #[inline(always)]
    pub fn modulus_index(&self, nq: usize, k: usize) -> usize {
        if k < nq { k } else { self.q_count + (k - nq) }
    }
}

/// Validated, immutable parameters. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Parameters {
    pub(crate) ctx: Arc<Context>,
}

impl std::fmt::Debug for Parameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parameters")
            .field("log_n", &self.ctx.log_n)
            .field("q", &self.q_moduli())
            .field("p", &self.p_moduli())
            .field("dnum", &self.ctx.dnum)
            .field("log_qp", &self.ctx.log_qp)
            .field("id", &format_args!("{:016x}", self.ctx.id))
            .finish()
    }
}

impl PartialEq for Parameters {
    fn eq(&self, other: &Self) -> bool {
        self.ctx.id == other.ctx.id
    }
}

impl Parameters {
    /// Validates a literal, enforcing 128-bit security as the HE Standard's table assumes it:
    /// a uniform ternary secret, error standard deviation at least [`MIN_ERROR_STD`], and log QP
    /// within [`max_log_qp_128`] for the ring degree. Every party that builds keys or
    /// ciphertexts from parameters it was sent goes through this check.
    pub fn new(literal: &ParametersLiteral) -> Result<Self> {
        let max = max_log_qp_128(literal.log_n).ok_or(Error::UnsupportedRingDegree {
            log_n: literal.log_n,
            min: 10,
            max: 16,
        })?;
        if literal.secret != SecretDistribution::Ternary {
            return Err(Error::InsecureParameter {
                name: "secret",
                value: format!("{:?}", literal.secret),
                requirement: "the uniform ternary secret of the HE Standard",
            });
        }
        // NaN is refused too.
        if literal.error_std.is_nan() || literal.error_std < MIN_ERROR_STD {
            return Err(Error::InsecureParameter {
                name: "error_std",
                value: literal.error_std.to_string(),
                requirement: "at least 3.19 (HE Standard)",
            });
        }
        let params = Self::build(literal)?;
        if params.ctx.log_qp > max as f64 {
            return Err(Error::Insecure {
                log_qp: params.ctx.log_qp,
                max,
                log_n: literal.log_n,
            });
        }
        Ok(params)
    }

    /// Validates a literal WITHOUT the security check. For tests and toy examples only.
    pub fn new_insecure(literal: &ParametersLiteral) -> Result<Self> {
        Self::build(literal)
    }

    /// Parameters of a named preset.
    pub fn preset(preset: Preset) -> Self {
        Self::new(&preset.literal()).expect("presets are valid and secure")
    }

    fn build(lit: &ParametersLiteral) -> Result<Self> {
        if !(4..=17).contains(&lit.log_n) {
            return Err(Error::UnsupportedRingDegree {
                log_n: lit.log_n,
                min: 4,
                max: 17,
            });
        }
        if lit.log_q.is_empty() || lit.log_p.is_empty() {
            return Err(Error::EmptyModulusChain {
                q: lit.log_q.len(),
                p: lit.log_p.len(),
            });
        }
        for &bits in lit.log_q.iter().chain(&lit.log_p) {
            if !(20..=60).contains(&bits) {
                return Err(Error::UnsupportedPrimeSize {
                    bits,
                    min: 20,
                    max: 60,
                });
            }
        }
        if !(1..=120).contains(&lit.log_scale) {
            return Err(Error::InvalidParameter {
                name: "log_scale",
                value: lit.log_scale.to_string(),
            });
        }
        if !(lit.error_std > 0.0 && lit.error_std <= 64.0) {
            return Err(Error::InvalidParameter {
                name: "error_std",
                value: lit.error_std.to_string(),
            });
        }
        let n = 1usize << lit.log_n;
        if let SecretDistribution::FixedHammingWeight(h) = lit.secret
            && (h == 0 || h > n)
        {
            return Err(Error::InvalidParameter {
                name: "secret Hamming weight",
                value: h.to_string(),
            });
        }
        let q_count = lit.log_q.len();
        let p_count = lit.log_p.len();
        if lit.dnum > q_count {
            return Err(Error::InvalidParameter {
                name: "dnum",
                value: lit.dnum.to_string(),
            });
        }
        let dnum = if lit.dnum == 0 {
            q_count.div_ceil(p_count)
        } else {
            lit.dnum
        };
        let alpha = q_count.div_ceil(dnum);
        // Normalize so that no digit is empty.
        let dnum = q_count.div_ceil(alpha);

        // Prime generation: q_0 and the special primes are the largest primes below 2^bits;
        // the scaling primes q_1..q_L alternate just above/below 2^bits to keep scales stable.
        let two_n = 2 * n as u64;
        let mut all = vec![0u64; q_count + p_count];
        // Group requests by (bits, below-only) so each group is searched once.
        let mut groups: Vec<(u32, bool, Vec<usize>)> = Vec::new();
        let requests = lit
            .log_q
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, i == 0 || b >= 50, i));
        let requests = requests.chain(
            lit.log_p
                .iter()
                .enumerate()
                .map(|(j, &b)| (b, true, q_count + j)),
        );
        for (bits, below, slot) in requests {
            match groups.iter_mut().find(|g| g.0 == bits && g.1 == below) {
                Some(g) => g.2.push(slot),
                None => groups.push((bits, below, vec![slot])),
            }
        }
        let mut chosen: Vec<u64> = Vec::new();
        for (bits, below, slots) in groups {
            let wanted = slots.len();
            let ps = ntt_primes(bits, two_n, wanted, below, &chosen)
                .ok_or(Error::NotEnoughPrimes { bits, wanted, n })?;
            for (slot, p) in slots.into_iter().zip(ps) {
                all[slot] = p;
                chosen.push(p);
            }
        }

        let moduli: Vec<Modulus> = all.iter().map(|&q| Modulus::new(q)).collect();
        let plans = all
            .iter()
            .map(|&q| {
                Plan::try_new(n, q).ok_or(Error::InvalidParameter {
                    name: "NTT plan",
                    value: q.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let log_qp = all.iter().map(|&q| (q as f64).log2()).sum();

        let mut h = Sha256::new();
        h.update(b"thex-ckks-params-v1");
        h.update(lit.log_n.to_le_bytes());
        for q in &all {
            h.update(q.to_le_bytes());
        }
        h.update((q_count as u64).to_le_bytes());
        h.update((dnum as u64).to_le_bytes());
        h.update(lit.log_scale.to_le_bytes());
        h.update(lit.error_std.to_le_bytes());
        match lit.secret {
            SecretDistribution::Ternary => h.update([0u8]),
            SecretDistribution::FixedHammingWeight(w) => {
                h.update([1u8]);
                h.update((w as u64).to_le_bytes());
            }
        }
        let digest = h.finalize();
        let id = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));

        let bits = lit.log_n;
        let bitrev = (0..n as u32)
            .map(|i| {
                if bits == 0 {
                    0
                } else {
                    i.reverse_bits() >> (32 - bits)
                }
            })
            .collect();

        let mut literal = lit.clone();
        literal.dnum = dnum;
        Ok(Self {
            ctx: Arc::new(Context {
                literal,
                log_n: lit.log_n,
                n,
                moduli,
                plans,
                q_count,
                p_count,
                alpha,
                dnum,
                scale: 2f64.powi(lit.log_scale as i32),
                log_qp,
                id,
                bitrev,
            }),
        })
    }

    /// The literal these parameters were built from (with `dnum` resolved).
    pub fn literal(&self) -> &ParametersLiteral {
        &self.ctx.literal
    }
    /// Ring degree N.
    pub fn n(&self) -> usize {
        self.ctx.n
    }
    /// log2(N).
    pub fn log_n(&self) -> u32 {
        self.ctx.log_n
    }
    /// Maximum number of slots, N/2.
    pub fn max_slots(&self) -> usize {
        self.ctx.n / 2
    }
    /// Highest level L (fresh ciphertexts); level l has l+1 primes.
    pub fn max_level(&self) -> usize {
        self.ctx.q_count - 1
    }
    /// The ciphertext primes q_0..q_L.
    pub fn q_moduli(&self) -> Vec<u64> {
        self.ctx.moduli[..self.ctx.q_count]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// The special primes used by key switching.
    pub fn p_moduli(&self) -> Vec<u64> {
        self.ctx.moduli[self.ctx.q_count..]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// Number of key-switching digits.
    pub fn dnum(&self) -> usize {
        self.ctx.dnum
    }
    /// Default encoding scale 2^log_scale.
    pub fn default_scale(&self) -> f64 {
        self.ctx.scale
    }
    /// log2 of the product of all primes (Q times P).
    pub fn log_qp(&self) -> f64 {
        self.ctx.log_qp
    }
    /// log2 of Q at the top level.
    pub fn log_q(&self) -> f64 {
        self.q_moduli().iter().map(|&q| (q as f64).log2()).sum()
    }
    /// A 64-bit identifier of these parameters (hash of everything that defines them).
    pub fn id(&self) -> u64 {
        self.ctx.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_secure_and_distinct_primes() {
        for p in [Preset::N13L2, Preset::N14L7, Preset::N15L18, Preset::N16L38] {
            let params = Parameters::preset(p);
            let lit = p.literal();
            assert!(params.log_qp() <= max_log_qp_128(lit.log_n).unwrap() as f64);
            let mut all = params.q_moduli();
            all.extend(params.p_moduli());
            let two_n = 2 * params.n() as u64;
            for (i, &q) in all.iter().enumerate() {
                assert!(crate::arith::is_prime(q) && q % two_n == 1 && q < 1 << 50);
                assert!(!all[..i].contains(&q));
            }
            assert_eq!(params.max_level(), lit.log_q.len() - 1);
        }
        let p14 = Parameters::preset(Preset::N14L7);
        assert_eq!((p14.max_level(), p14.dnum()), (7, 4));
        assert!((p14.log_qp() - 430.0).abs() < 0.5);
    }

    #[test]
    fn security_is_enforced() {
        let mut lit = Preset::N14L7.literal();
        lit.log_q.push(40);
        match Parameters::new(&lit) {
            Err(Error::Insecure {
                max: 438,
                log_n: 14,
                log_qp,
            }) => assert!(log_qp > 438.0),
            other => panic!("expected Insecure, got {other:?}"),
        }
        assert!(Parameters::new_insecure(&lit).is_ok());
        lit.log_n = 9;
        assert!(matches!(
            Parameters::new(&lit),
            Err(Error::UnsupportedRingDegree { log_n: 9, .. })
        ));
        // Every secret other than the ternary one, and any σ below 3.19, is refused by the
        // secure constructor (a tiny σ makes keys noiseless: the secret falls out of b + a·s).
        for h in [64, 1 << 13, 1 << 14] {
            let mut sparse = Preset::N14L7.literal();
            sparse.secret = SecretDistribution::FixedHammingWeight(h);
            assert!(matches!(
                Parameters::new(&sparse),
                Err(Error::InsecureParameter { name: "secret", .. })
            ));
            assert!(Parameters::new_insecure(&sparse).is_ok());
        }
        for sigma in [1e-9, 0.0, 3.18, f64::NAN, -3.2] {
            let mut l = Preset::N14L7.literal();
            l.error_std = sigma;
            assert!(
                matches!(
                    Parameters::new(&l),
                    Err(Error::InsecureParameter {
                        name: "error_std",
                        ..
                    })
                ),
                "{sigma}"
            );
        }
        let mut l = Preset::N14L7.literal();
        l.error_std = MIN_ERROR_STD;
        assert!(Parameters::new(&l).is_ok());
    }

    #[test]
    fn invalid_literals_are_rejected() {
        let base = Preset::N13L2.literal();
        let mut l = base.clone();
        l.log_p.clear();
        assert!(matches!(
            Parameters::new(&l),
            Err(Error::EmptyModulusChain { q: 3, p: 0 })
        ));
        let mut l = base.clone();
        l.log_q[1] = 70;
        assert!(matches!(
            Parameters::new(&l),
            Err(Error::UnsupportedPrimeSize { bits: 70, .. })
        ));
        let mut l = base.clone();
        l.dnum = 9;
        assert!(matches!(
            Parameters::new(&l),
            Err(Error::InvalidParameter { name: "dnum", .. })
        ));
        let mut l = base;
        l.log_n = 16;
        l.log_q = vec![20; 40];
        assert!(matches!(
            Parameters::new_insecure(&l),
            Err(Error::NotEnoughPrimes { bits: 20, .. })
        ));
    }

    #[test]
    fn literal_serialized_form_is_pinned() {
        let json = serde_json::to_string(&Preset::N13L2.literal()).unwrap();
        assert_eq!(
            json,
            r#"{"log_n":13,"log_q":[50,40,40],"log_p":[50],"log_scale":40,"dnum":3,"secret":"Ternary","error_std":3.2}"#
        );
        let back: ParametersLiteral = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Preset::N13L2.literal());
        // Same literal -> same id; any change -> another id.
        let a = Parameters::preset(Preset::N13L2);
        assert_eq!(a.id(), Parameters::new(&back).unwrap().id());
        let mut other = back;
        other.log_scale = 39;
        assert_ne!(a.id(), Parameters::new(&other).unwrap().id());
    }
}
