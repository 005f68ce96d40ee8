//! Randomness: a ChaCha20 CSPRNG (seeded from the OS with the `os-rng` feature) and the samplers.

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use crate::params::Context;
use crate::poly::{Ntt, Poly};

/// The CSPRNG used throughout the crate.
pub type Prng = ChaCha20Rng;

/// A fresh 32-byte seed from the operating system.
#[cfg(feature = "os-rng")]
pub fn os_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut s);
    s
}

/// A CSPRNG seeded from the operating system.
#[cfg(feature = "os-rng")]
pub(crate) fn os_rng() -> Prng {
    <Prng as rand_core::SeedableRng>::from_seed(os_seed())
}

/// Uniform ternary coefficients in {-1, 0, 1}.
pub(crate) fn ternary(rng: &mut Prng, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = rng.next_u64();
        for b in w.to_le_bytes() {
            // 255 = 3 * 85: reject the single value 255 to stay exactly uniform.
            if b < 255 && out.len() < n {
                out.push((b % 3) as i64 - 1);
            }
        }
    }
    out
}

/// Uniform integer in `[0, bound)`.
fn below(rng: &mut Prng, bound: u64) -> u64 {
    let mask = u64::MAX >> (bound - 1).max(1).leading_zeros();
    loop {
        let x = rng.next_u64() & mask;
        if x < bound {
            return x;
        }
    }
}

/// Exactly `h` nonzero coefficients in {-1, 1} at uniformly random positions.
pub(crate) fn fixed_hamming(rng: &mut Prng, n: usize, h: usize) -> Vec<i64> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut out = vec![0i64; n];
    for i in 0..h {
        let j = i + below(rng, (n - i) as u64) as usize;
        idx.swap(i, j);
        out[idx[i]] = if rng.next_u32() & 1 == 0 { 1 } else { -1 };
    }
    out
}

/// Rounded Gaussian with standard deviation `sigma`, truncated at 6 sigma (Box-Muller).
pub(crate) fn gaussian(rng: &mut Prng, n: usize, sigma: f64) -> Vec<i64> {
    let bound = (6.0 * sigma).ceil();
    let unit = |rng: &mut Prng| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (u1, u2) = (unit(rng), unit(rng));
        let r = sigma * (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        for z in [r * t.cos(), r * t.sin()] {
            let z = z.round();
            if z.abs() <= bound && out.len() < n {
                out.push(z as i64);
            }
        }
    }
    out
}

/// A uniformly random polynomial (directly in NTT form) over `nq` q-limbs and `np` P-limbs.
/// Deterministic in the generator state, limb by limb, so seeded expansions reproduce it.
pub(crate) fn uniform_poly(rng: &mut Prng, ctx: &Context, nq: usize, np: usize) -> Poly<Ntt> {
    let mut p = Poly::<Ntt>::zero_ctx(ctx, nq, np);
    let n = ctx.n;
    for (k, limb) in p.data.chunks_exact_mut(n).enumerate() {
        let q = ctx.moduli[ctx.modulus_index(nq, k)].value();
        for x in limb.iter_mut() {
            *x = below(rng, q);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn samplers_have_expected_shape() {
        let mut rng = Prng::from_seed([7; 32]);
        let t = ternary(&mut rng, 30000);
        let counts = [-1i64, 0, 1].map(|v| t.iter().filter(|&&x| x == v).count());
        assert!(
            counts.iter().all(|&c| (9000..11000).contains(&c)),
            "{counts:?}"
        );
        let h = fixed_hamming(&mut rng, 1024, 100);
        assert_eq!(h.iter().filter(|&&x| x != 0).count(), 100);
        let g = gaussian(&mut rng, 40000, 3.2);
        let var = g.iter().map(|&x| (x * x) as f64).sum::<f64>() / g.len() as f64;
        assert!((var.sqrt() - 3.2).abs() < 0.1, "sigma {}", var.sqrt());
        assert!(g.iter().all(|x| x.abs() <= 20));
    }
}
