//! Serialization round trips and a corpus of corrupted inputs: each must give an error, none panic.

use ckks::serialize::{GALOIS_VERSION, MAGIC};
use ckks::*;

fn toy(log_scale: u32) -> Parameters {
    Parameters::new_insecure(&ParametersLiteral {
        log_n: 5,
        log_q: vec![40, 30, 30],
        log_p: vec![40],
        log_scale,
        dnum: 0,
        secret: SecretDistribution::Ternary,
        error_std: 3.2,
    })
    .unwrap()
}

struct Objects {
    params: Parameters,
    sk: SecretKey,
    ct: Ciphertext,
    ct3: Ciphertext,
    seeded: SeededCiphertext,
    pt: Plaintext,
    pk: PublicKey,
    rlk: RelinKey,
    gks: GaloisKeys,
}

fn objects(params: Parameters) -> Objects {
    let mut kg = KeyGenerator::from_seed(&params, [5; 32]);
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk).unwrap();
    let rlk = kg.relin_key(&sk).unwrap();
    let gks = kg.galois_keys(&sk, &[1, -2], true).unwrap();
    let enc = Encoder::new(&params);
    let pt = enc
        .encode(&[0.5, -0.25, 0.125], 2, params.default_scale())
        .unwrap();
    let ct = Encryptor::from_seed(&pk, [1; 32]).encrypt(&pt).unwrap();
    let ct3 = Evaluator::new(&params).multiply(&ct, &ct).unwrap();
    let seeded = Decryptor::from_seed(&sk, [2; 32])
        .encrypt_seeded(&pt)
        .unwrap();
    Objects {
        params,
        sk,
        ct,
        ct3,
        seeded,
        pt,
        pk,
        rlk,
        gks,
    }
}

type Parse = fn(&Parameters, &[u8]) -> Result<()>;

fn corpus(o: &Objects) -> Vec<(&'static str, Vec<u8>, Parse)> {
    vec![
        ("ciphertext", o.ct.to_bytes(&o.params), |p, b| {
            Ciphertext::from_bytes(p, b).map(drop)
        }),
        ("ciphertext deg 2", o.ct3.to_bytes(&o.params), |p, b| {
            Ciphertext::from_bytes(p, b).map(drop)
        }),
        ("seeded", o.seeded.to_bytes(&o.params), |p, b| {
            SeededCiphertext::from_bytes(p, b).map(drop)
        }),
        ("plaintext", o.pt.to_bytes(&o.params), |p, b| {
            Plaintext::from_bytes(p, b).map(drop)
        }),
        ("public key", o.pk.to_bytes(), |p, b| {
            PublicKey::from_bytes(p, b).map(drop)
        }),
        ("relin key", o.rlk.to_bytes(), |p, b| {
            RelinKey::from_bytes(p, b).map(drop)
        }),
        ("galois keys", o.gks.to_bytes(), |p, b| {
            GaloisKeys::from_bytes(p, b).map(drop)
        }),
        ("secret key", o.sk.to_bytes_secret(), |p, b| {
            SecretKey::from_bytes_secret(p, b).map(drop)
        }),
    ]
}

#[test]
fn round_trips() {
    let o = objects(toy(30));
    let p = &o.params;
    assert_eq!(Ciphertext::from_bytes(p, &o.ct.to_bytes(p)).unwrap(), o.ct);
    assert_eq!(
        Ciphertext::from_bytes(p, &o.ct3.to_bytes(p)).unwrap(),
        o.ct3
    );
    assert_eq!(
        SeededCiphertext::from_bytes(p, &o.seeded.to_bytes(p)).unwrap(),
        o.seeded
    );
    assert_eq!(Plaintext::from_bytes(p, &o.pt.to_bytes(p)).unwrap(), o.pt);
    assert_eq!(PublicKey::from_bytes(p, &o.pk.to_bytes()).unwrap(), o.pk);
    assert_eq!(RelinKey::from_bytes(p, &o.rlk.to_bytes()).unwrap(), o.rlk);
    assert_eq!(GaloisKeys::from_bytes(p, &o.gks.to_bytes()).unwrap(), o.gks);
    // The secret key round trip decrypts identically.
    let sk2 = SecretKey::from_bytes_secret(p, &o.sk.to_bytes_secret()).unwrap();
    let d1 = Decryptor::from_seed(&o.sk, [0; 32]).decrypt(&o.ct).unwrap();
    let d2 = Decryptor::from_seed(&sk2, [0; 32]).decrypt(&o.ct).unwrap();
    assert_eq!(d1, d2);
    // Seeded uploads are about half the size.
    let full = o.seeded.expand(p).to_bytes(p).len();
    let seeded = o.seeded.to_bytes(p).len();
    assert!(seeded * 2 < full + 100, "{seeded} vs {full}");
    // Residues are bit-packed: 2^5 coefficients x the primes' bit lengths per polynomial.
    assert_eq!(o.ct.polys()[0].q_limbs(), 3);
    let bits: u32 = p
        .q_moduli()
        .iter()
        .map(|q| 64 - (q - 1).leading_zeros())
        .sum();
    assert!(bits < 3 * 40, "{:?}", p.q_moduli());
    assert_eq!(full, 15 + 1 + 8 + 4 + 2 * (2 + 32 * bits as usize / 8));
}

/// Version-1 bytes of a ciphertext: residues as little-endian `u64`.
fn version1_bytes(p: &Parameters, ct: &Ciphertext) -> Vec<u8> {
    let mut v = MAGIC.to_le_bytes().to_vec();
    v.extend(1u16.to_le_bytes());
    v.push(1);
    v.extend(p.id().to_le_bytes());
    v.push(ct.polys().len() as u8);
    v.extend(ct.scale().to_bits().to_le_bytes());
    v.extend((ct.slots() as u32).to_le_bytes());
    for poly in ct.polys() {
        v.push(poly.q_limbs() as u8);
        v.push(poly.p_limbs() as u8);
        for k in 0..poly.q_limbs() {
            for &x in poly.limb(k) {
                v.extend(x.to_le_bytes());
            }
        }
    }
    v
}

#[test]
fn version_1_is_still_read() {
    let o = objects(toy(30));
    let p = &o.params;
    let v1 = version1_bytes(p, &o.ct);
    assert_eq!(Ciphertext::from_bytes(p, &v1).unwrap(), o.ct);
    assert!(v1.len() > o.ct.to_bytes(p).len());
    // Unreduced residues are still rejected there.
    let mut bad = v1.clone();
    let end = bad.len();
    bad[end - 8..].fill(0xFF);
    assert!(Ciphertext::from_bytes(p, &bad).is_err());
    // The secret key format did not change: a version-1 file still loads.
    let mut sk = o.sk.to_bytes_secret();
    sk[4..6].copy_from_slice(&1u16.to_le_bytes());
    let sk1 = SecretKey::from_bytes_secret(p, &sk).unwrap();
    assert_eq!(sk1.to_bytes_secret(), o.sk.to_bytes_secret());
}

#[test]
fn corrupted_inputs_are_rejected_without_panics() {
    let o = objects(toy(30));
    let other = toy(29);
    let mut checked = 0;
    for (name, bytes, parse) in corpus(&o) {
        parse(&o.params, &bytes).unwrap_or_else(|e| panic!("{name}: valid input rejected: {e}"));
        // Every truncation.
        for len in 0..bytes.len() {
            assert!(
                parse(&o.params, &bytes[..len]).is_err(),
                "{name}: truncated to {len}"
            );
            checked += 1;
        }
        // Trailing garbage.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse(&o.params, &longer).is_err(), "{name}: trailing byte");
        // Every bit flip in the header (magic, version, type, parameter id).
        for bit in 0..15 * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(parse(&o.params, &b).is_err(), "{name}: header bit {bit}");
            checked += 1;
        }
        // Eight 0xFF bytes hold at least one whole bit-packed residue, which then is all ones
        // (>= its prime): the last polynomial's residues (at least 32 x 3 of >= 30 bits, 360
        // bytes) end the buffer in every type but the secret key.
        if name != "secret key" {
            for end in (0..45).map(|j| bytes.len() - 8 * j) {
                let mut b = bytes.clone();
                b[end - 8..end].fill(0xFF);
                assert!(
                    parse(&o.params, &b).is_err(),
                    "{name}: all-ones bytes ending at {end}"
                );
                checked += 1;
            }
        } else {
            let mut b = bytes.clone();
            b[20] = 2;
            assert!(parse(&o.params, &b).is_err(), "secret coefficient 2");
        }
        // Objects from other parameters.
        assert!(
            matches!(
                parse(&other, &bytes),
                Err(Error::Deserialize(
                    DeserializeError::ParametersMismatch { .. }
                ))
            ),
            "{name}: other parameters"
        );
        // Empty and random inputs.
        assert!(parse(&o.params, &[]).is_err());
        assert!(parse(&o.params, &[0xAB; 64]).is_err());
    }
    assert!(checked > 1000);
}

#[test]
fn wrong_type_version_and_huge_lengths() {
    let o = objects(toy(30));
    let p = &o.params;
    let ct = o.ct.to_bytes(p);
    assert!(matches!(
        RelinKey::from_bytes(p, &ct),
        Err(Error::Deserialize(DeserializeError::WrongType {
            found: 1,
            expected: 5
        }))
    ));
    let mut v = ct.clone();
    v[4] = 9;
    assert!(matches!(
        Ciphertext::from_bytes(p, &v),
        Err(Error::Deserialize(DeserializeError::BadVersion {
            found: 9,
            ..
        }))
    ));
    // Galois keys are read in their own version only: keys of version 2 switched to σ(s)
    // and would rotate wrongly; no other object has version 3.
    let mut g = o.gks.to_bytes();
    assert_eq!(u16::from_le_bytes([g[4], g[5]]), GALOIS_VERSION);
    g[4] = 2;
    assert!(matches!(
        GaloisKeys::from_bytes(p, &g),
        Err(Error::Deserialize(DeserializeError::BadVersion {
            found: 2,
            supported: GALOIS_VERSION
        }))
    ));
    let mut v = ct.clone();
    v[4] = GALOIS_VERSION as u8;
    assert!(Ciphertext::from_bytes(p, &v).is_err());
    let mut m = ct.clone();
    m[..4].copy_from_slice(&(MAGIC ^ 1).to_le_bytes());
    assert!(matches!(
        Ciphertext::from_bytes(p, &m),
        Err(Error::Deserialize(DeserializeError::BadMagic { .. }))
    ));
    // Header offsets: 15 bytes, then count(1) scale(8) slots(4) and per poly nq(1) np(1).
    let mut h = ct.clone();
    h[15] = 200;
    assert!(
        Ciphertext::from_bytes(p, &h).is_err(),
        "huge polynomial count"
    );
    let mut h = ct.clone();
    h[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Ciphertext::from_bytes(p, &h),
        Err(Error::Deserialize(DeserializeError::LimitExceeded {
            field: "slots",
            ..
        }))
    ));
    let mut h = ct.clone();
    h[28] = 255;
    assert!(matches!(
        Ciphertext::from_bytes(p, &h),
        Err(Error::Deserialize(DeserializeError::LimitExceeded {
            field: "q limbs",
            ..
        }))
    ));
    let mut h = ct.clone();
    h[16..24].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
    assert!(Ciphertext::from_bytes(p, &h).is_err(), "NaN scale");
    let mut g = o.gks.to_bytes();
    g[15..19].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        GaloisKeys::from_bytes(p, &g),
        Err(Error::Deserialize(DeserializeError::LimitExceeded { .. }))
    ));
    let mut g = o.gks.to_bytes();
    g[15..19].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(
        GaloisKeys::from_bytes(p, &g),
        Err(Error::Deserialize(DeserializeError::Truncated { .. }))
    ));
}

#[test]
fn deserialized_keys_work() {
    let params = Parameters::preset(Preset::N13L2);
    let o = objects(params);
    let p = &o.params;
    let rlk = RelinKey::from_bytes(p, &o.rlk.to_bytes()).unwrap();
    let gks = GaloisKeys::from_bytes(p, &o.gks.to_bytes()).unwrap();
    let pk = PublicKey::from_bytes(p, &o.pk.to_bytes()).unwrap();
    let enc = Encoder::new(p);
    let v = [0.5, -0.25, 0.125, 0.75];
    let ct = Encryptor::from_seed(&pk, [8; 32])
        .encrypt(&enc.encode(&v, 2, p.default_scale()).unwrap())
        .unwrap();
    let ev = Evaluator::new(p);
    let sq = ev
        .rescale(&ev.multiply_relin(&ct, &ct, &rlk).unwrap())
        .unwrap();
    let rot = ev.rotate(&sq, 1, &gks).unwrap();
    let out = enc.decode(&Decryptor::from_seed(&o.sk, [0; 32]).decrypt(&rot).unwrap());
    let want = [0.0625, 0.015625, 0.5625, 0.25];
    precision::assert_precision(&want, &out, 18.0);
}

#[test]
fn sizes_are_known_before_reading() {
    let o = objects(toy(30));
    let p = &o.params;
    assert_eq!(o.rlk.to_bytes().len(), RelinKey::serialized_len(p));
    assert_eq!(o.gks.to_bytes().len(), GaloisKeys::serialized_len(p, 3));
    assert_eq!(
        o.seeded.to_bytes(p).len(),
        SeededCiphertext::serialized_len(p, o.seeded.level())
    );
    let top = p.max_level();
    let fresh = Decryptor::from_seed(&o.sk, [3; 32])
        .encrypt_seeded(
            &Encoder::new(p)
                .encode(&[1.0], top, p.default_scale())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        fresh.to_bytes(p).len(),
        SeededCiphertext::serialized_len(p, top)
    );
    // Expanded: b and a of every digit, one u64 per residue, plus the permutation.
    let residues = p.n() * (p.q_moduli().len() + p.p_moduli().len());
    assert!(RelinKey::expanded_len(p) >= 2 * 8 * residues);
    assert_eq!(
        GaloisKeys::expanded_len(p, 3),
        3 * (RelinKey::expanded_len(p) + 4 * p.n())
    );
}

#[test]
fn exact_galois_reads_refuse_any_other_key_set() {
    let o = objects(toy(30));
    let p = &o.params;
    let bytes = o.gks.to_bytes();
    let elements = o.gks.galois_elements();
    let exact = GaloisKeys::from_bytes_exact(p, &bytes, &elements).unwrap();
    assert_eq!(exact.galois_elements(), elements);

    let msg = |r: Result<GaloisKeys>| r.unwrap_err().to_string();
    // A missing or an extra key.
    assert!(
        msg(GaloisKeys::from_bytes_exact(p, &bytes, &elements[..2])).contains("Galois key bytes")
    );
    let mut more = elements.clone();
    more.push(2 * p.n() as u64 - 1);
    assert!(msg(GaloisKeys::from_bytes_exact(p, &bytes, &more)).contains("Galois key bytes"));
    // Another key in place of an expected one.
    let unused = (3..2 * p.n() as u64)
        .step_by(2)
        .find(|g| !elements.contains(g))
        .unwrap();
    let mut other = elements.clone();
    other[1] = unused;
    other.sort_unstable();
    assert!(msg(GaloisKeys::from_bytes_exact(p, &bytes, &other)).contains("Galois element"));
    // Padded bytes.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 8]);
    assert!(msg(GaloisKeys::from_bytes_exact(p, &padded, &elements)).contains("Galois key bytes"));
}
