//! Every operation on real CKKS ciphertexts (preset N = 2^14, 7 levels at 2^40, 128-bit secure)
//! against f64 arithmetic.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::BTreeSet;

use common::*;
use he_linalg::attention::{
    AttentionValues, AvMasking, QkScores, RowSplit, key_mask, row_sums, scores_layout,
    scores_to_heads,
};
use he_linalg::poly::{self, Polynomial};
use he_linalg::{
    CkksBackend, ColumnOrder, EncodedLinear, Layout, LinearMethod, LinearSpec, Matrix, SlotBackend,
    SlotClient, decrypt_matrix, encrypt_matrix, ops, precision_bits,
};

const MIN_BITS: f64 = 16.0;

fn backend() -> CkksBackend {
    CkksBackend::keygen(&ckks::Parameters::preset(ckks::Preset::N14L7)).unwrap()
}

fn with_keys(b: &mut CkksBackend, steps: BTreeSet<usize>) {
    b.generate_rotation_keys(&steps).unwrap();
}

#[test]
fn linear_square_rectangular_odd() {
    let mut b = backend();
    let slots = b.slots();
    let mut r = rng(11);
    let shapes = [(16, 32, 32), (5, 37, 23), (13, 20, 70)];
    let mut encs = Vec::new();
    let mut steps = BTreeSet::new();
    for &(n, din, dout) in &shapes {
        let x = random_matrix(&mut r, n, din, 4.0);
        let w = random_matrix(&mut r, din, dout, 1.0 / (din as f64).sqrt());
        let bias = random_vec(&mut r, dout, 1.0);
        let l = Layout::new(slots, n, din, ColumnOrder::Contiguous).unwrap();
        for method in [LinearMethod::Bsgs, LinearMethod::Diagonal] {
            let e = EncodedLinear::new(
                &b,
                &w,
                Some(&bias),
                &l,
                ColumnOrder::Contiguous,
                4,
                b.default_scale(),
                method,
            )
            .unwrap();
            steps.extend(e.plan().rotation_steps);
            encs.push((x.clone(), w.clone(), bias.clone(), l.clone(), e));
        }
    }
    with_keys(&mut b, steps);
    for (x, w, bias, l, e) in &encs {
        let ex = encrypt_matrix(&b, x, l, 4).unwrap();
        let y = e.apply(&b, &ex).unwrap();
        assert_eq!(ops::level(&b, &y), 3);
        let got = decrypt_matrix(&b, &y).unwrap();
        let want = add_bias(&x.matmul(w).unwrap(), bias);
        let bits = precision_bits(&got, &want).unwrap();
        println!("{:?} {}x{}: {bits:.1} bits", e.method(), x.rows(), x.cols());
        assert!(
            bits >= MIN_BITS,
            "{:?} {}x{}: {bits:.1} bits",
            e.method(),
            x.rows(),
            x.cols()
        );
    }
}

#[test]
fn attention_scores_masks_sums_values() {
    let mut b = backend();
    let slots = b.slots();
    let (n, heads, dh, valid) = (13, 3, 8, 11);
    let d = heads * dh;
    let mut r = rng(12);
    let q = random_matrix(&mut r, n, d, 4.0);
    let k = random_matrix(&mut r, n, d, 4.0);
    let v = random_matrix(&mut r, n, d, 4.0);
    let l = Layout::new(
        slots,
        n,
        d,
        ColumnOrder::HeadInterleaved {
            heads,
            head_dim: dh,
        },
    )
    .unwrap();
    let s = b.default_scale();
    let factor = 1.0 / (dh as f64).sqrt();
    let qk = QkScores::new(&b, &l, 4, s, s, factor).unwrap();
    let sl = scores_layout(&l).unwrap();
    // Scores come out at level 1; A·V needs two levels above its output.
    let av = |m, level| AttentionValues::new(&b, (&sl, &l), m, (level, s), (level, s));
    for m in [AvMasking::WeightRows, AvMasking::ValueTokens] {
        let e = av(m, 1).unwrap_err();
        assert!(matches!(e, he_linalg::Error::NotEnoughLevels { .. }));
    }
    let (av_rows, av_tokens) = (
        av(AvMasking::WeightRows, 2).unwrap(),
        av(AvMasking::ValueTokens, 2).unwrap(),
    );
    let mut steps = qk.plan().rotation_steps;
    steps.extend(av_rows.plan().rotation_steps);
    steps.extend(av_tokens.plan().rotation_steps);
    steps.extend(
        he_linalg::attention::row_sums_plan(&sl)
            .unwrap()
            .rotation_steps,
    );
    with_keys(&mut b, steps);

    let eq = encrypt_matrix(&b, &q, &l, 4).unwrap();
    let ek = encrypt_matrix(&b, &k, &l, 4).unwrap();
    let ev = encrypt_matrix(&b, &v, &l, 2).unwrap();
    let es = qk.apply(&b, &eq, &ek).unwrap();
    let got = scores_to_heads(&sl, &decrypt_matrix(&b, &es).unwrap()).unwrap();
    let mut masked_heads = Vec::new();
    for (h, g) in got.iter().enumerate() {
        let want = q
            .columns(h * dh, dh)
            .matmul(&k.columns(h * dh, dh).transpose())
            .unwrap()
            .map(|x| x * factor);
        let bits = precision_bits(g, &want).unwrap();
        println!("QK head {h}: {bits:.1} bits");
        assert!(bits >= MIN_BITS, "QK head {h}: {bits:.1} bits");
        masked_heads.push(Matrix::from_fn(n, n, |t, u| {
            if t < valid && u < valid {
                want.get(t, u)
            } else {
                0.0
            }
        }));
    }
    // Re-encrypt the scores at level 4 to leave room for the mask, the row split and A·V (the
    // THE-X client round trip refreshes levels the same way).
    let es = encrypt_matrix(&b, &decrypt_matrix(&b, &es).unwrap(), &sl, 4).unwrap();
    let mask = key_mask(&sl, valid).unwrap();
    let mp = ops::encode_multiplier(&b, &mask, &es).unwrap();
    let masked = ops::mul_plain(&b, &es, &mp).unwrap();
    assert_eq!(ops::level(&b, &masked), 3);

    let sums = scores_to_heads(
        &sl,
        &decrypt_matrix(&b, &row_sums(&b, &masked).unwrap()).unwrap(),
    )
    .unwrap();
    for h in 0..heads {
        let want = Matrix::from_fn(valid, 1, |t, _| {
            (0..n).map(|u| masked_heads[h].get(t, u)).sum()
        });
        let got = Matrix::from_fn(valid, 1, |t, _| sums[h].get(t, 0));
        let bits = precision_bits(&got, &want).unwrap();
        println!("row sums head {h}: {bits:.1} bits");
        assert!(bits >= MIN_BITS, "row sums head {h}: {bits:.1} bits");
    }

    let split = RowSplit::new(&b, &sl, 3, ops::scale(&b, &masked)).unwrap();
    let mut want = Matrix::zeros(n, d);
    for h in 0..heads {
        let o = masked_heads[h].matmul(&v.columns(h * dh, dh)).unwrap();
        for t in 0..n {
            for i in 0..dh {
                want.set(t, h * dh + i, o.get(t, i));
            }
        }
    }
    // From the row parts of the weights, and from the whole weights with V token-masked.
    let runs = [
        (av_rows, split.apply(&b, &masked).unwrap().to_vec()),
        (av_tokens, vec![masked]),
    ];
    for (av, weights) in runs {
        let eo = av.apply(&b, &weights, &ev).unwrap();
        assert_eq!(ops::level(&b, &eo), 0);
        let bits = precision_bits(&decrypt_matrix(&b, &eo).unwrap(), &want).unwrap();
        println!("A·V {:?}: {bits:.1} bits", av.masking());
        assert!(bits >= MIN_BITS, "A·V {:?}: {bits:.1} bits", av.masking());
    }
}

#[test]
fn polynomials_and_elementwise() {
    let b = backend();
    let mut r = rng(13);
    let xs = random_vec(&mut r, b.slots(), 4.0);
    let ct = b.encrypt(&xs, 4, b.default_scale()).unwrap();
    let polys = [
        Polynomial::power(vec![0.5, -1.0, 0.25, 0.125]).unwrap(),
        Polynomial::fit_chebyshev(f64::tanh, -4.0, 4.0, 7).unwrap(),
        Polynomial::chebyshev(random_vec(&mut r, 16, 1.0), -1.0, 1.0).unwrap(),
    ];
    for (i, p) in polys.iter().enumerate() {
        let input = if i == 2 {
            b.encrypt(
                &xs.iter().map(|x| x / 4.0).collect::<Vec<_>>(),
                4,
                b.default_scale(),
            )
            .unwrap()
        } else {
            ct.clone()
        };
        let out = poly::eval(&b, &input, p).unwrap();
        assert_eq!(b.level(&out), 4 - p.depth());
        let got = Matrix::new(1, b.slots(), b.decrypt(&out).unwrap()).unwrap();
        let want = Matrix::from_fn(1, b.slots(), |_, j| {
            p.eval_f64(if i == 2 { xs[j] / 4.0 } else { xs[j] })
        });
        let bits = precision_bits(&got, &want).unwrap();
        println!("poly {i} (degree {}): {bits:.1} bits", p.degree());
        assert!(
            bits >= MIN_BITS,
            "poly {i} (degree {}): {bits:.1} bits",
            p.degree()
        );
    }

    // Element-wise product, constants and plaintext addends on a packed matrix.
    let l = Layout::new(b.slots(), 7, 30, ColumnOrder::Contiguous).unwrap();
    let x = random_matrix(&mut r, 7, 30, 4.0);
    let y = random_matrix(&mut r, 7, 30, 4.0);
    let ex = encrypt_matrix(&b, &x, &l, 4).unwrap();
    let ey = encrypt_matrix(&b, &y, &l, 3).unwrap();
    let prod = ops::mul(&b, &ex, &ey).unwrap();
    let prod = ops::mul_const(&b, &prod, -0.75).unwrap();
    let addend = ops::encode_addend(&b, &x, &prod).unwrap();
    let out = ops::add_plain(&b, &prod, &addend).unwrap();
    let out = ops::add_const(&b, &out, 2.0).unwrap();
    let want = Matrix::from_fn(7, 30, |i, j| {
        -0.75 * x.get(i, j) * y.get(i, j) + x.get(i, j) + 2.0
    });
    let bits = precision_bits(&decrypt_matrix(&b, &out).unwrap(), &want).unwrap();
    println!("element-wise: {bits:.1} bits");
    assert!(bits >= MIN_BITS, "element-wise: {bits:.1} bits");
}

#[test]
fn fused_plaintext_multiply_add_matches_unfused() {
    let b = backend();
    let mut r = rng(17);
    let scale = b.default_scale();
    let (x, y, w, v) = (
        random_vec(&mut r, b.slots(), 2.0),
        random_vec(&mut r, b.slots(), 2.0),
        random_vec(&mut r, b.slots(), 1.0),
        random_vec(&mut r, b.slots(), 1.0),
    );
    let (cx, cy) = (
        b.encrypt(&x, 2, scale).unwrap(),
        b.encrypt(&y, 2, scale).unwrap(),
    );
    let (pw, pv) = (
        b.encode(&w, 2, scale).unwrap(),
        b.encode(&v, 2, scale).unwrap(),
    );
    let before = b.stats().snapshot();
    let mut fused = b.mul_plain(&cx, &pw).unwrap();
    b.mul_plain_add(&mut fused, &cy, &pv).unwrap();
    assert_eq!(b.stats().snapshot().since(&before).pt_mults, 2);
    let mut unfused = b.mul_plain(&cx, &pw).unwrap();
    b.add_assign(&mut unfused, &b.mul_plain(&cy, &pv).unwrap())
        .unwrap();
    assert_eq!(fused, unfused, "bit-identical to mul_plain + add_assign");
    let got = Matrix::new(1, b.slots(), b.decrypt(&b.rescale(fused).unwrap()).unwrap()).unwrap();
    let want = Matrix::from_fn(1, b.slots(), |_, j| x[j] * w[j] + y[j] * v[j]);
    let bits = precision_bits(&got, &want).unwrap();
    assert!(bits >= MIN_BITS, "fused product: {bits:.1} bits");
    // The accumulator's scale must be the product's scale.
    let mut wrong = cx.clone();
    assert!(b.mul_plain_add(&mut wrong, &cy, &pv).is_err());
}

#[test]
fn shared_baby_rotations_give_bit_identical_outputs() {
    // Three maps of one input with different sparsity (so different own baby steps): rotating
    // the input once by the union of their baby steps gives the same bits as each map alone.
    let mut b = backend();
    let slots = b.slots();
    let mut r = rng(29);
    let (n, din) = (13, 40);
    let x = random_matrix(&mut r, n, din, 4.0);
    let mut ws: Vec<Matrix> = [70, 30, 40]
        .iter()
        .map(|&d| random_matrix(&mut r, din, d, 1.0 / (din as f64).sqrt()))
        .collect();
    for i in 0..din {
        for j in 0..30 {
            if (i + 2 * j) % 5 != 0 {
                ws[1].set(i, j, 0.0);
            }
        }
    }
    let biases: Vec<Vec<f64>> = ws
        .iter()
        .map(|w| random_vec(&mut r, w.cols(), 1.0))
        .collect();
    let l = Layout::new(slots, n, din, ColumnOrder::Contiguous).unwrap();
    let specs = specs(&ws, &biases, ColumnOrder::Contiguous);
    let maps = EncodedLinear::new_shared(&b, &specs, &l, 3, b.default_scale(), LinearMethod::Bsgs)
        .unwrap();
    let refs: Vec<&EncodedLinear<_>> = maps.iter().collect();
    let plan = EncodedLinear::plan_many(&refs).unwrap();
    with_keys(&mut b, plan.rotation_steps.clone());
    let ex = encrypt_matrix(&b, &x, &l, 4).unwrap();
    let before = b.stats().snapshot();
    let outs = EncodedLinear::apply_many(&b, &refs, &ex).unwrap();
    assert!(
        plan.matches(&b.stats().snapshot().since(&before)),
        "{plan:?}"
    );
    let separate: u64 = maps.iter().map(|m| m.plan().key_switches()).sum();
    assert!(
        plan.key_switches() < separate,
        "{} vs {separate}",
        plan.key_switches()
    );
    for ((out, m), (w, bias)) in outs.iter().zip(&maps).zip(ws.iter().zip(&biases)) {
        assert_eq!(out.cts(), m.apply(&b, &ex).unwrap().cts(), "bit-identical");
        assert_eq!(ops::level(&b, out), 2);
        let got = decrypt_matrix(&b, out).unwrap();
        let want = add_bias(&x.matmul(w).unwrap(), bias);
        let bits = precision_bits(&got, &want).unwrap();
        assert!(bits >= MIN_BITS, "shared linear: {bits:.1} bits");
    }
}

#[test]
fn compact_weights_from_a_keyless_encoder_give_bit_identical_results() {
    let mut b = backend();
    let enc = CkksBackend::encoder_only(b.params()).compact_plaintexts(true);
    let slots = b.slots();
    let mut r = rng(23);
    let (n, din, dout) = (13, 40, 70);
    let x = random_matrix(&mut r, n, din, 4.0);
    let w = random_matrix(&mut r, din, dout, 1.0 / (din as f64).sqrt());
    let bias = random_vec(&mut r, dout, 1.0);
    let l = Layout::new(slots, n, din, ColumnOrder::Contiguous).unwrap();
    let lin = |be: &CkksBackend| {
        EncodedLinear::new(
            be,
            &w,
            Some(&bias),
            &l,
            ColumnOrder::Contiguous,
            3,
            be.default_scale(),
            LinearMethod::Bsgs,
        )
        .unwrap()
    };
    let (full, compact) = (lin(&b), lin(&enc));
    assert_eq!(full.n_plaintexts(), compact.n_plaintexts());
    assert_eq!(full.plan(), compact.plan());
    let n_pts = compact.n_plaintexts() + compact.out_layout().n_cts();
    assert_eq!(compact.heap_bytes(), n_pts * 2 * slots * 8);
    assert!(
        compact.heap_bytes() * 3 < full.heap_bytes(),
        "level 3: 4 limbs vs one i64 per coefficient ({} vs {})",
        compact.heap_bytes(),
        full.heap_bytes()
    );
    with_keys(&mut b, full.plan().rotation_steps);
    let ex = encrypt_matrix(&b, &x, &l, 3).unwrap();
    let y_full = full.apply(&b, &ex).unwrap();
    let y_compact = compact.apply(&b, &ex).unwrap();
    assert_eq!(y_full.cts(), y_compact.cts(), "bit-identical outputs");
    // Inputs and outputs are processed in parallel: one thread gives the same bits.
    let serial = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| compact.apply(&b, &ex).unwrap());
    assert_eq!(serial.cts(), y_compact.cts(), "serial == parallel");
    let got = decrypt_matrix(&b, &y_compact).unwrap();
    let want = add_bias(&x.matmul(&w).unwrap(), &bias);
    let bits = precision_bits(&got, &want).unwrap();
    assert!(bits >= MIN_BITS, "compact linear: {bits:.1} bits");

    // The keyless encoder refuses to evaluate anything that needs a key.
    let ct = ex.cts()[0].clone();
    assert!(enc.rotate(&ct, 1).is_err());
    let sq = enc.mul(&ct, &ct).unwrap();
    assert!(enc.relinearize(sq).is_err());
    assert!(enc.relin_key().is_none());
}

/// A linear map and Q·Kᵀ asked for a lower output scale (as for ciphertexts about to be
/// decrypted under a small modulus) come out at exactly that scale, same levels, same values.
#[test]
fn outputs_at_a_lower_scale() {
    let mut b = backend();
    let slots = b.slots();
    let (n, heads, dh) = (9, 2, 8);
    let d = heads * dh;
    let mut r = rng(21);
    let x = random_matrix(&mut r, n, d, 4.0);
    let w = random_matrix(&mut r, d, d, 1.0 / (d as f64).sqrt());
    let bias = random_vec(&mut r, d, 1.0);
    let k = random_matrix(&mut r, n, d, 4.0);
    let (s, low) = (b.default_scale(), 2f64.powi(30));
    let lc = Layout::new(slots, n, d, ColumnOrder::Contiguous).unwrap();
    let spec = LinearSpec {
        weights: &w,
        bias: Some(&bias),
        out_order: ColumnOrder::Contiguous,
        out_scale: Some(low),
    };
    let lin = EncodedLinear::from_spec(&b, spec, &lc, 3, s, LinearMethod::Bsgs).unwrap();
    for bad in [0.0, f64::NAN, f64::INFINITY] {
        let spec = LinearSpec {
            out_scale: Some(bad),
            ..spec
        };
        assert!(EncodedLinear::from_spec(&b, spec, &lc, 3, s, LinearMethod::Bsgs).is_err());
    }
    let lh = lc
        .with_cols(
            d,
            ColumnOrder::HeadInterleaved {
                heads,
                head_dim: dh,
            },
        )
        .unwrap();
    let factor = 0.5;
    let qk = QkScores::with_out_scale(&b, &lh, 3, (s, s), factor, low).unwrap();
    assert!(QkScores::with_out_scale(&b, &lh, 3, (s, s), factor, f64::NAN).is_err());
    let mut steps = lin.plan().rotation_steps;
    steps.extend(qk.plan().rotation_steps);
    with_keys(&mut b, steps);

    let y = lin
        .apply(&b, &encrypt_matrix(&b, &x, &lc, 3).unwrap())
        .unwrap();
    assert_eq!((ops::level(&b, &y), ops::scale(&b, &y)), (2, low));
    let want = add_bias(&x.matmul(&w).unwrap(), &bias);
    let bits = precision_bits(&decrypt_matrix(&b, &y).unwrap(), &want).unwrap();
    assert!(bits >= MIN_BITS, "linear at 2^30: {bits:.1} bits");

    let eq = encrypt_matrix(&b, &x, &lh, 3).unwrap();
    let ek = encrypt_matrix(&b, &k, &lh, 3).unwrap();
    let es = qk.apply(&b, &eq, &ek).unwrap();
    assert_eq!((ops::level(&b, &es), ops::scale(&b, &es)), (0, low));
    let sl = scores_layout(&lh).unwrap();
    let got = scores_to_heads(&sl, &decrypt_matrix(&b, &es).unwrap()).unwrap();
    for (h, g) in got.iter().enumerate() {
        let want = x
            .columns(h * dh, dh)
            .matmul(&k.columns(h * dh, dh).transpose())
            .unwrap()
            .map(|v| v * factor);
        let bits = precision_bits(g, &want).unwrap();
        assert!(bits >= MIN_BITS, "QK head {h} at 2^30: {bits:.1} bits");
    }
}
