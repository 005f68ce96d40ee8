//! End-to-end tests on a small random THE-X model at 128-bit secure parameters (N = 2^14):
//! the encrypted program against `thex-model`'s plaintext forward pass, layer by layer, and
//! the protocol's rejection of bad messages.

mod common;

use std::sync::{Arc, OnceLock};

use candle_core::Device;
use ckks::{Parameters, SecretKey};
use he_linalg::attention::scores_to_heads;
use he_linalg::{Layout, Matrix};
use thex_client::*;
use thex_engine::*;
use thex_model::{Batch, ThexModel};

use common::{SMALL, random_model, values};

struct Setup {
    model: ThexModel,
    server: Arc<ServerModel>,
    bundle: ClientBundle,
    sk: Vec<u8>,
    keys: EvaluationKeys,
}

/// The small model compiled for bucket 16 with blinded rounds (the default).
fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| build(Rounds::Blinded))
}

/// The same with THE-X's rounds.
fn setup_thex() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| build(Rounds::Thex))
}

fn build(rounds: Rounds) -> Setup {
    {
        let model = random_model(SMALL, 7);
        let engine = EngineParams {
            buckets: vec![16],
            rounds,
            ..Default::default()
        };
        let server = Arc::new(ServerModel::compile(&model, &engine).unwrap());
        let bundle = server.client_bundle();
        let client = ClientSession::new(bundle.clone()).unwrap();
        let keys = client.evaluation_keys(&[]).unwrap();
        Setup {
            model,
            sk: client.secret_key_bytes(),
            server,
            bundle,
            keys,
        }
    }
}

fn client(s: &Setup) -> ClientSession {
    let params = Parameters::new(&s.bundle.params).unwrap();
    let sk = SecretKey::from_bytes_secret(&params, &s.sk).unwrap();
    ClientSession::with_secret_key(s.bundle.clone(), sk).unwrap()
}

fn server(s: &Setup) -> ServerSession {
    ServerSession::new(s.server.clone(), s.keys.clone(), &[]).unwrap()
}

/// Decrypts a packed value into its `bucket × cols` matrix.
fn open(c: &ClientSession, layout: &Layout, cts: &[ckks::Ciphertext]) -> Matrix {
    let slots: Vec<Vec<f64>> = cts.iter().map(|ct| c.decrypt_slots(ct).unwrap()).collect();
    layout.unpack(&slots).unwrap()
}

/// Largest |got - want| over the first `rows` rows, `want` row-major with `cols` columns.
fn max_err(got: &Matrix, want: &[f64], rows: usize) -> f64 {
    let cols = got.cols();
    assert_eq!(want.len(), rows * cols, "reference size");
    let mut m = 0f64;
    for t in 0..rows {
        for c in 0..cols {
            m = m.max((got.get(t, c) - want[t * cols + c]).abs());
        }
    }
    m
}

/// Per-head `[H, n, n]` reference against diagonal-form scores, valid rows/keys only.
fn max_err_scores(layout: &Layout, got: &Matrix, want: &[f64], heads: usize, n: usize) -> f64 {
    let per_head = scores_to_heads(layout, got).unwrap();
    let mut m = 0f64;
    for (h, g) in per_head.iter().enumerate().take(heads) {
        for t in 0..n {
            for u in 0..n {
                m = m.max((g.get(t, u) - want[(h * n + t) * n + u]).abs());
            }
        }
    }
    m
}

/// `[1, H, n, d]` → `[n, H·d]` (heads concatenated, as the packed layouts hold them).
fn concat_heads(v: &[f64], heads: usize, n: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * heads * d];
    for h in 0..heads {
        for t in 0..n {
            for i in 0..d {
                out[t * heads * d + h * d + i] = v[(h * n + t) * d + i];
            }
        }
    }
    out
}

fn bits(err: f64, magnitude: f64) -> f64 {
    -(err / magnitude.max(1e-300)).log2()
}

/// The plaintext THE-X model's logits for one token sequence.
fn plain_logits(model: &ThexModel, tokens: &[u32]) -> Vec<f64> {
    let batch = Batch::new(&[tokens.to_vec()], 0, &Device::Cpu).unwrap();
    values(
        model
            .forward(&batch, false)
            .unwrap()
            .logits
            .as_ref()
            .unwrap(),
    )
}

/// Largest |a - b| over paired entries.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 2 + (i * 7 + seed) % 45).collect()
}

/// THE-X's rounds: every value the client decrypts and every reply, the server's
/// intermediate values and the logits agree with the plaintext model.
#[test]
fn encrypted_inference_matches_the_plaintext_model_layer_by_layer() {
    layer_by_layer(setup_thex());
}

/// Blinded rounds: each decrypted value is the true one times a factor `±[2^-6, 1]`, and
/// once unblinded the server's intermediate values and the logits agree as closely.
#[test]
fn blinded_inference_matches_the_plaintext_model_layer_by_layer() {
    layer_by_layer(setup());
}

/// Checks a blinded request item against the true values: on every real slot whose true value
/// is clear of the decryption noise, the ratio's magnitude lies in the blinding's range.
fn check_blinded(what: &str, got: &[f64], want: &[f64], bits: u32) {
    let mag = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let (mut lo, mut hi, mut n) = (f64::MAX, 0f64, 0);
    for (g, w) in got.iter().zip(want) {
        if w.abs() > 1e-2 * mag {
            let r = (g / w).abs();
            (lo, hi, n) = (lo.min(r), hi.max(r), n + 1);
        }
    }
    let floor = 2f64.powi(-(bits as i32));
    assert!(n > 0, "{what}: no slot to compare");
    assert!(
        lo > 0.99 * floor && hi < 1.01,
        "{what}: |decrypted / true| in [{lo}, {hi}], the blinding's range [{floor}, 1]"
    );
}

fn layer_by_layer(s: &Setup) {
    let blinded = s.bundle.rounds == Rounds::Blinded;
    let blind_bits = s.server.resolved().config.blind_bits;
    let (mut c, mut srv) = (client(s), server(s));
    srv.record_taps();
    let tokens = ids(11, 3);
    let n = tokens.len();
    let batch = Batch::new(std::slice::from_ref(&tokens), 0, &Device::Cpu).unwrap();
    let (out, trace) = s.model.forward_traced(&batch).unwrap();
    let d = s.server.dims().clone();
    let l = s.server.schedule(16).unwrap().layouts().clone();
    let params = c.params().clone();

    let mut requests = Vec::new();
    let mut replies = Vec::new();
    let mut step = srv.start(c.encrypt_ids(&tokens).unwrap()).unwrap();
    let logits = loop {
        match step {
            Step::Done(lg) => break lg,
            Step::NeedRelu(req) => {
                let reply = c.answer(&req).unwrap();
                requests.push(req);
                replies.push(reply.clone());
                step = srv.resume(reply).unwrap();
            }
        }
    };
    assert_eq!(requests.len(), 4 * d.layers);
    assert_eq!(s.server.rounds(), 4 * d.layers);
    // The plan's key switches and rotations are exactly what the server executed.
    let counts = srv.op_counts();
    let plans = s.server.layer_plans(16).unwrap();
    assert_eq!(plans.len(), d.layers);
    assert_eq!(counts.key_switches, s.server.plan(16).unwrap().key_switches);
    assert_eq!(
        counts.rotations,
        plans.iter().map(|p| p.rotations()).sum::<u64>()
    );
    assert_eq!(
        counts.hoisted_rotations,
        plans
            .iter()
            .flat_map(|p| p.ops())
            .map(|o| o.hoisted_rotations)
            .sum::<u64>()
    );
    let taps = srv.take_taps();
    let tap = |name: &str| {
        let t = taps
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        open(&c, t.value.layout(), t.value.cts())
    };
    let expand = |r: &ReluReply, item: usize| -> Vec<ckks::Ciphertext> {
        r.items[item].iter().map(|x| x.expand(&params)).collect()
    };

    let mut report = Vec::new();
    let mut check = |what: String, err: f64, mag: f64| {
        report.push(format!(
            "{what:<28} max err {err:.2e}  ({:.1} bits)",
            bits(err, mag)
        ));
        // 40-bit scale: far below 1e-3 of the values' magnitude, with f32 reference rounding.
        assert!(
            err <= 1e-3 * mag.max(1.0),
            "{what}: error {err} vs magnitude {mag}"
        );
    };
    for (li, lt) in trace.layers.iter().enumerate() {
        let r = 4 * li;
        let mag = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
        let input = values(&lt.input);
        check(
            format!("layer{li} input"),
            max_err(&tap(&format!("layer{li}.input")), &input, n),
            mag(&input),
        );

        let sm = lt.softmax.as_ref().unwrap();
        let y: Vec<f64> = values(&lt.scores)
            .iter()
            .map(|x| x * d.softmax_scale + d.softmax_shift)
            .collect();
        let got_y = open(&c, &l.scores, &requests[r].items[0].cts);
        if blinded {
            let heads = scores_to_heads(&l.scores, &got_y).unwrap();
            let got: Vec<f64> = (0..d.heads)
                .flat_map(|h| (0..n).flat_map(move |t| (0..n).map(move |u| (h, t, u))))
                .map(|(h, t, u)| heads[h].get(t, u))
                .collect();
            check_blinded(
                &format!("layer{li} softmax input y"),
                &got,
                &y,
                blind_bits / 3,
            );
        } else {
            check(
                format!("layer{li} softmax input y"),
                max_err_scores(&l.scores, &got_y, &y, d.heads, n),
                mag(&y),
            );
            let e = values(&sm.e);
            let got_e = open(&c, &l.scores, &expand(&replies[r], 0));
            check(
                format!("layer{li} e = ReLU(y^3)"),
                max_err_scores(&l.scores, &got_e, &e, d.heads, n),
                mag(&e),
            );
        }

        // T(s) is broadcast over every key position: compare key 0's diagonal slot.
        let recip = values(&sm.reciprocal);
        let got_t = scores_to_heads(&l.scores, &tap(&format!("layer{li}.reciprocal"))).unwrap();
        let mut et = 0f64;
        for h in 0..d.heads {
            for t in 0..n {
                for u in 0..n {
                    et = et.max((got_t[h].get(t, u) - recip[h * n + t]).abs());
                }
            }
        }
        check(format!("layer{li} T(s)"), et, mag(&recip));
        let probs = values(&lt.probs);
        let got_p = tap(&format!("layer{li}.probs"));
        check(
            format!("layer{li} attention probs"),
            max_err_scores(&l.scores, &got_p, &probs, d.heads, n),
            mag(&probs),
        );

        let ctx = values(&lt.context);
        let got_ctx = tap(&format!("layer{li}.context"));
        // The context tap is head-interleaved; unpack gives logical columns h·d + i.
        check(
            format!("layer{li} context"),
            max_err(&got_ctx, &ctx, n),
            mag(&ctx),
        );
        let q = concat_heads(&values(&lt.query), d.heads, n, d.head_dim);
        assert_eq!(q.len(), n * d.hidden);

        let s1 = values(&lt.attention_norm_input);
        let got_s1 = open(&c, &l.hidden, &requests[r + 3].items[1].cts);
        let u = values(&lt.intermediate_pre);
        let got_u = open(&c, &l.ffn, &requests[r + 3].items[0].cts);
        if blinded {
            let rows = |m: &Matrix| -> Vec<f64> {
                (0..n)
                    .flat_map(|t| (0..m.cols()).map(move |c| m.get(t, c)))
                    .collect()
            };
            check_blinded(
                &format!("layer{li} residual"),
                &rows(&got_s1),
                &s1,
                blind_bits,
            );
            check_blinded(
                &format!("layer{li} FFN pre-activation"),
                &rows(&got_u),
                &u,
                blind_bits,
            );
        } else {
            check(
                format!("layer{li} LN1 input (residual)"),
                max_err(&got_s1, &s1, n),
                mag(&s1),
            );
            check(
                format!("layer{li} FFN pre-activation"),
                max_err(&got_u, &u, n),
                mag(&u),
            );
        }
        if li + 1 < trace.layers.len() {
            let o = values(&lt.output);
            check(
                format!("layer{li} output"),
                max_err(&tap(&format!("layer{}.input", li + 1)), &o, n),
                mag(&o),
            );
        }
    }
    let want = values(out.logits.as_ref().unwrap());
    let pred = c.decrypt_logits(&logits).unwrap();
    let err = max_abs_diff(&pred.logits, &want);
    let mag = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    check("logits".into(), err, mag);
    eprintln!("{}", report.join("\n"));
    eprintln!("logits enc {:?}\nlogits ref {want:?}", pred.logits);
    assert!(err < 1e-4, "logit error {err}");
    let want_label = (0..want.len()).fold(0, |b, i| if want[i] > want[b] { i } else { b });
    assert_eq!(pred.label_id, want_label);
}

#[test]
fn run_local_reports_rounds_bytes_and_agrees_on_a_full_bucket() {
    let s = setup();
    let (mut c, mut srv) = (client(s), server(s));
    let tokens = ids(16, 11);
    let want = plain_logits(&s.model, &tokens);
    let r = run_local(&mut c, &mut srv, &tokens).unwrap();
    let err = max_abs_diff(&r.logits, &want);
    eprintln!(
        "16 tokens: {} rounds, {} B up, {} B down, {:.2} s, logit error {err:.2e}",
        r.rounds, r.bytes_up, r.bytes_down, r.total_seconds
    );
    assert!(err < 1e-4, "logit error {err}");
    assert_eq!((r.rounds, r.bucket, r.tokens), (8, 16, 16));
    let p: f64 = r.probabilities.iter().sum();
    assert!((p - 1.0).abs() < 1e-12);
    // Requests travel at the decryption level, the logits at the items level (one above when
    // blinded); replies at their reply level
    // (seeded: c0 only), the input at the input level. Byte counts within 1% of the limb data,
    // each residue bit-packed at its prime's bit length.
    let params = c.params();
    let q = params.q_moduli();
    let poly = |level: usize| -> usize {
        q[..=level]
            .iter()
            .map(|q| params.n() * (64 - (q - 1).leading_zeros()) as usize / 8)
            .sum()
    };
    let sched = s.server.schedule(16).unwrap();
    let d = sched.levels().decrypt;
    let plan = s.server.plan(16).unwrap();
    let request_cts: usize = plan.round_ciphertexts.iter().sum();
    let down = request_cts * 2 * poly(d) + 2 * poly(sched.logits().level);
    assert!(
        r.bytes_down >= down && r.bytes_down < down + down / 100,
        "{} vs {down}",
        r.bytes_down
    );
    let mut up = sched.layouts().hidden.n_cts() * poly(sched.input().level);
    assert_eq!(sched.rounds().len(), s.server.rounds());
    for round in sched.rounds() {
        for it in &round.items {
            up += it.reply_ciphertexts * poly(it.reply.level);
        }
    }
    assert!(
        r.bytes_up >= up && r.bytes_up < up + up / 100,
        "{} vs {up}",
        r.bytes_up
    );
    assert!(r.phases.iter().any(|t| t.name == "server.layer1.logits"));
}

/// The protocol error of a server call.
fn protocol<T: std::fmt::Debug>(r: thex_engine::Result<T>) -> Error {
    match r {
        Err(EngineError::Protocol(e)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn first_request(srv: &mut ServerSession, c: &mut ClientSession) -> ReluRequest {
    match srv.start(c.encrypt_ids(&ids(9, 5)).unwrap()).unwrap() {
        Step::NeedRelu(r) => r,
        Step::Done(_) => panic!("no rounds"),
    }
}

#[test]
fn protocol_rejects_bad_and_out_of_order_messages() {
    let s = setup();
    let (mut c, mut srv) = (client(s), server(s));
    let params = c.params().clone();
    let limits = MessageLimits::default();

    // Nothing running: replies and logits are out of place on both sides.
    let empty = ReluReply {
        round: 1,
        nonce: [0; NONCE_BYTES],
        items: vec![],
    };
    assert!(matches!(
        protocol(srv.resume(empty.clone())),
        Error::UnexpectedMessage { .. }
    ));
    let req0 = ReluRequest {
        round: 1,
        nonce: [0; NONCE_BYTES],
        items: vec![],
    };
    let mut idle = client(s);
    assert!(matches!(
        idle.answer(&req0),
        Err(Error::UnexpectedMessage { .. })
    ));
    // A client session that refused a message answers nothing more.
    assert!(idle.is_refused());
    assert!(matches!(idle.answer(&req0), Err(Error::Refused { .. })));
    assert!(matches!(
        idle.encrypt_ids(&ids(3, 1)),
        Err(Error::Refused { .. })
    ));

    let req = first_request(&mut srv, &mut c);
    // A second input while an inference runs.
    let again = client(s).encrypt_ids(&ids(3, 1)).unwrap();
    assert!(matches!(
        protocol(srv.start(again)),
        Error::UnexpectedMessage { .. }
    ));
    let good = c.answer(&req).unwrap();

    // Client side, each on its own session waiting for round 2 (a refusal ends a session): a
    // replayed round, a skipped round, a wrong item, logits too early.
    let at_round2 = || {
        let mut c2 = client(s);
        c2.encrypt_ids(&ids(9, 5)).unwrap();
        c2.answer(&req).unwrap();
        c2
    };
    let mut replayed = at_round2();
    assert!(matches!(
        replayed.answer(&req),
        Err(Error::WrongRound {
            got: 1,
            expected: 2
        })
    ));
    assert!(matches!(replayed.answer(&req), Err(Error::Refused { .. })));
    let mut wrong = req.clone();
    wrong.round = 2;
    wrong.items[0].kind = ItemKind::Ffn;
    assert!(matches!(
        at_round2().answer(&wrong),
        Err(Error::WrongItem { index: 0, .. })
    ));
    let mut short = req.clone();
    short.round = 2;
    short.items[0].kind = ItemKind::ReciprocalHidden1;
    let extra = short.items[0].cts[0].clone();
    short.items[0].cts.push(extra);
    assert!(matches!(
        at_round2().answer(&short),
        Err(Error::WrongCount { .. })
    ));
    let fake = EncryptedLogits {
        bucket: 16,
        ct: req.items[0].cts[0].clone(),
    };
    let mut early = at_round2();
    assert!(matches!(
        early.decrypt_logits(&fake),
        Err(Error::UnexpectedMessage { .. })
    ));
    assert!(early.is_refused());

    // Server side: a reply to another request (its nonce), wrong round number, wrong item
    // count, wrong ciphertext count.
    let mut stale = good.clone();
    stale.nonce[0] ^= 1;
    assert!(matches!(
        protocol(srv.resume(stale)),
        Error::StaleReply { round: 1 }
    ));
    let mut r = good.clone();
    r.round = 3;
    assert!(matches!(
        protocol(srv.resume(r)),
        Error::WrongRound {
            got: 3,
            expected: 1
        }
    ));
    let mut r = good.clone();
    r.items.push(vec![]);
    assert!(matches!(
        protocol(srv.resume(r)),
        Error::WrongCount {
            expected: 1,
            got: 2,
            ..
        }
    ));
    let mut r = good.clone();
    let extra = r.items[0][0].clone();
    r.items[0].push(extra);
    assert!(matches!(protocol(srv.resume(r)), Error::WrongCount { .. }));

    // A ciphertext one level below a fresh one.
    let sk = SecretKey::from_bytes_secret(&params, &s.sk).unwrap();
    let enc = ckks::Encoder::new(&params);
    let pt = enc
        .encode(&[0.5], params.max_level() - 1, params.default_scale())
        .unwrap();
    let low = ckks::Decryptor::new(&sk).encrypt_seeded(&pt).unwrap();
    let mut r = good.clone();
    r.items[0][0] = low;
    match protocol(srv.resume(r)) {
        Error::BadCiphertext { problem, .. } => assert!(problem.contains("level"), "{problem}"),
        other => panic!("expected BadCiphertext, got {other:?}"),
    }

    // Bytes: ciphertexts of other parameters, garbage, truncation, trailing bytes.
    let other = Parameters::preset(ckks::Preset::N13L2);
    let osk = ckks::KeyGenerator::new(&other).secret_key();
    let opt = ckks::Encoder::new(&other)
        .encode(&[1.0], 2, other.default_scale())
        .unwrap();
    let foreign = ReluReply {
        round: 1,
        nonce: [0; NONCE_BYTES],
        items: vec![vec![
            ckks::Decryptor::new(&osk).encrypt_seeded(&opt).unwrap(),
        ]],
    };
    let bytes = foreign.to_bytes(&other);
    assert!(matches!(
        ReluReply::from_bytes(&params, &bytes, limits),
        Err(Error::Malformed(m)) if m.contains("parameters")
    ));
    let mut spliced = good.to_bytes(&params);
    let inner = foreign.items[0][0].to_bytes(&other);
    let pos = spliced.len() - good.items[0][0].to_bytes(&params).len();
    spliced.truncate(pos - 4);
    spliced.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    spliced.extend_from_slice(&inner);
    assert!(matches!(
        ReluReply::from_bytes(&params, &spliced, limits),
        Err(Error::Ckks(ckks::Error::Deserialize(_)))
    ));
    let bytes = good.to_bytes(&params);
    assert!(matches!(
        ReluReply::from_bytes(&params, &bytes[..bytes.len() - 10], limits),
        Err(Error::Malformed(_) | Error::Ckks(_))
    ));
    assert!(matches!(
        ReluReply::from_bytes(&params, b"garbage", limits),
        Err(Error::Malformed(_))
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        ReluReply::from_bytes(&params, &long, limits),
        Err(Error::Malformed(_))
    ));
    let tight = MessageLimits {
        max_ciphertexts: 0,
        ..limits
    };
    assert!(matches!(
        ReluReply::from_bytes(&params, &bytes, tight),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        ReluRequest::from_bytes(&params, &bytes, limits),
        Err(Error::Malformed(m)) if m.contains("type")
    ));

    // After all that, the pending round still completes with the right reply.
    let back = ReluReply::from_bytes(&params, &bytes, limits).unwrap();
    assert_eq!((back.round, back.nonce), (good.round, req.nonce));
    match srv.resume(back).unwrap() {
        Step::NeedRelu(r) => {
            assert_eq!((r.round, r.items[0].kind), (2, ItemKind::ReciprocalHidden1))
        }
        Step::Done(_) => panic!("finished after one round"),
    }

    // Nonces are fresh per request: after an abort, the old round-1 reply is stale for the
    // new inference's round 1.
    srv.abort();
    c.abort();
    let again = first_request(&mut srv, &mut c);
    assert_eq!(again.round, 1);
    assert_ne!(again.nonce, req.nonce);
    assert!(matches!(
        protocol(srv.resume(good.clone())),
        Error::StaleReply { round: 1 }
    ));
    assert!(c.answer(&again).is_ok());

    // Keys without the planned rotations are refused when the session is made.
    let mut kg = ckks::KeyGenerator::new(&params);
    let partial = EvaluationKeys {
        relin: s.keys.relin.clone(),
        galois: kg.galois_keys(&sk, &[1], false).unwrap(),
    };
    assert!(matches!(
        ServerSession::new(s.server.clone(), partial, &[]),
        Err(EngineError::MissingRotationKeys { .. })
    ));
    assert!(matches!(
        protocol(ServerSession::new(s.server.clone(), s.keys.clone(), &[32])),
        Error::UnknownBucket { bucket: 32, .. }
    ));
}

#[test]
fn client_bundle_round_trips_and_rejects_corruption() {
    let s = setup();
    let bytes = s.bundle.to_bytes();
    let back = ClientBundle::from_bytes(&bytes).unwrap();
    assert_eq!(back, s.bundle);
    assert_eq!(
        thex_client::sha256_hex(&bytes),
        thex_client::sha256_hex(&back.to_bytes())
    );
    assert_eq!(thex_client::sha256_hex(&bytes).len(), 64);
    // The bundle's plan is the server's: the client generates exactly the planned keys.
    assert_eq!(
        s.keys.galois.galois_elements().len(),
        s.server.plan(16).unwrap().galois_steps.len()
    );
    assert!(ClientBundle::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut long = bytes.clone();
    long.push(7);
    assert!(matches!(
        ClientBundle::from_bytes(&long),
        Err(Error::Malformed(_))
    ));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(
        ClientBundle::from_bytes(&bad),
        Err(Error::Malformed(_))
    ));
    // A forged bundle whose parameters would make the client's keys insecure is refused, as
    // bytes and by the client session, naming the field: one forgery per security field.
    type Forge = fn(&mut ckks::ParametersLiteral);
    let forgeries: [(&str, Forge); 6] = [
        ("error_std", |p| p.error_std = 1e-9),
        ("secret", |p| {
            p.secret = ckks::SecretDistribution::FixedHammingWeight(1 << (p.log_n - 1))
        }),
        ("log QP (log_q)", |p| p.log_q.extend([40; 3])),
        ("log QP (log_p)", |p| p.log_p.extend([60; 2])),
        ("log QP (small N)", |p| p.log_n = 12),
        ("ring degree", |p| p.log_n = 9),
    ];
    for (field, forge) in forgeries {
        let mut forged = s.bundle.clone();
        forge(&mut forged.params);
        let bytes_err = ClientBundle::from_bytes(&forged.to_bytes()).unwrap_err();
        let session_err = ClientSession::new(forged).unwrap_err();
        for err in [bytes_err, session_err] {
            let ok = match field {
                "error_std" | "secret" => matches!(
                    &err,
                    Error::Ckks(ckks::Error::InsecureParameter { name, .. }) if *name == field
                ),
                "ring degree" => {
                    matches!(err, Error::Ckks(ckks::Error::UnsupportedRingDegree { .. }))
                }
                _ => matches!(err, Error::Ckks(ckks::Error::Insecure { .. })),
            };
            assert!(ok, "{field}: {err}");
        }
    }
}

/// A MiniLM-shaped layer (hidden 384, 12 heads, FFN 1536) with weights encoded per inference.
#[test]
fn minilm_shaped_model_agrees_slow() {
    if std::env::var("THEX_SLOW_TESTS").map_or(true, |v| v != "1") {
        eprintln!("SKIP minilm_shaped_model_agrees_slow: set THEX_SLOW_TESTS=1");
        return;
    }
    let shape = common::Shape {
        layers: 2,
        hidden: 384,
        heads: 12,
        ffn: 1536,
        vocab: 50,
        labels: 2,
        max_positions: 128,
    };
    let model = random_model(shape, 3);
    let engine = EngineParams {
        buckets: vec![16],
        pre_encode: false,
        ..Default::default()
    };
    let server = Arc::new(ServerModel::compile(&model, &engine).unwrap());
    let mut c = ClientSession::new(server.client_bundle()).unwrap();
    let keys = c.evaluation_keys(&[]).unwrap();
    let mut srv = ServerSession::new(server.clone(), keys, &[]).unwrap();
    let tokens = ids(13, 2);
    let want = plain_logits(&model, &tokens);
    let r = run_local(&mut c, &mut srv, &tokens).unwrap();
    let err = max_abs_diff(&r.logits, &want);
    eprintln!(
        "MiniLM-shaped, 2 layers, 13 tokens: {} rounds, {:.1} MB up, {:.1} MB down, {:.1} s, logit error {err:.2e}",
        r.rounds,
        r.bytes_up as f64 / 1e6,
        r.bytes_down as f64 / 1e6,
        r.total_seconds
    );
    assert!(err < 1e-3, "logit error {err}");
}

/// With almost no room above the scale (q0 = 2^38, scale 2^36: values up to 1, compiled
/// without calibration), the scores wrap around the modulus: the client refuses them instead
/// of answering with garbage. Compiled from the model itself, the calibration keeps room:
/// with a 24-bit q0 it decrypts one level higher.
#[test]
fn values_beyond_the_headroom_are_refused() {
    let model = random_model(SMALL, 7);
    let engine = EngineParams {
        buckets: vec![16],
        log_q0: 38,
        ..Default::default()
    };
    let tiny_q0 = EngineParams {
        log_q0: 24,
        log_scale: 22,
        ..engine.clone()
    };
    let calibrated = ServerModel::compile(&model, &tiny_q0).unwrap();
    assert_eq!(calibrated.schedule(16).unwrap().levels().decrypt, 1);
    assert!(calibrated.calibrated_magnitude().unwrap() > 1.0);
    let (weights, embeddings) = split_model(&model).unwrap();
    let server = Arc::new(ServerModel::compile_weights(weights, embeddings, &engine).unwrap());
    let mut c = ClientSession::new(server.client_bundle()).unwrap();
    let keys = c.evaluation_keys(&[]).unwrap();
    let mut srv = ServerSession::new(server, keys, &[]).unwrap();
    match run_local(&mut c, &mut srv, &ids(9, 5)) {
        Err(EngineError::Protocol(Error::OutOfRange { value, limit, .. })) => {
            assert!(value > limit && limit <= 1.0, "{value} {limit}")
        }
        other => panic!("expected OutOfRange, got {:?}", other.map(|r| r.logits)),
    }
    // The failed inference is aborted on both sides. The client that refused answers nothing
    // more with its key (a hostile server learns one bit per key); a fresh client starts.
    assert!(c.tokens_in_flight().is_none() && c.is_refused());
    assert_eq!(srv.pending_round(), None);
    match c.encrypt_ids(&ids(9, 5)) {
        Err(Error::Refused { reason }) => assert!(reason.contains("headroom"), "{reason}"),
        other => panic!("expected Refused, got {:?}", other.map(|i| i.bucket)),
    }
    c.abort();
    assert!(c.is_refused());
    let mut fresh = ClientSession::new(c.bundle().clone()).unwrap();
    let keys = fresh.evaluation_keys(&[]).unwrap();
    let mut srv = ServerSession::new(srv.model().clone(), keys, &[]).unwrap();
    let input = fresh.encrypt_ids(&ids(9, 5)).unwrap();
    assert!(matches!(srv.start(input), Ok(Step::NeedRelu(_))));
}

#[test]
fn ntt_and_compact_weights_compute_the_same_ciphertexts() {
    // THE-X's rounds: no blinding randomness in the requests.
    let s = setup_thex();
    // The shared setup keeps its small weights in NTT form (default limit); the same model
    // compiled with a zero limit keeps them compact.
    let engine = EngineParams {
        buckets: vec![16],
        ntt_weights_max_bytes: 0,
        rounds: Rounds::Thex,
        ..Default::default()
    };
    let compact = Arc::new(ServerModel::compile(&s.model, &engine).unwrap());
    let (cb, nb) = (
        compact.plan(16).unwrap().weight_bytes,
        s.server.plan(16).unwrap().weight_bytes,
    );
    let levels = s.server.params().max_level() + 1;
    assert!(cb < nb && nb <= cb * levels, "compact {cb} B, NTT {nb} B");
    // The server is deterministic and both forms give bit-identical products: the same
    // encrypted input yields the same first request.
    let mut c = client(s);
    let input = c.encrypt_ids(&ids(9, 5)).unwrap();
    let requests = [s.server.clone(), compact].map(|m| {
        match ServerSession::new(m, s.keys.clone(), &[])
            .unwrap()
            .start(input.clone())
            .unwrap()
        {
            Step::NeedRelu(r) => r,
            Step::Done(_) => panic!("no rounds"),
        }
    });
    // The same ciphertexts (each request has its own nonce).
    assert_eq!(requests[0].items, requests[1].items);
}

/// Decrypted values are sent at the request scale (here forced down to 2^26) while the rest of
/// the program keeps 2^36 and no level is added: every request and the logits carry it, and
/// the logits still match the plaintext model.
#[test]
fn requests_at_a_lower_scale_keep_the_levels_and_agree() {
    // Blinding shrinks values by up to 2^-blind_bits: 4 bits keep 1e-3 here (the default
    // model's request scale is 2^28 or above).
    for (rounds, blind_bits) in [(Rounds::Thex, 6), (Rounds::Blinded, 4)] {
        lower_scale(rounds, blind_bits);
    }
}

fn lower_scale(rounds: Rounds, blind_bits: u32) {
    let s = setup();
    let engine = EngineParams {
        buckets: vec![16],
        request_log_scale: Some(26),
        rounds,
        blind_bits,
        ..Default::default()
    };
    let server = Arc::new(ServerModel::compile(&s.model, &engine).unwrap());
    assert_eq!(server.request_scale(), 2f64.powi(26));
    assert_eq!(server.params().default_scale(), 2f64.powi(36));
    assert_eq!(server.schedule(16).unwrap().levels().decrypt, 0);
    let mut c = ClientSession::new(server.client_bundle()).unwrap();
    let keys = c.evaluation_keys(&[]).unwrap();
    let mut srv = ServerSession::new(server, keys, &[]).unwrap();
    let tokens = ids(13, 8);
    let mut step = srv.start(c.encrypt_ids(&tokens).unwrap()).unwrap();
    let mut kinds = Vec::new();
    let logits = loop {
        match step {
            Step::Done(lg) => break lg,
            Step::NeedRelu(req) => {
                for item in &req.items {
                    kinds.push(item.kind);
                    for ct in &item.cts {
                        assert_eq!(ct.scale().log2().round(), 26.0, "{:?}", item.kind);
                    }
                }
                step = srv.resume(c.answer(&req).unwrap()).unwrap();
            }
        }
    };
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    assert_eq!(logits.ct.scale().log2().round(), 26.0);
    let pred = c.decrypt_logits(&logits).unwrap();
    let want = plain_logits(&s.model, &tokens);
    let err = max_abs_diff(&pred.logits, &want);
    eprintln!("{rounds:?}, blind_bits {blind_bits}: logit error {err:.2e}");
    assert!(err < 1e-3, "{rounds:?}: logit error {err}");
}

/// Attention · V from the row parts of the weights (layer input two levels below fresh) and
/// with V token-masked (one below): the compiler picks the second for this attention-heavy
/// shape, the first when asked; both agree with the plaintext model and the client encrypts
/// at the level the bundle names.
#[test]
fn both_attention_value_maskings_agree() {
    use he_linalg::attention::AvMasking;
    let s = setup();
    // The level fresh replies are unblinded to.
    let top = s.server.schedule(16).unwrap().levels().top;
    assert_eq!(top + 1, s.server.params().max_level());
    assert_eq!(
        s.server.plan(16).unwrap().attention_values,
        AvMasking::ValueTokens
    );
    assert_eq!(s.server.schedule(16).unwrap().input().level, top - 1);
    let engine = EngineParams {
        buckets: vec![16],
        attention_values: Some(AvMasking::WeightRows),
        ..Default::default()
    };
    let rows = Arc::new(ServerModel::compile(&s.model, &engine).unwrap());
    let bundle = rows.client_bundle();
    assert_eq!(
        bundle.plan(16).unwrap().attention_values,
        AvMasking::WeightRows
    );
    assert_eq!(rows.schedule(16).unwrap().input().level, top - 2);
    let (ks_rows, ks_tokens) = (
        rows.plan(16).unwrap().key_switches,
        s.server.plan(16).unwrap().key_switches,
    );
    assert!(ks_tokens < ks_rows, "{ks_tokens} vs {ks_rows}");
    let mut c = ClientSession::new(bundle).unwrap();
    let keys = c.evaluation_keys(&[]).unwrap();
    let mut srv = ServerSession::new(rows, keys, &[]).unwrap();
    let tokens = ids(11, 4);
    let r = run_local(&mut c, &mut srv, &tokens).unwrap();
    let err = max_abs_diff(&r.logits, &plain_logits(&s.model, &tokens));
    assert!(err < 1e-4, "logit error {err}");
    // An input encrypted for the other form's level is refused.
    let other = client(s).encrypt_ids(&tokens).unwrap();
    assert!(srv.start(other).is_err());
}

/// The resolved plan of a compile, saved as JSON and passed back, compiles the same program
/// without calibrating; plans of another shape, version or bucket set are refused.
#[test]
fn resolved_plan_round_trips_and_compiles_the_same_program() {
    let model = random_model(SMALL, 7);
    let config = EngineParams {
        buckets: vec![16, 8],
        ..Default::default()
    };
    let a = ServerModel::compile(&model, &config).unwrap();
    let plan = a.resolved().clone();
    // The configuration as written (buckets sorted), the calibration beside it.
    assert_eq!(plan.config.buckets, vec![8, 16]);
    assert_eq!(plan.config.request_log_scale, None);
    assert_eq!(
        plan.calibration.map(|c| c.max_decrypted),
        a.calibrated_magnitude()
    );
    assert_eq!(plan.request_scale(), a.request_scale());
    let back = ResolvedPlan::from_json(&plan.to_json()).unwrap();
    assert_eq!(back, plan);
    let b = ServerModel::compile_plan(&model, &back).unwrap();
    assert_eq!(a.client_bundle(), b.client_bundle());
    for bucket in [8, 16] {
        assert_eq!(a.schedule(bucket).unwrap(), b.schedule(bucket).unwrap());
        assert_eq!(a.plan(bucket).unwrap(), b.plan(bucket).unwrap());
    }
    // A subset keeps the calibration.
    let one = plan.for_buckets(&[8]).unwrap();
    assert_eq!(
        (
            one.calibration,
            one.request_log_scale,
            one.config.buckets.clone()
        ),
        (plan.calibration, plan.request_log_scale, vec![8])
    );
    assert!(plan.for_buckets(&[32]).is_err());

    // A session holds keys for bucket 8 only: a 16-token input is a bad input, refused
    // before any homomorphic work.
    let b = Arc::new(b);
    let mut c8 = ClientSession::new(b.client_bundle()).unwrap();
    let keys8 = c8.evaluation_keys(&[8]).unwrap();
    let mut srv8 = ServerSession::new(b.clone(), keys8, &[8]).unwrap();
    let input = c8.encrypt_ids(&ids(12, 3)).unwrap();
    assert_eq!(input.bucket, 16);
    match srv8.start(input) {
        Err(e @ EngineError::Protocol(Error::UnknownBucket { bucket: 16, .. })) => {
            assert_eq!(e.class(), ErrorClass::BadInput)
        }
        other => panic!("expected UnknownBucket, got {:?}", other.err()),
    }

    let refused = |p: &ResolvedPlan, m: &thex_model::ThexModel, needle: &str| {
        match ServerModel::compile_plan(m, p) {
            Err(EngineError::Config(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!(
                "expected a Config error with {needle:?}, got {:?}",
                other.err()
            ),
        }
    };
    let wider = random_model(
        common::Shape {
            hidden: 64,
            ..SMALL
        },
        7,
    );
    refused(&plan, &wider, "another shape");
    let mut old = plan.clone();
    old.version += 1;
    refused(&old, &model, "version");
    let mut partial = plan.clone();
    partial.attention_values.remove(&8);
    refused(&partial, &model, "cover buckets");
    let mut unsorted = plan.clone();
    unsorted.config.buckets.reverse();
    refused(&unsorted, &model, "cover buckets");
    // Parameters beyond the 128-bit bound are refused as in any bundle.
    let mut insecure = plan.clone();
    insecure.params.log_q.extend([60; 12]);
    assert!(matches!(
        ServerModel::compile_plan(&model, &insecure),
        Err(EngineError::Ckks(ckks::Error::Insecure { .. }))
    ));
    assert!(ResolvedPlan::from_json("{\"version\": 1}").is_err());
}

/// A transport that fails on one exchange: the driver returns its error and the client is
/// idle again; after `abort`, the server takes the next inference.
#[test]
fn the_driver_aborts_the_client_when_the_transport_fails() {
    struct Failing<'a> {
        inner: Local<'a>,
        fail_at: usize,
        seen: usize,
    }
    impl Transport for Failing<'_> {
        type Error = EngineError;
        fn exchange(&mut self, kind: Outgoing, bytes: &[u8]) -> thex_engine::Result<Answer> {
            self.seen += 1;
            if self.seen == self.fail_at {
                return Err(EngineError::Internal("connection dropped".into()));
            }
            self.inner.exchange(kind, bytes)
        }
    }
    let s = setup();
    let (mut c, mut srv) = (client(s), server(s));
    let tokens = ids(9, 5);
    let mut rounds = Vec::new();
    let err = {
        let mut t = Failing {
            inner: Local::new(&mut srv),
            fail_at: 3,
            seen: 0,
        };
        infer(&mut c, &mut t, &tokens, &mut |r| rounds.push(r)).unwrap_err()
    };
    assert!(err.to_string().contains("connection dropped"), "{err}");
    // The input and round 1 went through before the failure.
    assert_eq!(rounds, vec![0, 1]);
    assert!(c.tokens_in_flight().is_none());
    assert_eq!(srv.pending_round(), Some(2));
    srv.abort();
    let r = run_local(&mut c, &mut srv, &tokens).unwrap();
    assert_eq!(r.exchanges.len(), r.rounds + 1);
    assert_eq!(r.exchanges[0].round, 0);
    let want = plain_logits(&s.model, &tokens);
    assert!(max_abs_diff(&r.logits, &want) < 1e-4);
}

#[test]
fn message_sizes_are_exact_and_checked_before_parsing() {
    let s = setup();
    let params = Parameters::new(&s.bundle.params).unwrap();
    let limits = MessageLimits::default();

    // The key set is known before the upload: its exact elements and size.
    let elements = s.server.galois_elements(&[]).unwrap();
    assert_eq!(s.keys.galois.galois_elements(), elements);
    let key_bytes = s.keys.to_bytes(&params);
    assert_eq!(
        key_bytes.len(),
        EvaluationKeys::serialized_len(&params, elements.len())
    );
    let exact = EvaluationKeys::from_bytes_exact(&params, &key_bytes, limits, &elements).unwrap();
    assert_eq!(exact, s.keys);
    let missing = EvaluationKeys::from_bytes_exact(&params, &key_bytes, limits, &elements[1..]);
    assert!(
        matches!(missing, Err(Error::WrongSize { .. })),
        "{missing:?}"
    );

    // Inputs and replies: exactly the sizes the client writes; one byte more or less is
    // refused before parsing, and the session stays usable.
    let (mut c, mut srv) = (client(s), server(s));
    let input = c.encrypt_ids(&ids(5, 2)).unwrap().to_bytes(&params);
    assert_eq!(
        srv.message_sizes(Outgoing::Input).unwrap(),
        vec![input.len()]
    );
    assert!(srv.message_sizes(Outgoing::Reply).is_err());
    for bad in [
        &input[..input.len() - 1],
        &[input.as_slice(), &[0]].concat()[..],
    ] {
        let e = protocol(srv.receive(Outgoing::Input, bad, limits));
        assert!(matches!(e, Error::WrongSize { .. }), "{e}");
        assert_eq!(srv.pending_round(), None);
    }
    let Step::NeedRelu(req) = srv.receive(Outgoing::Input, &input, limits).unwrap() else {
        panic!("no rounds");
    };
    let reply = c.answer(&req).unwrap().to_bytes(&params);
    assert_eq!(
        srv.message_sizes(Outgoing::Reply).unwrap(),
        vec![reply.len()]
    );
    let long = [reply.as_slice(), &[0; 4]].concat();
    let e = protocol(srv.receive(Outgoing::Reply, &long, limits));
    assert!(e.to_string().contains("round reply"), "{e}");
    assert_eq!(srv.pending_round(), Some(1));
    assert!(srv.receive(Outgoing::Reply, &reply, limits).is_ok());
}

/// A hostile server's request off the schedule — a degree-2 ciphertext, one level lower, another
/// scale, fewer slots — is refused before anything is decrypted, and the session with it.
#[test]
fn client_refuses_requests_off_the_schedule() {
    let s = setup();
    let (mut c, mut srv) = (client(s), server(s));
    let params = c.params().clone();
    let req = first_request(&mut srv, &mut c);
    let eval = ckks::Evaluator::new(&params);
    let ct = &req.items[0].cts[0];
    let patched = |offset: usize, bytes: &[u8]| {
        let mut b = ct.to_bytes(&params);
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        ckks::Ciphertext::from_bytes(&params, &b).unwrap()
    };
    // Serialized ciphertext: 15-byte header, degree + 1 (1 byte), scale (f64), slots (u32).
    let forged = [
        ("degree", eval.multiply(ct, ct).unwrap()),
        ("level", {
            // A fresh encryption one level above the request's, at its scale.
            let sk = SecretKey::from_bytes_secret(&params, &s.sk).unwrap();
            let pt = ckks::Encoder::new(&params)
                .encode(&vec![0.1; params.max_slots()], ct.level() + 1, ct.scale())
                .unwrap();
            ckks::Decryptor::from_seed(&sk, [9; 32])
                .encrypt_seeded(&pt)
                .unwrap()
                .expand(&params)
        }),
        ("scale", patched(16, &(ct.scale() * 2.0).to_le_bytes())),
        (
            "slots",
            patched(24, &((params.max_slots() / 2) as u32).to_le_bytes()),
        ),
    ];
    for (what, bad) in forged {
        let mut forged_req = req.clone();
        forged_req.items[0].cts[0] = bad;
        let mut victim = client(s);
        victim.encrypt_ids(&ids(9, 5)).unwrap();
        match victim.answer(&forged_req) {
            Err(Error::BadCiphertext { problem, .. }) => {
                assert!(problem.contains(what), "{what}: {problem}")
            }
            other => panic!("{what}: expected BadCiphertext, got {other:?}"),
        }
        assert!(victim.is_refused(), "{what}");
    }
}
