//! Every operation against the same computation on cleartext f64 vectors, in bits of precision.

use ckks::precision::assert_precision;
use ckks::*;

struct Setup {
    params: Parameters,
    enc: Encoder,
    sk: SecretKey,
    pk: PublicKey,
    rlk: RelinKey,
    ev: Evaluator,
}

fn setup(params: Parameters) -> Setup {
    let mut kg = KeyGenerator::from_seed(&params, [1; 32]);
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk).unwrap();
    let rlk = kg.relin_key(&sk).unwrap();
    Setup {
        enc: Encoder::new(&params),
        ev: Evaluator::new(&params),
        params,
        sk,
        pk,
        rlk,
    }
}

/// `Σ a ⊗ b` by chained `multiply_acc` (the reference of the lazily reduced sums).
fn chained_sum(ev: &Evaluator, pairs: &[(&Ciphertext, &Ciphertext)]) -> Ciphertext {
    let mut acc = ev.multiply(pairs[0].0, pairs[0].1).unwrap();
    for (a, b) in &pairs[1..] {
        ev.multiply_acc(&mut acc, a, b).unwrap();
    }
    acc
}

/// `Σ c ⊙ p` by chained `multiply_plain_acc`.
fn chained_plain_sum(ev: &Evaluator, pairs: &[(&Ciphertext, &Plaintext)]) -> Ciphertext {
    let mut acc = ev.multiply_plain(pairs[0].0, pairs[0].1).unwrap();
    for (c, p) in &pairs[1..] {
        ev.multiply_plain_acc(&mut acc, c, p).unwrap();
    }
    acc
}

fn vector(len: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

impl Setup {
    fn encrypt(&self, v: &[f64], level: usize) -> Ciphertext {
        let pt = self
            .enc
            .encode(v, level, self.params.default_scale())
            .unwrap();
        Encryptor::from_seed(&self.pk, [v.len() as u8; 32])
            .encrypt(&pt)
            .unwrap()
    }
    fn decrypt(&self, ct: &Ciphertext) -> Vec<f64> {
        let pt = Decryptor::from_seed(&self.sk, [0; 32]).decrypt(ct).unwrap();
        self.enc.decode(&pt)
    }
}

#[test]
fn public_and_seeded_encryption_round_trip() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let v = vector(4096, 1, -1.0, 1.0);
    let ct = s.encrypt(&v, 2);
    assert_eq!((ct.level(), ct.slots(), ct.degree()), (2, 4096, 1));
    assert_precision(&v, &s.decrypt(&ct), 20.0);
    let pt = s.enc.encode(&v, 1, 2f64.powi(40)).unwrap();
    let seeded = Decryptor::from_seed(&s.sk, [3; 32])
        .encrypt_seeded(&pt)
        .unwrap();
    let full = seeded.expand(&s.params);
    assert_eq!(full.level(), 1);
    // Symmetric noise is the Gaussian error only: clearly better than public-key encryption.
    assert_precision(&v, &s.decrypt(&full), 26.0);
}

#[test]
fn additions_subtractions_negation() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let (a, b) = (vector(4096, 2, -1.0, 1.0), vector(4096, 3, -1.0, 1.0));
    let (ca, cb) = (s.encrypt(&a, 2), s.encrypt(&b, 2));
    let pb = s.enc.encode(&b, 2, s.params.default_scale()).unwrap();
    let zip = |f: fn(f64, f64) -> f64| a.iter().zip(&b).map(|(x, y)| f(*x, *y)).collect::<Vec<_>>();
    let sum = zip(|x, y| x + y);
    let diff = zip(|x, y| x - y);
    assert_precision(&sum, &s.decrypt(&s.ev.add(&ca, &cb).unwrap()), 21.0);
    assert_precision(&diff, &s.decrypt(&s.ev.sub(&ca, &cb).unwrap()), 21.0);
    assert_precision(&sum, &s.decrypt(&s.ev.add_plain(&ca, &pb).unwrap()), 21.0);
    assert_precision(&diff, &s.decrypt(&s.ev.sub_plain(&ca, &pb).unwrap()), 21.0);
    let neg: Vec<f64> = a.iter().map(|x| -x).collect();
    assert_precision(&neg, &s.decrypt(&s.ev.negate(&ca)), 21.0);
    let plus: Vec<f64> = a.iter().map(|x| x + 0.375).collect();
    assert_precision(
        &plus,
        &s.decrypt(&s.ev.add_const(&ca, 0.375).unwrap()),
        21.0,
    );
    // In-place forms agree with the allocating ones.
    let mut c = ca.clone();
    s.ev.add_assign(&mut c, &cb).unwrap();
    assert_eq!(c, s.ev.add(&ca, &cb).unwrap());
    s.ev.sub_assign(&mut c, &cb).unwrap();
    assert_eq!(c, ca);
    s.ev.negate_assign(&mut c);
    s.ev.negate_assign(&mut c);
    assert_eq!(c, ca);
}

#[test]
fn multiply_relinearize_rescale_keeps_20_bits_at_scale_2_40() {
    let s = setup(Parameters::preset(Preset::N14L7));
    let (a, b) = (vector(8192, 4, -1.0, 1.0), vector(8192, 5, -1.0, 1.0));
    let (ca, cb) = (s.encrypt(&a, 7), s.encrypt(&b, 7));
    let mut prod = s.ev.multiply_relin(&ca, &cb, &s.rlk).unwrap();
    s.ev.rescale_assign(&mut prod).unwrap();
    assert_eq!(prod.level(), 6);
    let q7 = s.params.q_moduli()[7] as f64;
    assert!((prod.scale() - 2f64.powi(80) / q7).abs() < 1e-6 * prod.scale());
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let st = assert_precision(&want, &s.decrypt(&prod), 20.0);
    eprintln!(
        "mul+relin+rescale N=2^14: min {:.2} bits, mean {:.2}",
        st.min_bits, st.mean_bits
    );
    // Degree-2 ciphertexts decrypt too (lazy relinearization); relinearize before rescaling.
    let d2 = s.ev.multiply(&ca, &cb).unwrap();
    assert_eq!(d2.degree(), 2);
    assert_precision(&want, &s.decrypt(&d2), 20.0);
    let mut r = d2.clone();
    s.ev.relinearize_assign(&mut r, &s.rlk).unwrap();
    assert_eq!(r, s.ev.relinearize(&d2, &s.rlk).unwrap());
    assert_precision(&want, &s.decrypt(&s.ev.rescale(&r).unwrap()), 20.0);
}

#[test]
fn plaintext_and_constant_products() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let (a, b) = (vector(4096, 6, -1.0, 1.0), vector(4096, 7, -1.0, 1.0));
    let ca = s.encrypt(&a, 2);
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    // Plaintext at a higher level than the ciphertext is allowed.
    let pb = s.enc.encode(&b, 2, s.params.default_scale()).unwrap();
    let ca1 = s.ev.drop_level(&ca, 1).unwrap();
    let got =
        s.ev.rescale(&s.ev.multiply_plain(&ca1, &pb).unwrap())
            .unwrap();
    assert_eq!(got.level(), 0);
    assert_precision(&want, &s.decrypt(&got), 20.0);

    let c = -0.7311;
    let mut cc = s.ev.multiply_const(&ca, c).unwrap();
    s.ev.rescale_assign(&mut cc).unwrap();
    assert!(
        (cc.scale() - ca.scale()).abs() < 1e-3,
        "constant product restores the scale"
    );
    let want: Vec<f64> = a.iter().map(|x| x * c).collect();
    assert_precision(&want, &s.decrypt(&cc), 20.0);
    // Constant at an explicit scale: the rescale lands exactly on the target scale.
    let target = 1.5 * 2f64.powi(40);
    let q2 = s.params.q_moduli()[2] as f64;
    let mut cs =
        s.ev.multiply_const_with_scale(&ca, c, target * q2 / ca.scale())
            .unwrap();
    s.ev.rescale_assign(&mut cs).unwrap();
    assert!((cs.scale() / target - 1.0).abs() < 1e-12);
    let want: Vec<f64> = a.iter().map(|x| x * c).collect();
    assert_precision(&want, &s.decrypt(&cs), 20.0);
    let want: Vec<f64> = a.iter().map(|x| x * -3.0).collect();
    assert_precision(&want, &s.decrypt(&s.ev.multiply_int(&ca, -3)), 20.0);
}

#[test]
fn fused_plaintext_multiply_accumulate() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let scale = s.params.default_scale();
    let xs: Vec<Vec<f64>> = (0..4).map(|i| vector(4096, 60 + i, -1.0, 1.0)).collect();
    let ws: Vec<Vec<f64>> = (0..4).map(|i| vector(4096, 70 + i, -1.0, 1.0)).collect();
    // Ciphertexts at level 1; plaintexts at level 2 for the odd terms (prefix is used).
    let cts: Vec<Ciphertext> = xs
        .iter()
        .map(|x| s.ev.drop_level(&s.encrypt(x, 2), 1).unwrap())
        .collect();
    let pts: Vec<Plaintext> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| s.enc.encode(w, 1 + i % 2, scale).unwrap())
        .collect();

    // Start from a buffer of another shape (degree 2, level 2) to exercise buffer reuse.
    let fresh = s.encrypt(&xs[0], 2);
    let mut acc = s.ev.multiply(&fresh, &fresh).unwrap();
    s.ev.multiply_plain_into(&mut acc, &cts[0], &pts[0])
        .unwrap();
    assert_eq!(acc, s.ev.multiply_plain(&cts[0], &pts[0]).unwrap());
    let mut reference = s.ev.multiply_plain(&cts[0], &pts[0]).unwrap();
    for (c, p) in cts.iter().zip(&pts).skip(1) {
        s.ev.multiply_plain_acc(&mut acc, c, p).unwrap();
        s.ev.add_assign(&mut reference, &s.ev.multiply_plain(c, p).unwrap())
            .unwrap();
    }
    assert_eq!(acc, reference, "fused result is bit-identical");
    let mut in_place = cts[1].clone();
    s.ev.multiply_plain_assign(&mut in_place, &pts[1]).unwrap();
    assert_eq!(in_place, s.ev.multiply_plain(&cts[1], &pts[1]).unwrap());

    let want: Vec<f64> = (0..4096)
        .map(|j| (0..4).map(|i| xs[i][j] * ws[i][j]).sum())
        .collect();
    let got = s.ev.rescale(&acc).unwrap();
    assert_precision(&want, &s.decrypt(&got), 18.0);

    // A degree-2 accumulator (as after an unrelinearized product) accumulates too.
    let sq =
        s.ev.multiply(&s.encrypt(&xs[0], 2), &s.encrypt(&xs[1], 2))
            .unwrap();
    let (p2, p3) = (
        s.enc.encode(&ws[2], 2, scale).unwrap(),
        s.enc.encode(&ws[3], 2, scale).unwrap(),
    );
    let mut acc2 = s.ev.multiply_plain(&sq, &p2).unwrap();
    s.ev.multiply_plain_acc(&mut acc2, &sq, &p3).unwrap();
    let acc2 =
        s.ev.rescale(&s.ev.relinearize(&acc2, &s.rlk).unwrap())
            .unwrap();
    let want2: Vec<f64> = (0..4096)
        .map(|j| xs[0][j] * xs[1][j] * (ws[2][j] + ws[3][j]))
        .collect();
    let got2 = s.ev.rescale(&acc2).unwrap();
    assert_precision(&want2, &s.decrypt(&got2), 14.0);

    // Mismatched scale, level and slots are rejected.
    let wrong_scale = s.enc.encode(&ws[0], 1, scale * 2.0).unwrap();
    assert!(matches!(
        s.ev.multiply_plain_acc(&mut acc, &cts[0], &wrong_scale),
        Err(Error::ScaleMismatch { .. })
    ));
    let high = s.encrypt(&xs[0], 2);
    assert!(matches!(
        s.ev.multiply_plain_acc(&mut acc, &high, &s.enc.encode(&ws[0], 2, scale).unwrap()),
        Err(Error::LevelMismatch { left: 1, right: 2 })
    ));
    let low_pt = s.enc.encode(&ws[0], 0, scale).unwrap();
    assert!(matches!(
        s.ev.multiply_plain_acc(&mut acc, &cts[0], &low_pt),
        Err(Error::LevelMismatch { left: 1, right: 0 })
    ));
    assert!(matches!(
        s.ev.multiply_plain_into(&mut acc, &cts[0], &low_pt),
        Err(Error::LevelMismatch { .. })
    ));
    let short = s.enc.encode(&ws[0][..8], 1, scale).unwrap();
    assert!(matches!(
        s.ev.multiply_plain_acc(&mut acc, &cts[0], &short),
        Err(Error::SlotsMismatch { .. })
    ));
    assert_eq!(
        acc, reference,
        "rejected calls leave the accumulator unchanged"
    );
}

#[test]
fn chain_using_every_level_keeps_12_bits() {
    let s = setup(Parameters::preset(Preset::N14L7));
    let levels = s.params.max_level();
    let xs: Vec<Vec<f64>> = (0..=levels)
        .map(|i| vector(8192, 10 + i as u64, 0.8, 1.2))
        .collect();
    let mut ct = s.encrypt(&xs[0], levels);
    let mut want = xs[0].clone();
    for (i, x) in xs.iter().enumerate().skip(1) {
        // Encode the multiplicand at scale q_l (the prime the rescale drops): the chain keeps
        // exactly the initial scale instead of drifting geometrically.
        let ql = s.params.q_moduli()[ct.level()] as f64;
        let pt = s.enc.encode(x, ct.level(), ql).unwrap();
        let cx = Encryptor::from_seed(&s.pk, [i as u8; 32])
            .encrypt(&pt)
            .unwrap();
        s.ev.multiply_relin_assign(&mut ct, &cx, &s.rlk).unwrap();
        s.ev.rescale_assign(&mut ct).unwrap();
        want.iter_mut().zip(x).for_each(|(w, v)| *w *= v);
        assert_eq!(ct.level(), levels - i);
    }
    assert_eq!(ct.level(), 0);
    // The issue asks for >= 12 bits; exact scale management keeps far more.
    let st = assert_precision(&want, &s.decrypt(&ct), 18.0);
    eprintln!(
        "{levels}-level chain: min {:.2} bits, mean {:.2}",
        st.min_bits, st.mean_bits
    );
}

#[test]
fn rotations_for_every_keyed_step_composed_and_hoisted() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let steps = [1i64, 2, 3, 5, 64, 1000, -1, -7];
    let mut kg = KeyGenerator::from_seed(&s.params, [9; 32]);
    let gks = kg.galois_keys(&s.sk, &steps, false).unwrap();
    let v = vector(4096, 20, -1.0, 1.0);
    let ct = s.encrypt(&v, 2);
    let rot = |k: i64| -> Vec<f64> {
        (0..v.len())
            .map(|i| v[(i as i64 + k).rem_euclid(v.len() as i64) as usize])
            .collect()
    };
    for &k in &steps {
        assert!(gks.has_rotation(k));
        assert_precision(
            &rot(k),
            &s.decrypt(&s.ev.rotate(&ct, k, &gks).unwrap()),
            20.0,
        );
    }
    let hoisted = s.ev.rotate_hoisted(&ct, &steps, &gks).unwrap();
    for (h, &k) in hoisted.iter().zip(&steps) {
        assert_precision(&rot(k), &s.decrypt(h), 20.0);
    }
    // Missing key.
    assert!(matches!(
        s.ev.rotate(&ct, 4, &gks),
        Err(Error::MissingRotationKey { step: 4 })
    ));
    // Any step from power-of-two keys.
    let pow2 = kg.galois_keys_pow2(&s.sk, false).unwrap();
    for k in [13i64, -13, 4095, 2049] {
        assert_precision(
            &rot(k),
            &s.decrypt(&s.ev.rotate(&ct, k, &pow2).unwrap()),
            18.0,
        );
    }
    let h = s.ev.rotate_hoisted(&ct, &[6, 13], &pow2).unwrap();
    assert_precision(&rot(13), &s.decrypt(&h[1]), 18.0);
}

#[test]
fn sparse_rotation_rotate_and_sum_and_conjugation() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let mut kg = KeyGenerator::from_seed(&s.params, [11; 32]);
    let gks = kg.galois_keys_pow2(&s.sk, true).unwrap();
    let v = vector(64, 30, -1.0, 1.0);
    let ct = s.encrypt(&v, 2);
    assert_eq!(ct.slots(), 64);
    let r = s.decrypt(&s.ev.rotate(&ct, 5, &gks).unwrap());
    let want: Vec<f64> = (0..64).map(|i| v[(i + 5) % 64]).collect();
    assert_precision(&want, &r[..64], 20.0);

    let span = 16;
    let got = s.decrypt(&s.ev.rotate_and_sum(&ct, span, &gks).unwrap());
    let want: Vec<f64> = (0..64)
        .map(|i| (0..span).map(|t| v[(i + t) % 64]).sum())
        .collect();
    assert_precision(&want, &got, 20.0);
    assert!(matches!(
        s.ev.rotate_and_sum(&ct, 3, &gks),
        Err(Error::InvalidSpan { span: 3, slots: 64 })
    ));

    let z: Vec<Complex64> = (0..64).map(|i| Complex64::new(v[i], v[63 - i])).collect();
    let pt = s
        .enc
        .encode_complex(&z, 2, s.params.default_scale())
        .unwrap();
    let cz = Encryptor::from_seed(&s.pk, [5; 32]).encrypt(&pt).unwrap();
    let conj = s.ev.conjugate(&cz, &gks).unwrap();
    let out = s
        .enc
        .decode_complex(&Decryptor::from_seed(&s.sk, [0; 32]).decrypt(&conj).unwrap());
    let re: Vec<f64> = out.iter().map(|c| c.re).collect();
    let im: Vec<f64> = out.iter().map(|c| c.im).collect();
    assert_precision(&v, &re, 20.0);
    assert_precision(&v.iter().rev().map(|x| -x).collect::<Vec<_>>(), &im, 20.0);
}

#[test]
fn mismatches_are_errors() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let v = vector(4096, 40, -1.0, 1.0);
    let a = s.encrypt(&v, 2);
    let b = s.ev.drop_level(&a, 1).unwrap();
    assert!(matches!(
        s.ev.add(&a, &b),
        Err(Error::LevelMismatch { left: 2, right: 1 })
    ));
    let mut c = a.clone();
    c.set_scale(a.scale() * 2.0);
    assert!(matches!(s.ev.add(&a, &c), Err(Error::ScaleMismatch { .. })));
    let sq = s.ev.multiply(&a, &a).unwrap();
    assert!(matches!(
        s.ev.multiply(&sq, &a),
        Err(Error::DegreeMismatch { degree: 2, .. })
    ));
    let low = s.ev.drop_level(&a, 2).unwrap();
    assert!(matches!(
        s.ev.rescale(&low),
        Err(Error::LevelExhausted { level: 0, .. })
    ));
    let short = s.encrypt(&v[..8], 2);
    assert!(matches!(
        s.ev.add(&a, &short),
        Err(Error::SlotsMismatch { .. })
    ));
    // Keys from other parameters are rejected.
    let mut lit = Preset::N13L2.literal();
    lit.log_scale = 39;
    let other = Parameters::new(&lit).unwrap();
    let mut kg = KeyGenerator::from_seed(&other, [2; 32]);
    let osk = kg.secret_key();
    let orlk = kg.relin_key(&osk).unwrap();
    assert!(matches!(
        s.ev.relinearize(&sq, &orlk),
        Err(Error::ParametersMismatch { .. })
    ));
    assert!(matches!(
        KeyGenerator::from_seed(&s.params, [0; 32]).public_key(&osk),
        Err(Error::ParametersMismatch { .. })
    ));
}

#[cfg(feature = "parallel")]
#[test]
fn results_are_identical_for_any_thread_count() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let gks = KeyGenerator::from_seed(&s.params, [4; 32])
        .galois_keys(&s.sk, &[1, 3], false)
        .unwrap();
    let v = vector(4096, 50, -1.0, 1.0);
    let ct = s.encrypt(&v, 2);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let m = s.ev.multiply_relin(&ct, &ct, &s.rlk).unwrap();
            let m = s.ev.rescale(&m).unwrap();
            let r = s.ev.rotate(&m, 3, &gks).unwrap();
            let h = s.ev.rotate_hoisted(&ct, &[1, 3], &gks).unwrap();
            let pt = s.enc.encode(&v, 2, s.params.default_scale()).unwrap();
            let mut acc = s.ev.multiply_plain(&ct, &pt).unwrap();
            s.ev.multiply_plain_acc(&mut acc, &h[1], &pt).unwrap();
            (r, h, acc)
        })
    };
    let one = run(1);
    for t in [2, 3, 4] {
        assert_eq!(one, run(t), "{t} threads");
    }
}

/// The 18-level chain at N = 2^15 (slow under the test profile): `THEX_SLOW_TESTS=1`.
#[test]
fn slow_chain_using_every_level_n15() {
    if std::env::var("THEX_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped (set THEX_SLOW_TESTS=1)");
        return;
    }
    let s = setup(Parameters::preset(Preset::N15L18));
    let levels = s.params.max_level();
    let slots = s.params.max_slots();
    let mut ct = s.encrypt(&vector(slots, 100, 0.8, 1.2), levels);
    let mut want = vector(slots, 100, 0.8, 1.2);
    for i in 1..=levels {
        let x = vector(slots, 100 + i as u64, 0.8, 1.2);
        let ql = s.params.q_moduli()[ct.level()] as f64;
        let pt = s.enc.encode(&x, ct.level(), ql).unwrap();
        let cx = Encryptor::from_seed(&s.pk, [i as u8; 32])
            .encrypt(&pt)
            .unwrap();
        s.ev.multiply_relin_assign(&mut ct, &cx, &s.rlk).unwrap();
        s.ev.rescale_assign(&mut ct).unwrap();
        want.iter_mut().zip(&x).for_each(|(w, v)| *w *= v);
    }
    assert_eq!(ct.level(), 0);
    // The issue asks for >= 12 bits; exact scale management keeps far more.
    let st = assert_precision(&want, &s.decrypt(&ct), 18.0);
    eprintln!(
        "{levels}-level chain N=2^15: min {:.2} bits, mean {:.2}",
        st.min_bits, st.mean_bits
    );
}

#[test]
fn compact_plaintext_products_are_bit_identical_to_ntt_plaintexts() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let scale = s.params.default_scale();
    let xs: Vec<Vec<f64>> = (0..3).map(|i| vector(4096, 80 + i, -1.0, 1.0)).collect();
    let ws: Vec<Vec<f64>> = (0..3).map(|i| vector(4096, 90 + i, -4.0, 4.0)).collect();
    let cts: Vec<Ciphertext> = xs
        .iter()
        .map(|x| s.ev.drop_level(&s.encrypt(x, 2), 1).unwrap())
        .collect();
    // Plaintexts at level 1 and 2 (a higher plaintext level uses its prefix).
    let compact: Vec<CompactPlaintext> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| s.enc.encode_compact(w, 1 + i % 2, scale).unwrap())
        .collect();
    for (c, w) in compact.iter().zip(&ws) {
        let full = s.enc.encode(w, c.level(), scale).unwrap();
        assert_eq!(c.expand(&s.params), full, "expand == encode");
        assert_eq!(c.heap_bytes(), 8 * s.params.n());
    }
    let mut acc = s.ev.multiply_compact(&cts[0], &compact[0]).unwrap();
    let mut reference =
        s.ev.multiply_plain(&cts[0], &compact[0].expand(&s.params))
            .unwrap();
    assert_eq!(acc, reference);
    for (c, p) in cts.iter().zip(&compact).skip(1) {
        s.ev.multiply_compact_acc(&mut acc, c, p).unwrap();
        s.ev.multiply_plain_acc(&mut reference, c, &p.expand(&s.params))
            .unwrap();
    }
    assert_eq!(acc, reference, "bit-identical to the NTT-form products");
    let want: Vec<f64> = (0..4096)
        .map(|j| (0..3).map(|i| xs[i][j] * ws[i][j]).sum())
        .collect();
    assert_precision(&want, &s.decrypt(&s.ev.rescale(&acc).unwrap()), 16.0);

    // Degree-2 operands accumulate all three polynomials.
    let sq =
        s.ev.multiply(&s.encrypt(&xs[0], 2), &s.encrypt(&xs[1], 2))
            .unwrap();
    let c2 = s.enc.encode_compact(&ws[2], 2, scale).unwrap();
    assert_eq!(
        s.ev.multiply_compact(&sq, &c2).unwrap(),
        s.ev.multiply_plain(&sq, &c2.expand(&s.params)).unwrap()
    );

    // Bad operands are rejected and leave the accumulator unchanged.
    let low = s.enc.encode_compact(&ws[0], 0, scale).unwrap();
    assert!(matches!(
        s.ev.multiply_compact_acc(&mut acc, &cts[0], &low),
        Err(Error::LevelMismatch { left: 1, right: 0 })
    ));
    let wrong_scale = s.enc.encode_compact(&ws[0], 1, scale * 2.0).unwrap();
    assert!(matches!(
        s.ev.multiply_compact_acc(&mut acc, &cts[0], &wrong_scale),
        Err(Error::ScaleMismatch { .. })
    ));
    let short = s.enc.encode_compact(&ws[0][..8], 1, scale).unwrap();
    assert!(matches!(
        s.ev.multiply_compact_acc(&mut acc, &cts[0], &short),
        Err(Error::SlotsMismatch { .. })
    ));
    assert_eq!(acc, reference);
    // Coefficients beyond i64 are an error, not a wrap.
    assert!(matches!(
        s.enc.encode_compact(&[1.0], 1, 2f64.powi(63)),
        Err(Error::EncodingOverflow { .. })
    ));
}

#[test]
fn fused_ciphertext_multiply_accumulate() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let xs: Vec<Vec<f64>> = (0..6).map(|i| vector(4096, 80 + i, -1.0, 1.0)).collect();
    let cts: Vec<Ciphertext> = xs.iter().map(|x| s.encrypt(x, 2)).collect();
    // Sum of three tensor products, fused from a degree-1 start and from a degree-2 one.
    let mut reference = s.ev.multiply(&cts[0], &cts[1]).unwrap();
    for p in [(2, 3), (4, 5)] {
        s.ev.add_assign(
            &mut reference,
            &s.ev.multiply(&cts[p.0], &cts[p.1]).unwrap(),
        )
        .unwrap();
    }
    let mut acc = s.ev.multiply(&cts[0], &cts[1]).unwrap();
    s.ev.multiply_acc(&mut acc, &cts[2], &cts[3]).unwrap();
    s.ev.multiply_acc(&mut acc, &cts[4], &cts[5]).unwrap();
    assert_eq!(acc, reference, "fused result is bit-identical");
    let mut from_deg1 =
        s.ev.multiply_plain(
            &cts[0],
            &s.enc.encode(&xs[1], 2, s.params.default_scale()).unwrap(),
        )
        .unwrap();
    s.ev.multiply_acc(&mut from_deg1, &cts[2], &cts[3]).unwrap();
    assert_eq!(from_deg1.degree(), 2);

    let got =
        s.ev.rescale(&s.ev.relinearize(&acc, &s.rlk).unwrap())
            .unwrap();
    let want: Vec<f64> = (0..4096)
        .map(|j| xs[0][j] * xs[1][j] + xs[2][j] * xs[3][j] + xs[4][j] * xs[5][j])
        .collect();
    assert_precision(&want, &s.decrypt(&got), 18.0);

    // Mismatched levels and scales are rejected.
    let low = s.ev.drop_level(&cts[2], 1).unwrap();
    assert!(matches!(
        s.ev.multiply_acc(&mut acc, &low, &cts[3]),
        Err(Error::LevelMismatch { .. })
    ));
    let mut other_scale = cts[3].clone();
    other_scale.set_scale(cts[3].scale() * 2.0);
    assert!(matches!(
        s.ev.multiply_acc(&mut acc, &cts[2], &other_scale),
        Err(Error::ScaleMismatch { .. })
    ));
}

#[test]
fn sums_of_products_equal_chained_accumulation() {
    let s = setup(Parameters::preset(Preset::N13L2));
    let scale = s.params.default_scale();
    // 20 products: more than one lazily reduced chunk on the 50-bit prime.
    let xs: Vec<Vec<f64>> = (0..40).map(|i| vector(4096, 300 + i, -1.0, 1.0)).collect();
    let cts: Vec<Ciphertext> = xs.iter().map(|x| s.encrypt(x, 2)).collect();
    let pairs: Vec<(&Ciphertext, &Ciphertext)> =
        (0..20).map(|i| (&cts[2 * i], &cts[2 * i + 1])).collect();
    let sum = s.ev.multiply_sum(&pairs).unwrap();
    assert_eq!(
        sum,
        chained_sum(&s.ev, &pairs),
        "tensor sum is bit-identical"
    );
    let got =
        s.ev.rescale(&s.ev.relinearize(&sum, &s.rlk).unwrap())
            .unwrap();
    let want: Vec<f64> = (0..4096)
        .map(|j| (0..20).map(|i| xs[2 * i][j] * xs[2 * i + 1][j]).sum())
        .collect();
    assert_precision(&want, &s.decrypt(&got), 14.0);

    // Plaintext products, one plaintext a level above the ciphertexts.
    let pts: Vec<Plaintext> = (0..20)
        .map(|i| {
            s.enc
                .encode(&xs[2 * i + 1], if i == 3 { 2 } else { 1 }, scale)
                .unwrap()
        })
        .collect();
    let low: Vec<Ciphertext> = (0..20)
        .map(|i| s.ev.drop_level(&cts[2 * i], 1).unwrap())
        .collect();
    let plain_pairs: Vec<(&Ciphertext, &Plaintext)> = low.iter().zip(&pts).collect();
    assert_eq!(
        s.ev.multiply_plain_sum(&plain_pairs).unwrap(),
        chained_plain_sum(&s.ev, &plain_pairs),
        "plain sum is bit-identical"
    );

    // Bad input is rejected.
    assert!(matches!(s.ev.multiply_sum(&[]), Err(Error::EmptySum)));
    assert!(matches!(s.ev.multiply_plain_sum(&[]), Err(Error::EmptySum)));
    assert!(matches!(
        s.ev.multiply_sum(&[pairs[0], (&low[0], &low[1])]),
        Err(Error::LevelMismatch { .. })
    ));
    let mut other_scale = cts[1].clone();
    other_scale.set_scale(cts[1].scale() * 2.0);
    assert!(matches!(
        s.ev.multiply_sum(&[pairs[0], (&cts[0], &other_scale)]),
        Err(Error::ScaleMismatch { .. })
    ));
    let degree2 = s.ev.multiply(&cts[0], &cts[1]).unwrap();
    assert!(matches!(
        s.ev.multiply_sum(&[(&degree2, &cts[1])]),
        Err(Error::DegreeMismatch { .. })
    ));
    assert!(matches!(
        s.ev.multiply_plain_sum(&[plain_pairs[0], (&cts[0], &pts[3])]),
        Err(Error::LevelMismatch { .. })
    ));
    assert!(matches!(
        s.ev.multiply_plain_sum(&[(&cts[0], &pts[0])]),
        Err(Error::LevelMismatch { .. })
    ));
}

#[test]
fn sums_of_products_above_the_ifma_bound_fall_back_bit_identically() {
    // A 60-bit prime takes the scalar path of the lazy sums, the 40-bit one the IFMA kernel.
    let params = Parameters::new_insecure(&ParametersLiteral {
        log_n: 10,
        log_q: vec![60, 40],
        log_p: vec![60],
        log_scale: 40,
        dnum: 0,
        secret: SecretDistribution::Ternary,
        error_std: 3.2,
    })
    .unwrap();
    let s = setup(params);
    let xs: Vec<Vec<f64>> = (0..40).map(|i| vector(512, 700 + i, -1.0, 1.0)).collect();
    let cts: Vec<Ciphertext> = xs.iter().map(|x| s.encrypt(x, 1)).collect();
    let pairs: Vec<(&Ciphertext, &Ciphertext)> =
        (0..20).map(|i| (&cts[2 * i], &cts[2 * i + 1])).collect();
    assert_eq!(
        s.ev.multiply_sum(&pairs).unwrap(),
        chained_sum(&s.ev, &pairs)
    );
    let pt = s.enc.encode(&xs[1], 1, s.params.default_scale()).unwrap();
    let plain: Vec<(&Ciphertext, &Plaintext)> = cts.iter().map(|c| (c, &pt)).collect();
    assert_eq!(
        s.ev.multiply_plain_sum(&plain).unwrap(),
        chained_plain_sum(&s.ev, &plain)
    );
}
