//! Precision measurement in bits, for tests and benchmarks.

/// Precision statistics of a decrypted vector against its cleartext reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionStats {
    /// Minimum bits of precision: `-log2(max |error|)`.
    pub min_bits: f64,
    /// Mean bits of precision: `-log2(mean |error|)`.
    pub mean_bits: f64,
    /// Largest absolute error.
    pub max_error: f64,
}

/// Computes precision statistics of `got` against `want` (absolute error, in bits).
pub fn precision_stats(want: &[f64], got: &[f64]) -> PrecisionStats {
    assert_eq!(want.len(), got.len(), "length mismatch");
    let mut max_err = 0f64;
    let mut sum = 0f64;
    for (a, b) in want.iter().zip(got) {
        let e = (a - b).abs();
        max_err = if e.is_nan() {
            f64::INFINITY
        } else {
            max_err.max(e)
        };
        sum += e;
    }
    let mean = sum / want.len().max(1) as f64;
    let bits = |e: f64| if e == 0.0 { 64.0 } else { -e.log2() };
    PrecisionStats {
        min_bits: bits(max_err),
        mean_bits: bits(mean),
        max_error: max_err,
    }
}

/// Asserts at least `min_bits` bits of precision; the panic message prints min/mean precision.
#[track_caller]
pub fn assert_precision(want: &[f64], got: &[f64], min_bits: f64) -> PrecisionStats {
    let s = precision_stats(want, got);
    assert!(
        s.min_bits >= min_bits,
        "precision too low: min {:.2} bits, mean {:.2} bits (max error {:e}), wanted >= {min_bits}",
        s.min_bits,
        s.mean_bits,
        s.max_error
    );
    s
}
