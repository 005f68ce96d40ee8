//! A hostile server's bundle: every field a client computes with, set to zero, huge, overflowing
//! or non-finite, is refused with an error naming the field, by `ClientBundle::from_bytes`, by
//! `ClientSession::from_seed` (which validates the struct it is given) and, for the shapes, by
//! `ClientBundle::schedule`; nothing panics. An honest run through the rounds then checks what
//! `encrypt_ids`, `decrypt_logits` and `prediction` refuse.

#[path = "common/bundle.rs"]
mod bundle;

use std::panic::{AssertUnwindSafe, catch_unwind};

use bundle::small_bundle;
use ckks::{Decryptor, Encoder, Parameters, SecretKey};
use thex_client::{
    At, BucketLayouts, ClientBundle, ClientSession, EncryptedLogits, Error, ReluItem, ReluRequest,
    Schedule, prediction,
};

const SEED: [u8; 32] = [7; 32];

/// Runs `f`, turning a panic into a test failure that names `what`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

/// Asserts `r` is an error whose message contains `field`.
fn refused<T>(what: &str, field: &str, r: thex_client::Result<T>) {
    match r {
        Err(e) => assert!(
            e.to_string().contains(field),
            "{what}: the error does not name {field}: {e}"
        ),
        Ok(_) => panic!("{what}: accepted"),
    }
}

type Forge = fn(&mut ClientBundle);

/// `(field named by the error, forgery, whether the bytes carry it)`: non-finite floats
/// become JSON `null`, which the header parser refuses without naming the field.
fn forgeries() -> Vec<(&'static str, Forge, bool)> {
    vec![
        (
            "hidden",
            |b| (b.dims.hidden, b.embeddings.hidden) = (0, 0),
            true,
        ),
        ("dims.heads", |b| b.dims.heads = 0, true),
        ("dims.head_dim", |b| b.dims.head_dim = 0, true),
        ("dims.head_dim", |b| b.dims.heads = usize::MAX, true),
        // 2 × (2^63 + 4) wraps to the hidden width 8.
        ("dims.head_dim", |b| b.dims.head_dim = (1 << 63) + 4, true),
        ("dims.heads", wide_heads, true),
        ("dims.ffn", |b| b.dims.ffn = 0, true),
        ("dims.ffn", |b| b.dims.ffn = usize::MAX, true),
        ("dims.ffn", |b| b.dims.ffn = 1 << 30, true),
        (
            "dims.reciprocal_hidden",
            |b| b.dims.reciprocal_hidden = 0,
            true,
        ),
        (
            "dims.reciprocal_hidden",
            |b| b.dims.reciprocal_hidden = usize::MAX / 2 + 1,
            true,
        ),
        (
            "dims.reciprocal_hidden",
            |b| b.dims.reciprocal_hidden = 1 << 40,
            true,
        ),
        ("dims.layers", |b| b.dims.layers = 0, true),
        ("dims.layers", |b| b.dims.layers = 4097, true),
        ("dims.layers", |b| b.dims.layers = usize::MAX, true),
        ("dims.softmax_power", |b| b.dims.softmax_power = 0, true),
        (
            "dims.softmax_power",
            |b| b.dims.softmax_power = u32::MAX,
            true,
        ),
        (
            "dims.softmax_scale",
            |b| b.dims.softmax_scale = f64::NAN,
            false,
        ),
        (
            "dims.softmax_shift",
            |b| b.dims.softmax_shift = f64::INFINITY,
            false,
        ),
        ("dims.labels", |b| b.dims.labels.clear(), true),
        (
            "labels",
            |b| b.dims.labels = vec![String::new(); 5000],
            true,
        ),
        (
            "embeddings.vocab",
            |b| (b.embeddings.vocab, b.embeddings.word) = (0, Vec::new()),
            true,
        ),
        (
            "embeddings.vocab",
            |b| b.embeddings.vocab = usize::MAX,
            true,
        ),
        ("embeddings.hidden", wider_tables, true),
        ("embeddings.word", |b| b.embeddings.word[5] = f32::NAN, true),
        (
            "embeddings.ln_gamma",
            |b| b.embeddings.ln_gamma[0] = f32::INFINITY,
            true,
        ),
        ("embeddings.word", |b| b.embeddings.word.truncate(47), true),
        (
            "embeddings.position",
            |b| b.embeddings.position.clear(),
            true,
        ),
        (
            "embeddings.position",
            |b| b.embeddings.position.truncate(63),
            true,
        ),
        (
            "embeddings.token_type",
            |b| b.embeddings.token_type.push(0.0),
            true,
        ),
        ("embeddings.ln_beta", |b| b.embeddings.ln_beta.clear(), true),
        ("embeddings.ln_eps", |b| b.embeddings.ln_eps = -1.0, true),
        ("embeddings.ln_eps", |b| b.embeddings.ln_eps = 0.0, true),
        (
            "embeddings.ln_eps",
            |b| b.embeddings.ln_eps = f64::NAN,
            false,
        ),
        ("embeddings.pad_id", |b| b.embeddings.pad_id = 6, true),
        ("request_scale", |b| b.request_scale = 0.0, true),
        ("request_scale", |b| b.request_scale = -1.0, true),
        ("request_scale", |b| b.request_scale = 1e300, true),
        ("request_scale", |b| b.request_scale = f64::NAN, false),
        ("request_scale", |b| b.request_scale = f64::INFINITY, false),
        ("plans", |b| b.plans.clear(), true),
        ("plans[0].bucket", |b| b.plans[0].bucket = 0, true),
        ("plans[0].bucket", |b| b.plans[0].bucket = 3, true),
        ("plans[0].bucket", |b| b.plans[0].bucket = 8192, true),
        ("plans[0].bucket", |b| b.plans[0].bucket = usize::MAX, true),
        ("plans[1].bucket", |b| b.plans[1].bucket = 4, true),
        (
            "plans[0].galois_steps",
            |b| b.plans[0].galois_steps = vec![0],
            true,
        ),
        (
            "plans[0].galois_steps",
            |b| b.plans[0].galois_steps = vec![4096],
            true,
        ),
        (
            "plans[0].galois_steps",
            |b| b.plans[0].galois_steps = vec![usize::MAX],
            true,
        ),
        (
            "plans[0].galois_steps",
            |b| b.plans[0].galois_steps = vec![2, 1],
            true,
        ),
        (
            "plans[0].galois_steps",
            |b| b.plans[0].galois_steps = vec![1, 1],
            true,
        ),
        (
            "plans[1].galois_steps",
            |b| {
                b.plans[0].galois_steps = (1..=600).collect();
                b.plans[1].galois_steps = (601..=1100).collect();
            },
            true,
        ),
        (
            "plans[0].round_ciphertexts",
            |b| b.plans[0].round_ciphertexts.clear(),
            true,
        ),
        (
            "plans[0].round_ciphertexts",
            |b| b.plans[0].round_ciphertexts[3] = usize::MAX,
            true,
        ),
        (
            "plans[1].round_ciphertexts",
            |b| b.plans[1].round_ciphertexts.push(1),
            true,
        ),
        ("error_std", |b| b.params.error_std = 1e-9, true),
    ]
}

/// 8192 heads of width 1: more heads than the 4096 slots (tables widened to match).
fn wide_heads(b: &mut ClientBundle) {
    b.dims.heads = 8192;
    b.dims.head_dim = 1;
    widen(b, 8192);
}

/// Consistent tables of width 16 for a model of width 8.
fn wider_tables(b: &mut ClientBundle) {
    let dims_hidden = b.dims.hidden;
    widen(b, 16);
    b.dims.hidden = dims_hidden;
}

/// Every table and both widths resized to `h`.
fn widen(b: &mut ClientBundle, h: usize) {
    let e = &mut b.embeddings;
    let rows = e.position.len() / e.hidden;
    e.word.resize(e.vocab * h, 0.1);
    e.position.resize(rows * h, 0.1);
    for t in [&mut e.token_type, &mut e.ln_gamma, &mut e.ln_beta] {
        t.resize(h, 1.0);
    }
    (e.hidden, b.dims.hidden) = (h, h);
}

#[test]
fn the_valid_bundle_round_trips() {
    let b = small_bundle();
    assert_eq!(ClientBundle::from_bytes(&b.to_bytes()).unwrap(), b);
    let params = b.validate().unwrap();
    assert_eq!((params.max_slots(), params.max_level()), (4096, 6));
    assert!(params.log_qp() <= 218.0);
}

#[test]
fn every_hostile_field_is_refused_by_name() {
    let params = Parameters::new(&small_bundle().params).unwrap();
    for (field, forge, in_bytes) in forgeries() {
        let mut b = small_bundle();
        forge(&mut b);
        let what = format!("{field} (dims {:?}, plans {:?})", &b.dims, &b.plans);
        let bytes = no_panic(&what, || b.to_bytes());
        let from_bytes = no_panic(&what, || ClientBundle::from_bytes(&bytes));
        if in_bytes {
            refused(&format!("from_bytes, {what}"), field, from_bytes);
        } else {
            assert!(from_bytes.is_err(), "from_bytes accepted {what}");
        }
        let session = no_panic(&what, || ClientSession::from_seed(b.clone(), SEED));
        refused(&format!("ClientSession, {what}"), field, session);
        // The shapes are checked where the schedule is built, validated or not.
        if field.starts_with("dims.") {
            let sched = no_panic(&what, || b.schedule(&params, 4));
            refused(&format!("schedule, {what}"), field, sched);
        }
    }
}

#[test]
fn hostile_lengths_in_the_bytes_are_refused() {
    let b = small_bundle();
    let bytes = b.to_bytes();
    // Every truncation.
    for n in 0..bytes.len() {
        assert!(no_panic("truncation", || ClientBundle::from_bytes(&bytes[..n])).is_err());
    }
    let json_len = u64::from_le_bytes(bytes[6..14].try_into().unwrap()) as usize;
    let with_u64 = |at: usize, v: u64| {
        let mut x = bytes.clone();
        x[at..at + 8].copy_from_slice(&v.to_le_bytes());
        no_panic("length rewrite", || ClientBundle::from_bytes(&x))
    };
    refused("header length", "header", with_u64(6, 2 << 20));
    assert!(with_u64(6, u64::MAX).is_err());
    let word_len = 14 + json_len;
    refused(
        "word table length",
        "embeddings.word",
        with_u64(word_len, u64::MAX),
    );
    // A vocabulary with vocab × hidden = 2^62 and a word table claiming 2^62 values: 4·n
    // wraps to 0 in 64 bits, so the length must be checked against the bytes left.
    let mut huge = b.clone();
    huge.embeddings.vocab = 1 << 59;
    huge.embeddings.word.clear();
    let mut x = huge.to_bytes();
    let at = 14 + u64::from_le_bytes(x[6..14].try_into().unwrap()) as usize;
    x[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    refused(
        "2^62 word values",
        "embeddings.word",
        no_panic("2^62 word values", || ClientBundle::from_bytes(&x)),
    );
}

#[test]
fn layouts_refuse_buckets_and_heads_beyond_the_slots() {
    let dims = small_bundle().dims;
    for bucket in [0, 8192, usize::MAX] {
        let r = no_panic("layouts", || BucketLayouts::new(&dims, 4096, bucket));
        refused(&format!("bucket {bucket}"), "bucket", r);
    }
    let mut heads = dims.clone();
    (heads.heads, heads.head_dim, heads.hidden) = (1 << 20, 1, 1 << 20);
    refused("heads", "dims.heads", BucketLayouts::new(&heads, 4096, 4));
    heads.heads = usize::MAX;
    assert_eq!(BucketLayouts::slots_needed(&heads, 4), usize::MAX);
}

/// Encrypts `values` at `at`, as the server's requests and logits are.
fn encrypt_at(sk: &SecretKey, at: At, values: &[f64]) -> ckks::Ciphertext {
    let pt = Encoder::new(sk.params())
        .encode(values, at.level, at.scale)
        .unwrap();
    Decryptor::from_seed(sk, [3; 32]).encrypt(&pt).unwrap()
}

/// Answers every round of `sched` with requests of the right shape (all values 0.25).
fn answer_every_round(c: &mut ClientSession, sk: &SecretKey, sched: &Schedule) {
    let slots = sk.params().max_slots();
    for round in sched.rounds() {
        let items = round
            .items
            .iter()
            .map(|it| ReluItem {
                kind: it.kind,
                layer: round.layer,
                cts: (0..it.ciphertexts)
                    .map(|_| encrypt_at(sk, it.request, &vec![0.25; slots]))
                    .collect(),
            })
            .collect();
        let req = ReluRequest {
            round: round.number,
            nonce: [round.number as u8; 16],
            items,
        };
        assert_eq!(c.answer(&req).unwrap().items.len(), round.items.len());
    }
}

#[test]
fn encryption_and_decryption_refuse_what_is_out_of_bounds() {
    let b = small_bundle();
    let mut c = ClientSession::from_seed(b.clone(), SEED).unwrap();
    let params = c.params().clone();
    let sk = SecretKey::from_bytes_secret(&params, &c.secret_key_bytes()).unwrap();
    assert!(c.encrypt_ids(&[]).is_err());
    refused("token id", "vocabulary", c.encrypt_ids(&[6]));
    refused("9 tokens", "bucket", c.encrypt_ids(&[1; 9]));
    let sched = b.schedule(&params, 4).unwrap();
    let slots = params.max_slots();
    // Label c sits in slot c · bucket.
    let mut values = vec![0.0; slots];
    let layout = &sched.layouts().logits;
    for (label, v) in [(0, -1.5), (1, 2.5)] {
        let (ct, slot) = layout.position(0, label);
        assert_eq!((ct, slot), (0, label * 4));
        values[slot] = v;
    }
    let logits = |at: At| EncryptedLogits {
        bucket: 4,
        ct: encrypt_at(&sk, at, &values),
    };
    refused(
        "logits when idle",
        "idle",
        c.decrypt_logits(&logits(sched.logits())),
    );

    // After every round: logits at another level are refused, and end the session.
    let mut c = ClientSession::from_seed(b.clone(), SEED).unwrap();
    assert_eq!(c.encrypt_ids(&[1, 2, 3]).unwrap().bucket, 4);
    answer_every_round(&mut c, &sk, &sched);
    let mut high = sched.logits();
    high.level += 1;
    refused("logits level", "level", c.decrypt_logits(&logits(high)));
    assert!(matches!(
        c.decrypt_logits(&logits(sched.logits())),
        Err(Error::Refused { .. })
    ));

    // The same run with the right logits decrypts them label by label.
    let mut c = ClientSession::from_seed(b, SEED).unwrap();
    c.encrypt_ids(&[1, 2, 3]).unwrap();
    answer_every_round(&mut c, &sk, &sched);
    let p = c.decrypt_logits(&logits(sched.logits())).unwrap();
    assert_eq!((p.label_id, p.label.as_str()), (1, "positive"));
    assert!(
        (p.logits[0] + 1.5).abs() < 1e-3 && (p.logits[1] - 2.5).abs() < 1e-3,
        "{:?}",
        p.logits
    );
}

#[test]
fn prediction_refuses_logits_without_a_label() {
    let labels = small_bundle().dims.labels;
    refused(
        "3 logits",
        "label",
        prediction(vec![0.0, 1.0, 2.0], &labels),
    );
    refused("no logit", "label", prediction(Vec::new(), &labels));
    refused(
        "NaN logit",
        "finite",
        prediction(vec![0.0, f64::NAN], &labels),
    );
    let p = prediction(vec![0.0, 1.0], &labels).unwrap();
    assert_eq!(p.label, "positive");
    assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}
