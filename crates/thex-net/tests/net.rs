//! The server and client over real loopback HTTP on a small random THE-X model at 128-bit
//! secure parameters: results against the in-process protocol and the plaintext model, and
//! rejection of bad requests.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ckks::{KeyGenerator, Parameters, SecretKey};
use thex_client::{
    ClientBundle, ClientSession, EvaluationKeys, Message, ReluReply, ReluRequest, Step,
};
use thex_engine::{EngineParams, ServerModel, ServerSession, run_local};
use thex_model::{BertTokenizer, LoadOptions, load_model_dir};
use thex_net::api::{SERVER_SECONDS_HEADER, ServerInfo, SessionCreated};
use thex_net::{Client, ClientOptions, NetError, ServerHandle, ServerLimits};

use common::{LABELS, LAYERS, get, post, served};

fn start(limits: ServerLimits) -> ServerHandle {
    ServerHandle::start(served().1.clone(), "127.0.0.1:0".parse().unwrap(), limits).unwrap()
}

/// Plaintext logits of the THE-X model (f32 forward pass of `thex-model`).
fn plaintext(text: &str) -> Vec<f64> {
    let p = thex_model::predict(&served().0, text).unwrap();
    p.logits.iter().map(|&x| x as f64).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Asserts the encrypted logits equal the plaintext model's on `text` to 1e-4 of their size.
fn assert_plain(logits: &[f64], text: &str) {
    let plain = plaintext(text);
    let scale = plain.iter().fold(1f64, |m, x| m.max(x.abs()));
    let d = max_diff(logits, &plain);
    assert!(d <= 1e-4 * scale, "{text}: {logits:?} vs {plain:?}");
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// The client bundle of the same model compiled with a 38-bit scale: other CKKS parameters
/// at the same ring degree.
fn foreign_bundle() -> &'static ClientBundle {
    static B: OnceLock<ClientBundle> = OnceLock::new();
    B.get_or_init(|| {
        let engine = EngineParams {
            log_scale: 38,
            ..common::engine()
        };
        ServerModel::compile(&common::random_model(11), &engine)
            .unwrap()
            .client_bundle()
    })
}

/// One secret key and its evaluation keys (serialized), generated once per test binary and
/// shared by the hand-driven sessions (key generation dominates the cost of a session).
fn shared_keys() -> &'static (Vec<u8>, Vec<u8>) {
    static K: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    K.get_or_init(|| {
        let c = ClientSession::new(served().1.model.client_bundle()).unwrap();
        let keys = c.evaluation_keys(&[]).unwrap().to_bytes(c.params());
        (c.secret_key_bytes(), keys)
    })
}

/// A client state machine with the shared secret key.
fn shared_client() -> ClientSession {
    let bundle = served().1.model.client_bundle();
    let params = Parameters::new(&bundle.params).unwrap();
    let sk = SecretKey::from_bytes_secret(&params, &shared_keys().0).unwrap();
    ClientSession::with_secret_key(bundle, sk).unwrap()
}

/// The token ids of `text` by the model's tokenizer.
fn ids(text: &str) -> Vec<u32> {
    static T: OnceLock<BertTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        load_model_dir(&served().0, &LoadOptions::default())
            .unwrap()
            .tokenizer
    })
    .encode(text)
    .unwrap()
}

const TEXT: &str = "w5 w17 w9 w33 w41 w8 w12";

#[test]
fn inference_over_http_matches_local_protocol_and_plaintext() {
    let server = start(ServerLimits::default());
    let tmp = tempfile::tempdir().unwrap();
    let options = ClientOptions {
        cache_dir: Some(tmp.path().join("cache")),
        key_file: Some(tmp.path().join("keys/secret.key")),
        ..Default::default()
    };
    let mut client = Client::connect_with(&server.url(), &options).unwrap();
    let rep = client.connect_report().clone();
    assert!(!rep.bundle_cached && !rep.tokenizer_cached && !rep.key_loaded);
    assert_eq!(rep.buckets, vec![16]);
    assert!(rep.key_bytes > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("keys/secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let net = client.infer(TEXT).unwrap();
    eprintln!(
        "connect: {rep:?}\ninference: {} rounds, {} B up, {} B down, {:.2} s, {:?}",
        net.rounds, net.bytes_up, net.bytes_down, net.total_seconds, net.phases
    );
    assert_eq!(net.rounds, 4 * LAYERS);
    assert_eq!(net.exchanges.len(), net.rounds + 1);
    assert_eq!(net.logits.len(), LABELS);
    assert_eq!(net.bucket, 16);
    assert_eq!(net.tokens, 9);

    // The same protocol in process (another key: the noise differs, the function does not).
    let mut local = shared_client();
    let keys =
        EvaluationKeys::from_bytes(local.params(), &shared_keys().1, Default::default()).unwrap();
    let mut srv = ServerSession::new(served().1.model.clone(), keys, &[16]).unwrap();
    let loc = run_local(&mut local, &mut srv, &ids(TEXT)).unwrap();
    assert_eq!(loc.rounds, net.rounds);
    // Same messages, so exactly the same byte counts.
    assert_eq!(loc.bytes_up, net.bytes_up);
    assert_eq!(loc.bytes_down, net.bytes_down);

    let plain = plaintext(TEXT);
    let d_local = max_diff(&net.logits, &loc.logits);
    let d_plain = max_diff(&net.logits, &plain);
    let scale = plain.iter().fold(1f64, |m, x| m.max(x.abs()));
    eprintln!(
        "net {:?}\nlocal {:?}\nplain {plain:?}\n|net-local| {d_local:.2e} |net-plain| {d_plain:.2e}",
        net.logits, loc.logits
    );
    // Fresh encryption noise on both runs (40-bit scale): a few 1e-7 measured.
    assert!(d_local <= 1e-5 * scale, "{d_local}");
    // Against the f32 plaintext model.
    assert!(d_plain <= 1e-4 * scale, "{d_plain}");
    assert_eq!(net.label_id, argmax(&plain));
    assert_eq!(net.label, format!("class{}", argmax(&plain)));
    let psum: f64 = net.probabilities.iter().sum();
    assert!((psum - 1.0).abs() < 1e-9);

    // A second inference in the same session.
    let again = client.infer("w6 w7").unwrap();
    assert_plain(&again.logits, "w6 w7");
    assert_eq!(server.stats().inferences, 2);
    client.close().unwrap();
    assert_eq!(server.stats().sessions, 0);
    assert_eq!(server.stats().key_bytes, 0);

    // Preparing again reuses the cached bundle and tokenizer and the stored key.
    let client = Client::prepare(&server.url(), &options).unwrap();
    let rep = client.connect_report();
    assert!(rep.bundle_cached && rep.tokenizer_cached && rep.key_loaded);
}

#[test]
fn concurrent_clients_get_their_own_answers() {
    let server = start(ServerLimits::default());
    let texts = ["w5 w6 w7 w8 w9 w10", "w40 w39 w38"];
    let url = server.url();
    let handles: Vec<_> = texts
        .iter()
        .map(|&text| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&url).unwrap();
                (text, c.infer(text).unwrap())
            })
        })
        .collect();
    for h in handles {
        let (text, r) = h.join().unwrap();
        assert_plain(&r.logits, text);
    }
    let s = server.stats();
    assert_eq!((s.sessions, s.inferences), (2, 2));
}

/// A session opened by hand: the client state machine, the session id and the info.
struct RawSession {
    client: ClientSession,
    id: String,
    base: String,
    /// The evaluation keys it uploaded.
    keys: Vec<u8>,
}

fn raw_session(server: &ServerHandle) -> RawSession {
    let base = server.url();
    let bundle = ClientBundle::from_bytes(&get(&format!("{base}/v1/bundle")).body).unwrap();
    assert_eq!(bundle, served().1.model.client_bundle());
    let client = shared_client();
    let keys = shared_keys().1.clone();
    let r = post(&format!("{base}/v1/sessions"), &keys);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created: SessionCreated = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(created.session.len(), 32);
    RawSession {
        client,
        id: created.session,
        base,
        keys,
    }
}

impl RawSession {
    fn url(&self, what: &str) -> String {
        format!("{}/v1/sessions/{}/{what}", self.base, self.id)
    }
    /// Sends an input and returns the first request.
    fn start(&mut self, text: &str) -> ReluRequest {
        let input = self.client.encrypt_ids(&ids(text)).unwrap();
        let r = post(&self.url("infer"), &input.to_bytes(self.client.params()));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let seconds: f64 = r.header(SERVER_SECONDS_HEADER).unwrap().parse().unwrap();
        assert!(seconds > 0.0);
        match Step::from_bytes(self.client.params(), &r.body, Default::default()).unwrap() {
            Step::NeedRelu(req) => req,
            Step::Done(_) => panic!("logits without a round"),
        }
    }
}

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let server = start(ServerLimits::default());
    let base = server.url();
    let info: ServerInfo = serde_json::from_slice(&get(&format!("{base}/v1/info")).body).unwrap();
    assert_eq!(info.buckets, vec![16]);
    assert_eq!(info.rounds, 4 * LAYERS);

    // Garbage and truncated evaluation keys.
    let r = post(&format!("{base}/v1/sessions"), b"garbage");
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("evaluation keys of 7 bytes"),
        "{}",
        r.error()
    );
    let mut s = raw_session(&server);
    let keys = s.keys.clone();
    let r = post(&format!("{base}/v1/sessions"), &keys[..keys.len() / 2]);
    assert_eq!(r.status, 400, "{}", r.error());
    let r = post(&format!("{base}/v1/sessions?buckets=32"), &keys);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("bucket 32"), "{}", r.error());

    // Garbage and truncated inputs.
    let r = post(&s.url("infer"), &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("encrypted input of 4 bytes"),
        "{}",
        r.error()
    );
    let input = s.client.encrypt_ids(&ids(TEXT)).unwrap();
    let bytes = input.to_bytes(s.client.params());
    let r = post(&s.url("infer"), &bytes[..bytes.len() - 7]);
    assert_eq!(r.status, 400, "{}", r.error());
    assert!(r.error().contains("expected"), "{}", r.error());
    // The right size, but garbage: the parser refuses it.
    let mut garbage = bytes.clone();
    garbage[..4].copy_from_slice(b"XXXX");
    let r = post(&s.url("infer"), &garbage);
    assert_eq!(r.status, 400, "{}", r.error());
    assert!(r.error().contains("malformed"), "{}", r.error());

    // A reply when no round is pending.
    let r = post(&s.url("round"), &bytes);
    assert_eq!(r.status, 409);
    assert!(r.error().contains("no round is pending"), "{}", r.error());

    // Unknown session, unknown route.
    let fake = format!("{base}/v1/sessions/{}/infer", "0".repeat(32));
    let r = post(&fake, &bytes);
    assert_eq!(r.status, 404);
    assert!(r.error().contains("unknown session"), "{}", r.error());
    assert_eq!(get(&format!("{base}/v1/nothing")).status, 404);

    // The session still works after all this.
    let req = s.start(TEXT);
    // A reply with the wrong number of items: rejected, still pending.
    let reply = s.client.answer(&req).unwrap();
    let short = ReluReply {
        items: vec![],
        ..reply.clone()
    };
    let r = post(&s.url("round"), &short.to_bytes(s.client.params()));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("round reply of"), "{}", r.error());
    // A second input while a round is pending.
    let r = post(&s.url("infer"), &bytes);
    assert_eq!(r.status, 409, "{}", r.error());
    // A reply whose nonce is not the request's.
    let mut forged = reply.clone();
    forged.nonce[0] ^= 1;
    let r = post(&s.url("round"), &forged.to_bytes(s.client.params()));
    assert_eq!(r.status, 409);
    assert!(r.error().contains("nonce"), "{}", r.error());
    // The honest reply is still accepted.
    let r = post(&s.url("round"), &reply.to_bytes(s.client.params()));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Replaying it is not (the server moved on to round 2, whose reply has another size).
    let r = post(&s.url("round"), &reply.to_bytes(s.client.params()));
    assert_eq!(r.status, 413, "{}", r.error());
    assert!(r.error().contains("round reply of"), "{}", r.error());
}

#[test]
fn oversized_bodies_get_413() {
    let server = start(ServerLimits {
        max_body_bytes: 1 << 20,
        ..Default::default()
    });
    let base = server.url();
    let big = vec![7u8; (1 << 20) + 1];
    let r = post(&format!("{base}/v1/sessions"), &big);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("exceeds"), "{}", r.error());
    // An unknown session is refused before its body is read.
    let r = post(
        &format!("{base}/v1/sessions/{}/infer", "ab".repeat(16)),
        &big,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn ciphertexts_and_keys_of_other_parameters_get_400() {
    let server = start(ServerLimits::default());
    let mut s = raw_session(&server);
    let mut foreign = ClientSession::new(foreign_bundle().clone()).unwrap();
    assert_ne!(foreign.params().id(), s.client.params().id());
    let input = foreign.encrypt_ids(&ids(TEXT)).unwrap();
    let r = post(&s.url("infer"), &input.to_bytes(foreign.params()));
    assert!(matches!(r.status, 400 | 413), "{}", r.error());
    assert!(r.error().contains("encrypted input of"), "{}", r.error());
    // Our own input, of the exact size, claiming other parameters (header bytes 7..15).
    let mut other_id = s
        .client
        .encrypt_ids(&ids(TEXT))
        .unwrap()
        .to_bytes(s.client.params());
    other_id[7] ^= 1;
    let r = post(&s.url("infer"), &other_id);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("parameters"), "{}", r.error());
    // Well-formed evaluation keys of the foreign parameters (one rotation key suffices).
    let fparams = foreign.params().clone();
    let sk = SecretKey::from_bytes_secret(&fparams, &foreign.secret_key_bytes()).unwrap();
    let mut kg = KeyGenerator::new(&fparams);
    let keys = EvaluationKeys {
        relin: kg.relin_key(&sk).unwrap(),
        galois: kg.galois_keys(&sk, &[1], false).unwrap(),
    };
    let r = post(&format!("{}/v1/sessions", s.base), &keys.to_bytes(&fparams));
    assert!(matches!(r.status, 400 | 413), "{}", r.error());
    assert!(r.error().contains("evaluation keys of"), "{}", r.error());

    // A reply of the foreign parameters to a pending round of ours.
    let req = s.start(TEXT);
    let fake = ReluReply {
        round: 1,
        nonce: req.nonce,
        items: vec![vec![]],
    };
    let r = post(&s.url("round"), &fake.to_bytes(foreign.params()));
    assert!(matches!(r.status, 400 | 413), "{}", r.error());
    assert!(r.error().contains("round reply of"), "{}", r.error());
}

#[test]
fn another_sessions_reply_is_rejected() {
    let server = start(ServerLimits::default());
    let mut a = raw_session(&server);
    let mut b = raw_session(&server);
    let req_a = a.start(TEXT);
    let req_b = b.start("w9 w10");
    assert_ne!(req_a.nonce, req_b.nonce);
    let reply_b = b.client.answer(&req_b).unwrap();
    let bytes_b = reply_b.to_bytes(b.client.params());
    // B's reply to round 1 sent to A's session, also at round 1: its nonce is B's.
    let r = post(&a.url("round"), &bytes_b);
    assert_eq!(r.status, 409);
    assert!(r.error().contains("nonce"), "{}", r.error());
    // Both sessions are unaffected: B continues to round 2, A's own reply is accepted.
    let r = post(&b.url("round"), &bytes_b);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    match Step::from_bytes(b.client.params(), &r.body, Default::default()).unwrap() {
        Step::NeedRelu(req) => assert_eq!(req.round, 2),
        Step::Done(_) => panic!("done after one round"),
    }
    let reply_a = a.client.answer(&req_a).unwrap();
    let r = post(&a.url("round"), &reply_a.to_bytes(a.client.params()));
    assert_eq!(r.status, 200, "{}", r.error());
}

#[test]
fn vanished_client_is_reaped_and_others_continue() {
    let server = start(ServerLimits {
        round_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    // Another client, connected and idle between inferences (only the long idle timeout
    // applies to it).
    let mut other = Client::connect(&server.url()).unwrap();
    assert_eq!(other.infer("w7 w8 w9").unwrap().rounds, 4 * LAYERS);
    // A client that sends its input and never answers the first round.
    let mut vanished = raw_session(&server);
    vanished.start(TEXT);
    assert_eq!(server.stats().sessions, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.stats().reaped == 0 {
        assert!(
            Instant::now() < deadline,
            "the vanished session was never reaped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = server.stats();
    assert_eq!((s.sessions, s.reaped), (1, 1));
    // Only the other client's keys are still held.
    let params = Parameters::new(&served().1.model.client_bundle().params).unwrap();
    let galois = served().1.model.galois_elements(&[]).unwrap().len();
    assert_eq!(s.key_bytes, EvaluationKeys::expanded_len(&params, galois));
    let r = post(&vanished.url("round"), b"late");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("unknown session"));
    // The other session is unaffected.
    let r = other.infer("w7 w8 w9").unwrap();
    assert_plain(&r.logits, "w7 w8 w9");
    assert_eq!(server.stats().inferences, 2);
}

#[test]
fn idle_session_is_reaped_and_its_keys_released() {
    let server = start(ServerLimits {
        idle_timeout: Duration::from_millis(500),
        ..Default::default()
    });
    let s = raw_session(&server);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.stats().reaped == 0 {
        assert!(
            Instant::now() < deadline,
            "the idle session was never reaped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = server.stats();
    assert_eq!((stats.sessions, stats.key_bytes), (0, 0));
    let r = post(&s.url("infer"), b"x");
    assert_eq!(r.status, 404);
}

#[test]
fn server_restart_gives_unknown_session() {
    let server = start(ServerLimits::default());
    let addr = server.addr();
    let mut client = Client::connect(&server.url()).unwrap();
    server.shutdown().unwrap();
    let restarted = ServerHandle::start(served().1.clone(), addr, ServerLimits::default()).unwrap();
    let err = client.infer(TEXT).unwrap_err();
    assert!(matches!(err, NetError::UnknownSession { .. }), "{err}");
    assert!(err.to_string().contains("reconnect"), "{err}");
    assert_eq!(restarted.stats().sessions, 0);
}

#[test]
fn limits_on_sessions_and_key_memory_give_503() {
    let server = start(ServerLimits {
        max_sessions: 1,
        ..Default::default()
    });
    let s = raw_session(&server);
    let keys = s.keys.clone();
    let r = post(&format!("{}/v1/sessions", s.base), &keys);
    assert_eq!(r.status, 503);
    assert!(r.error().contains("session limit"), "{}", r.error());

    let server = start(ServerLimits {
        max_key_memory: keys.len(),
        ..Default::default()
    });
    let r = post(&format!("{}/v1/sessions", server.url()), &keys);
    assert_eq!(r.status, 503);
    assert!(r.error().contains("key memory"), "{}", r.error());
    assert_eq!(server.stats().sessions, 0);
}

#[test]
fn key_file_of_other_parameters_is_refused() {
    let server = start(ServerLimits::default());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let c = ClientSession::new(foreign_bundle().clone()).unwrap();
    std::fs::write(&path, c.secret_key_bytes()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let options = ClientOptions {
        key_file: Some(path.clone()),
        ..Default::default()
    };
    let err = Client::connect_with(&server.url(), &options).unwrap_err();
    assert!(matches!(err, NetError::KeyFile { .. }), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Client::connect_with(&server.url(), &options).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

/// A server whose info names a bundle hash that is a path: the client refuses it before
/// touching its cache.
#[test]
fn hostile_info_hashes_never_become_paths() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut info = served_info();
    info.bundle_sha256 = "../../outside".into();
    let body = serde_json::to_vec(&info).unwrap();
    let fake = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body).unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let options = ClientOptions {
        cache_dir: Some(tmp.path().join("cache")),
        ..Default::default()
    };
    let err = Client::prepare(&url, &options).unwrap_err();
    assert!(matches!(err, NetError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    fake.join().unwrap();
    assert!(!tmp.path().join("cache").exists());
}

/// The info a real server of the test model announces.
fn served_info() -> ServerInfo {
    start(ServerLimits::default()).info().clone()
}
