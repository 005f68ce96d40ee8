//! Plaintext-weight matmul on the cleartext backend: exactness, planning, cost.

mod common;

use common::*;
use he_linalg::{
    ClearBackend, ClearPt, ColumnOrder, EncodedLinear, Layout, LinearMethod, LinearSpec, Matrix,
    SlotBackend, decrypt_matrix, encrypt_matrix, precision_bits,
};

/// `X·W` without bias, contiguous output, at the backend's default scale.
fn unbiased(
    b: &ClearBackend,
    w: &Matrix,
    input: &Layout,
    level: usize,
    method: LinearMethod,
) -> he_linalg::Result<EncodedLinear<ClearPt>> {
    let s = b.default_scale();
    EncodedLinear::new(b, w, None, input, ColumnOrder::Contiguous, level, s, method)
}

fn check(slots: usize, n: usize, d_in: usize, d_out: usize, out_order: ColumnOrder, seed: u64) {
    let b = ClearBackend::like_ckks(slots, 3).unwrap();
    let mut r = rng(seed);
    let x = random_matrix(&mut r, n, d_in, 4.0);
    let w = random_matrix(&mut r, d_in, d_out, 1.0 / (d_in as f64).sqrt());
    let bias = random_vec(&mut r, d_out, 1.0);
    let want = add_bias(&x.matmul(&w).unwrap(), &bias);
    let lin = Layout::new(slots, n, d_in, ColumnOrder::Contiguous).unwrap();
    let ex = encrypt_matrix(&b, &x, &lin, 3).unwrap();
    let mut ks = Vec::new();
    for method in [LinearMethod::Bsgs, LinearMethod::Diagonal] {
        let enc = EncodedLinear::new(
            &b,
            &w,
            Some(&bias),
            &lin,
            out_order,
            3,
            b.default_scale(),
            method,
        )
        .unwrap();
        b.stats().reset();
        let y = enc.apply(&b, &ex).unwrap();
        let counts = b.stats().snapshot();
        let plan = enc.plan();
        assert!(plan.matches(&counts), "{plan:?} vs {counts:?}");
        assert_eq!(plan.rotation_steps, b.stats().used_steps());
        assert_eq!(b.level(&y.cts()[0]), 2);
        assert!((b.scale(&y.cts()[0]) / b.default_scale() - 1.0).abs() < 1e-12);
        let got = decrypt_matrix(&b, &y).unwrap();
        let bits = precision_bits(&got, &want).unwrap();
        assert!(bits > 40.0, "{n}x{d_in}x{d_out} {method:?}: {bits} bits");
        ks.push(counts.key_switches);
    }
    assert!(ks[0] <= ks[1], "BSGS {} > diagonal {}", ks[0], ks[1]);
}

#[test]
fn square_rectangular_and_odd_shapes() {
    check(256, 8, 16, 16, ColumnOrder::Contiguous, 1);
    check(256, 5, 37, 23, ColumnOrder::Contiguous, 2);
    check(512, 13, 70, 9, ColumnOrder::Contiguous, 3);
    check(512, 3, 7, 100, ColumnOrder::Contiguous, 4);
    check(
        512,
        7,
        24,
        24,
        ColumnOrder::HeadInterleaved {
            heads: 3,
            head_dim: 8,
        },
        5,
    );
}

#[test]
fn minilm_projection_key_switches() {
    // 64 tokens x 384 features at 8192 slots: 3 ciphertexts of 128 columns.
    let b = ClearBackend::like_ckks(8192, 2).unwrap();
    let mut r = rng(9);
    let w = random_matrix(&mut r, 384, 384, 0.05);
    let lin = Layout::new(8192, 64, 384, ColumnOrder::Contiguous).unwrap();
    let bsgs = unbiased(&b, &w, &lin, 2, LinearMethod::Bsgs)
        .unwrap()
        .plan();
    let diag = unbiased(&b, &w, &lin, 2, LinearMethod::Diagonal)
        .unwrap()
        .plan();
    assert_eq!(diag.key_switches(), 3 * 127);
    assert_eq!(bsgs.key_switches(), 66);
    assert!(diag.key_switches() >= 4 * bsgs.key_switches());
}

#[test]
fn shared_baby_steps_for_three_projections() {
    // Q/K/V of MiniLM at 64 tokens: 384 x 384 each, inputs in 3 ciphertexts of 128 columns,
    // outputs head-interleaved in 4 (12 heads padded to 16). Separately 73 key switches each;
    // sharing X's baby rotations (g = 32): 3·31 hoisted baby + 12·3 giant = 129.
    let b = ClearBackend::like_ckks(8192, 2).unwrap();
    let mut r = rng(21);
    let n = 64;
    let ws: Vec<_> = (0..3)
        .map(|_| random_matrix(&mut r, 384, 384, 0.05))
        .collect();
    let biases: Vec<_> = (0..3).map(|_| random_vec(&mut r, 384, 1.0)).collect();
    let lin = Layout::new(8192, n, 384, ColumnOrder::Contiguous).unwrap();
    let order = ColumnOrder::HeadInterleaved {
        heads: 12,
        head_dim: 32,
    };
    let s = b.default_scale();
    let specs = specs(&ws, &biases, order);
    let shared = EncodedLinear::new_shared(&b, &specs, &lin, 2, s, LinearMethod::Bsgs).unwrap();
    let maps: Vec<&EncodedLinear<_>> = shared.iter().collect();
    let plan = EncodedLinear::plan_many(&maps).unwrap();
    assert_eq!(plan.key_switches(), 129);
    assert_eq!(plan.hoisted_rotations, 93);
    let separate: u64 = ws
        .iter()
        .map(|w| {
            EncodedLinear::new(&b, w, None, &lin, order, 2, s, LinearMethod::Bsgs)
                .unwrap()
                .plan()
                .key_switches()
        })
        .sum();
    assert_eq!(separate, 3 * 73);

    let x = random_matrix(&mut r, n, 384, 4.0);
    let ex = encrypt_matrix(&b, &x, &lin, 2).unwrap();
    b.stats().reset();
    let outs = EncodedLinear::apply_many(&b, &maps, &ex).unwrap();
    assert!(plan.matches(&b.stats().snapshot()), "{plan:?}");
    assert_eq!(plan.rotation_steps, b.stats().used_steps());
    for ((out, map), (w, bias)) in outs.iter().zip(&shared).zip(ws.iter().zip(&biases)) {
        assert_eq!(
            out.cts(),
            map.apply(&b, &ex).unwrap().cts(),
            "same as apply"
        );
        let got = decrypt_matrix(&b, out).unwrap();
        let want = add_bias(&x.matmul(w).unwrap(), bias);
        let bits = precision_bits(&got, &want).unwrap();
        assert!(bits >= 30.0, "{bits:.1} bits");
    }
}

#[test]
fn shared_maps_must_agree() {
    let b = ClearBackend::like_ckks(64, 2).unwrap();
    let lin = Layout::new(64, 4, 8, ColumnOrder::Contiguous).unwrap();
    let s = b.default_scale();
    let mut r = rng(3);
    let w = random_matrix(&mut r, 8, 8, 1.0);
    let at = |level| unbiased(&b, &w, &lin, level, LinearMethod::Bsgs).unwrap();
    let (a, c) = (at(2), at(1));
    let ex = encrypt_matrix(&b, &random_matrix(&mut r, 4, 8, 1.0), &lin, 2).unwrap();
    assert!(EncodedLinear::apply_many(&b, &[&a, &c], &ex).is_err());
    assert!(EncodedLinear::plan_many(&[&a, &c]).is_err());
    assert!(EncodedLinear::<he_linalg::ClearPt>::plan_many(&[]).is_err());
    assert!(EncodedLinear::apply_many::<ClearBackend>(&b, &[], &ex).is_err());
    let diag = unbiased(&b, &w, &lin, 2, LinearMethod::Diagonal).unwrap();
    assert!(EncodedLinear::plan_many(&[&a, &diag]).is_err());
    let other_in = Layout::new(64, 2, 8, ColumnOrder::Contiguous).unwrap();
    let d = unbiased(&b, &w, &other_in, 2, LinearMethod::Bsgs).unwrap();
    assert!(EncodedLinear::plan_many(&[&a, &d]).is_err());
    let bad = [LinearSpec {
        weights: &Matrix::zeros(9, 8),
        bias: None,
        out_order: ColumnOrder::Contiguous,
        out_scale: None,
    }];
    assert!(EncodedLinear::new_shared(&b, &bad, &lin, 2, s, LinearMethod::Bsgs).is_err());
    assert!(
        EncodedLinear::<he_linalg::ClearPt>::new_shared(&b, &[], &lin, 2, s, LinearMethod::Bsgs)
            .is_err()
    );
    // Two equal maps applied together give what each gives alone.
    let outs = EncodedLinear::apply_many(&b, &[&a, &a], &ex).unwrap();
    assert_eq!(outs[0].cts(), a.apply(&b, &ex).unwrap().cts());
    assert_eq!(outs[1].cts(), outs[0].cts());
}

#[test]
fn rejects_mismatched_inputs() {
    let b = ClearBackend::like_ckks(64, 2).unwrap();
    let lin = Layout::new(64, 4, 8, ColumnOrder::Contiguous).unwrap();
    let s = b.default_scale();
    let w = Matrix::zeros(9, 8);
    assert!(unbiased(&b, &w, &lin, 2, LinearMethod::Bsgs).is_err());
    let w = Matrix::zeros(8, 8);
    assert!(
        EncodedLinear::new(
            &b,
            &w,
            Some(&[0.0; 3]),
            &lin,
            ColumnOrder::Contiguous,
            2,
            s,
            LinearMethod::Bsgs
        )
        .is_err()
    );
    assert!(unbiased(&b, &w, &lin, 0, LinearMethod::Bsgs).is_err());
    let enc = unbiased(&b, &w, &lin, 2, LinearMethod::Bsgs).unwrap();
    let other = Layout::new(
        64,
        4,
        8,
        ColumnOrder::HeadInterleaved {
            heads: 2,
            head_dim: 4,
        },
    )
    .unwrap();
    let x = encrypt_matrix(&b, &Matrix::zeros(4, 8), &other, 2).unwrap();
    assert!(enc.apply(&b, &x).is_err());
    let x = encrypt_matrix(&b, &Matrix::zeros(4, 8), &lin, 1).unwrap();
    assert!(matches!(
        enc.apply(&b, &x),
        Err(he_linalg::Error::NotEnoughLevels { .. })
    ));
}
