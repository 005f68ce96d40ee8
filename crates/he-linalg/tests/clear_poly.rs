//! Polynomial evaluation on the cleartext backend: values, depth, scale, planned key switches.

mod common;

use common::*;
use he_linalg::poly::{self, Polynomial};
use he_linalg::{ClearBackend, SlotBackend, SlotClient};
use rand::Rng;

fn check(p: &Polynomial, lo: f64, hi: f64, seed: u64) {
    let b = ClearBackend::like_ckks(64, 12).unwrap();
    let mut r = rng(seed);
    let xs: Vec<f64> = (0..64).map(|_| r.gen_range(lo..hi)).collect();
    let ct = b.encrypt(&xs, 12, b.default_scale()).unwrap();
    b.stats().reset();
    let out = poly::eval(&b, &ct, p).unwrap();
    let counts = b.stats().snapshot();
    let plan = p.plan();
    assert!(
        plan.matches(&counts),
        "deg {}: {plan:?} vs {counts:?}",
        p.degree()
    );
    assert_eq!(b.level(&out), 12 - p.depth(), "deg {}", p.degree());
    assert_eq!(b.degree(&out), 1);
    assert!((b.scale(&out) / b.default_scale() - 1.0).abs() < 1e-12);
    let got = b.decrypt(&out).unwrap();
    let want: Vec<f64> = xs.iter().map(|&x| p.eval_f64(x)).collect();
    let mag = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    let err = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        err / mag < 1e-10,
        "deg {} {:?}: rel err {}",
        p.degree(),
        p.basis(),
        err / mag
    );
}

#[test]
fn power_and_chebyshev_all_degrees() {
    let mut r = rng(1);
    for d in 0..=33 {
        let c = random_vec(&mut r, d + 1, 1.0);
        check(&Polynomial::power(c.clone()).unwrap(), -1.0, 1.0, d as u64);
        check(
            &Polynomial::chebyshev(c.clone(), -1.0, 1.0).unwrap(),
            -1.0,
            1.0,
            d as u64,
        );
        check(
            &Polynomial::chebyshev(c, -4.0, 6.0).unwrap(),
            -4.0,
            6.0,
            d as u64,
        );
    }
}

#[test]
fn depth_is_optimal() {
    for (d, depth) in [
        (1, 1),
        (2, 2),
        (3, 2),
        (4, 3),
        (7, 3),
        (8, 4),
        (15, 4),
        (16, 5),
        (31, 5),
        (63, 6),
    ] {
        let p = Polynomial::power(vec![1.0; d + 1]).unwrap();
        assert_eq!(p.depth(), depth, "degree {d}");
        let c = Polynomial::chebyshev(vec![1.0; d + 1], -1.0, 1.0).unwrap();
        assert_eq!(c.depth(), depth, "degree {d}");
        // A non-unit interval costs one level unless normalized away.
        let w = Polynomial::chebyshev(vec![1.0; d + 1], -8.0, 8.0).unwrap();
        assert_eq!(w.depth(), depth + 1);
        assert_eq!(w.normalized().2.depth(), depth);
    }
}

#[test]
fn fit_and_normalize() {
    let p = Polynomial::fit_chebyshev(f64::exp, -4.0, 4.0, 24).unwrap();
    for i in 0..=100 {
        let x = -4.0 + 0.08 * i as f64;
        assert!(
            (p.eval_f64(x) - x.exp()).abs() < 1e-9 * x.exp().max(1.0),
            "x={x}"
        );
    }
    let (alpha, beta, q) = p.normalized();
    assert!((q.eval_f64(alpha * 1.3 + beta) - p.eval_f64(1.3)).abs() < 1e-12);
    // GELU-like function on a wide interval, evaluated homomorphically at 4 + 1 levels.
    let gelu = |x: f64| 0.5 * x * (1.0 + (0.7978845608 * (x + 0.044715 * x * x * x)).tanh());
    let g = Polynomial::fit_chebyshev(gelu, -8.0, 8.0, 15).unwrap();
    check(&g, -8.0, 8.0, 3);
    assert!(Polynomial::chebyshev(vec![1.0], 1.0, 1.0).is_err());
    assert!(Polynomial::power(vec![f64::NAN]).is_err());
}

#[test]
fn rejects_insufficient_levels() {
    let b = ClearBackend::like_ckks(8, 3).unwrap();
    let ct = b.encrypt(&[0.5], 3, b.default_scale()).unwrap();
    let p = Polynomial::power(vec![1.0; 16]).unwrap();
    assert!(matches!(
        poly::eval(&b, &ct, &p),
        Err(he_linalg::Error::NotEnoughLevels {
            needed: 4,
            available: 3
        })
    ));
}
