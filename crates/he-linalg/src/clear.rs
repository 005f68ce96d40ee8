//! Cleartext evaluator: the same interface as CKKS on plain `f64` slots, with exact level, scale
//! and key-switch bookkeeping. Used to test the algorithms independently of encryption noise.

use crate::backend::{OpStats, SlotBackend, SlotClient, scales_match};
use crate::error::{Error, Result};

/// A cleartext "ciphertext": the slot values (as decoded), level, scale and degree.
#[derive(Debug, Clone, PartialEq)]
pub struct ClearCt {
    values: Vec<f64>,
    level: usize,
    scale: f64,
    degree: usize,
}

/// A cleartext "plaintext".
#[derive(Debug, Clone, PartialEq)]
pub struct ClearPt {
    values: Vec<f64>,
    level: usize,
    scale: f64,
}

impl crate::backend::PlaintextSize for ClearPt {
    fn heap_bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<f64>()
    }
}

/// Cleartext backend over `slots` values with a chain of rescaling factors.
#[derive(Debug)]
pub struct ClearBackend {
    slots: usize,
    moduli: Vec<f64>,
    scale: f64,
    stats: OpStats,
}

impl ClearBackend {
    /// A backend with explicit rescaling factors `moduli[0..=max_level]` (q_0 first).
    pub fn new(slots: usize, moduli: Vec<f64>, scale: f64) -> Result<Self> {
        if !slots.is_power_of_two() || slots < 2 {
            return Err(Error::InvalidParameter {
                name: "slots (must be a power of two >= 2)",
                value: slots.to_string(),
            });
        }
        if moduli.is_empty() || moduli.iter().any(|&q| q <= 1.0 || !q.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "moduli",
                value: format!("{moduli:?}"),
            });
        }
        if scale <= 0.0 || !scale.is_finite() {
            return Err(Error::InvalidParameter {
                name: "scale",
                value: scale.to_string(),
            });
        }
        Ok(Self {
            slots,
            moduli,
            scale,
            stats: OpStats::default(),
        })
    }

    /// A backend shaped like a CKKS parameter set: `max_level` rescaling primes close to (but not
    /// equal to) `2^40`, so that scale drift is exercised exactly as with real primes.
    pub fn like_ckks(slots: usize, max_level: usize) -> Result<Self> {
        let mut moduli = vec![2f64.powi(50)];
        for i in 0..max_level {
            let sign = if i % 2 == 0 { -1.0 } else { 1.0 };
            moduli.push(2f64.powi(40) + sign * ((i as f64 + 1.0) * 2f64.powi(23) + 1.0));
        }
        Self::new(slots, moduli, 2f64.powi(40))
    }

    fn check_level(&self, level: usize) -> Result<()> {
        if level >= self.moduli.len() {
            return Err(Error::LevelTooHigh {
                level,
                max: self.moduli.len() - 1,
            });
        }
        Ok(())
    }

    fn fit(&self, values: &[f64]) -> Result<Vec<f64>> {
        if values.len() > self.slots {
            return Err(Error::TooManyValues {
                got: values.len(),
                slots: self.slots,
            });
        }
        let mut v = values.to_vec();
        v.resize(self.slots, 0.0);
        Ok(v)
    }

    fn same_level(a: usize, b: usize) -> Result<()> {
        if a != b {
            return Err(Error::LevelMismatch { left: a, right: b });
        }
        Ok(())
    }

    fn same_scale(a: f64, b: f64) -> Result<()> {
        if !scales_match(a, b) {
            return Err(Error::ScaleMismatch { left: a, right: b });
        }
        Ok(())
    }

    fn combine(&self, a: &ClearCt, b: &ClearCt, sign: f64) -> Result<ClearCt> {
        Self::same_level(a.level, b.level)?;
        Self::same_scale(a.scale, b.scale)?;
        Ok(ClearCt {
            values: a
                .values
                .iter()
                .zip(&b.values)
                .map(|(x, y)| x + sign * y)
                .collect(),
            level: a.level,
            scale: a.scale,
            degree: a.degree.max(b.degree),
        })
    }

    fn rotated(&self, a: &ClearCt, step: usize) -> Vec<f64> {
        let mut v = a.values.clone();
        v.rotate_left(step % self.slots);
        v
    }
}

impl SlotBackend for ClearBackend {
    type Ct = ClearCt;
    type Pt = ClearPt;

    fn slots(&self) -> usize {
        self.slots
    }
    fn max_level(&self) -> usize {
        self.moduli.len() - 1
    }
    fn default_scale(&self) -> f64 {
        self.scale
    }
    fn rescale_factor(&self, level: usize) -> f64 {
        self.moduli[level.min(self.moduli.len() - 1)]
    }
    fn encode(&self, values: &[f64], level: usize, scale: f64) -> Result<ClearPt> {
        self.check_level(level)?;
        Ok(ClearPt {
            values: self.fit(values)?,
            level,
            scale,
        })
    }
    fn level(&self, ct: &ClearCt) -> usize {
        ct.level
    }
    fn scale(&self, ct: &ClearCt) -> f64 {
        ct.scale
    }
    fn degree(&self, ct: &ClearCt) -> usize {
        ct.degree
    }
    fn add(&self, a: &ClearCt, b: &ClearCt) -> Result<ClearCt> {
        self.combine(a, b, 1.0)
    }
    fn sub(&self, a: &ClearCt, b: &ClearCt) -> Result<ClearCt> {
        self.combine(a, b, -1.0)
    }
    fn add_plain(&self, a: &ClearCt, p: &ClearPt) -> Result<ClearCt> {
        Self::same_level(a.level, p.level)?;
        Self::same_scale(a.scale, p.scale)?;
        let mut out = a.clone();
        out.values
            .iter_mut()
            .zip(&p.values)
            .for_each(|(x, y)| *x += y);
        Ok(out)
    }
    fn mul_plain(&self, a: &ClearCt, p: &ClearPt) -> Result<ClearCt> {
        Self::same_level(a.level, p.level)?;
        self.stats.record_pt_mult();
        let mut out = a.clone();
        out.values
            .iter_mut()
            .zip(&p.values)
            .for_each(|(x, y)| *x *= y);
        out.scale *= p.scale;
        Ok(out)
    }
    fn mul_const(&self, a: &ClearCt, c: f64, const_scale: f64) -> Result<ClearCt> {
        self.stats.record_pt_mult();
        let mut out = a.clone();
        out.values.iter_mut().for_each(|x| *x *= c);
        out.scale *= const_scale;
        Ok(out)
    }
    fn add_const(&self, a: &ClearCt, c: f64) -> Result<ClearCt> {
        let mut out = a.clone();
        out.values.iter_mut().for_each(|x| *x += c);
        Ok(out)
    }
    fn mul(&self, a: &ClearCt, b: &ClearCt) -> Result<ClearCt> {
        Self::same_level(a.level, b.level)?;
        let max_deg = a.degree.max(b.degree);
        if max_deg > 1 {
            return Err(Error::Degree {
                got: max_deg,
                max: 1,
            });
        }
        self.stats.record_ct_mult();
        Ok(ClearCt {
            values: a.values.iter().zip(&b.values).map(|(x, y)| x * y).collect(),
            level: a.level,
            scale: a.scale * b.scale,
            degree: 2,
        })
    }
    fn relinearize(&self, a: ClearCt) -> Result<ClearCt> {
        let mut out = a;
        if out.degree == 2 {
            self.stats.record_relinearization();
            out.degree = 1;
        }
        Ok(out)
    }
    fn rescale(&self, a: ClearCt) -> Result<ClearCt> {
        if a.level == 0 {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: 0,
            });
        }
        self.stats.record_rescale();
        let mut out = a;
        out.scale /= self.moduli[out.level];
        out.level -= 1;
        Ok(out)
    }
    fn drop_to_level(&self, a: &ClearCt, level: usize) -> Result<ClearCt> {
        if level > a.level {
            return Err(Error::NotEnoughLevels {
                needed: level,
                available: a.level,
            });
        }
        let mut out = a.clone();
        out.level = level;
        Ok(out)
    }
    fn set_scale(&self, a: &ClearCt, scale: f64) -> Result<ClearCt> {
        if scale <= 0.0 || !scale.is_finite() {
            return Err(Error::InvalidParameter {
                name: "scale",
                value: scale.to_string(),
            });
        }
        let mut out = a.clone();
        let f = a.scale / scale;
        out.values.iter_mut().for_each(|x| *x *= f);
        out.scale = scale;
        Ok(out)
    }
    fn rotate(&self, a: &ClearCt, step: usize) -> Result<ClearCt> {
        if a.degree > 1 {
            return Err(Error::Degree {
                got: a.degree,
                max: 1,
            });
        }
        let step = step % self.slots;
        if step == 0 {
            return Ok(a.clone());
        }
        self.stats.record_rotation(step, false);
        Ok(ClearCt {
            values: self.rotated(a, step),
            ..a.clone()
        })
    }
    fn rotate_hoisted(&self, a: &ClearCt, steps: &[usize]) -> Result<Vec<ClearCt>> {
        if a.degree > 1 {
            return Err(Error::Degree {
                got: a.degree,
                max: 1,
            });
        }
        Ok(steps
            .iter()
            .map(|&s| {
                let s = s % self.slots;
                if s != 0 {
                    self.stats.record_rotation(s, true);
                }
                ClearCt {
                    values: self.rotated(a, s),
                    ..a.clone()
                }
            })
            .collect())
    }
    fn stats(&self) -> &OpStats {
        &self.stats
    }
}

impl SlotClient for ClearBackend {
    fn encrypt(&self, values: &[f64], level: usize, scale: f64) -> Result<ClearCt> {
        self.check_level(level)?;
        Ok(ClearCt {
            values: self.fit(values)?,
            level,
            scale,
            degree: 1,
        })
    }
    fn decrypt(&self, ct: &ClearCt) -> Result<Vec<f64>> {
        Ok(ct.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_matches_ckks_rules() {
        let b = ClearBackend::like_ckks(8, 3).unwrap();
        let s = b.default_scale();
        let x = b.encrypt(&[1.0, 2.0, 3.0], 3, s).unwrap();
        let y = b.mul(&x, &x).unwrap();
        assert!(matches!(b.rotate(&y, 1), Err(Error::Degree { got: 2, .. })));
        let y = b.rescale(b.relinearize(y).unwrap()).unwrap();
        assert_eq!(b.level(&y), 2);
        assert!((b.scale(&y) - s * s / b.rescale_factor(3)).abs() < 1e-3);
        assert!(matches!(b.add(&x, &y), Err(Error::LevelMismatch { .. })));
        let r = b.rotate(&y, 9).unwrap();
        assert_eq!(&b.decrypt(&r).unwrap()[..3], &[4.0, 9.0, 0.0]);
        assert_eq!(b.stats().snapshot().key_switches, 2);
        assert_eq!(
            b.stats().used_steps().into_iter().collect::<Vec<_>>(),
            vec![1]
        );
        let z = b.set_scale(&x, s / 2.0).unwrap();
        assert_eq!(b.decrypt(&z).unwrap()[1], 4.0);
        assert!(b.encrypt(&[0.0; 9], 0, s).is_err());
    }
}
