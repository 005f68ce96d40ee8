//! A hostile peer against a real server on loopback: bodies refused before they are read,
//! slow and idle connections dropped, the connection cap, requests that fail their checks
//! keeping nothing alive, upload reservations that outlive a cancelled request, API tokens
//! and TLS.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use thex_client::{ClientSession, Message};
use thex_net::api::SessionCreated;
use thex_net::{
    ApiTokens, Client, ClientOptions, NetError, ServerConfig, ServerHandle, ServerLimits,
    TlsIdentity,
};

use common::{delete, get, get_as, post, post_as, served};

fn start(config: impl Into<ServerConfig>) -> ServerHandle {
    ServerHandle::start(served().1.clone(), "127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// Evaluation keys for every bucket, generated once.
fn keys() -> &'static Vec<u8> {
    static K: OnceLock<Vec<u8>> = OnceLock::new();
    K.get_or_init(|| {
        let c = ClientSession::new(served().1.model.client_bundle()).unwrap();
        c.evaluation_keys(&[]).unwrap().to_bytes(c.params())
    })
}

/// Opens a connection and writes `head` (request line and headers, possibly incomplete).
fn connect(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads until the server closes the connection or `limit` passes; returns what arrived
/// and whether the connection was closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

/// Reads one response head (up to the blank line).
fn response_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bodies_are_refused_before_they_are_read() {
    let server = start(ServerLimits::default());
    let addr = server.addr();
    // 256 MiB announced to an unknown session: answered at once, nothing sent.
    let t = Instant::now();
    let mut s = connect(
        addr,
        &format!(
            "POST /v1/sessions/{}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            "ab".repeat(16),
            256 << 20
        ),
    );
    let head = response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Keys of the wrong size: refused before any byte of them is read or reserved (larger
    // than the exact size: 413; smaller: 400).
    for (len, status) in [(keys().len() + 1, "413"), (keys().len() - 1, "400")] {
        let mut s = connect(
            addr,
            &format!("POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"),
        );
        let head = response_head(&mut s);
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
    }
    // A body without a length.
    let mut s = connect(
        addr,
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let head = response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 411"), "{head}");
    assert_eq!(server.stats().key_bytes, 0);
}

#[test]
fn slow_and_idle_connections_are_dropped() {
    let server = start(ServerLimits {
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    let addr = server.addr();
    let mut conns: Vec<TcpStream> = (0..8)
        .map(|i| match i % 3 {
            0 => connect(addr, ""),
            1 => connect(addr, "POST /v1/sessi"),
            _ => connect(addr, "GET /v1/info HTTP/1.1\r\nHost: x\r\n"),
        })
        .collect();
    let t = Instant::now();
    for c in &mut conns {
        let (_, closed) = read_until_closed(c, Duration::from_secs(10));
        assert!(closed, "a stalled connection stayed open");
    }
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // An idle keep-alive connection after a complete request is dropped too.
    let mut c = connect(addr, "GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed);
    assert_eq!(get(&format!("{}/v1/info", server.url())).status, 200);
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    let server = start(ServerLimits {
        max_connections: 4,
        header_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    let addr = server.addr();
    let held: Vec<TcpStream> = (0..4).map(|_| connect(addr, "GET /v1/in")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(addr, "");
    let (_, closed) = read_until_closed(&mut extra, Duration::from_secs(5));
    assert!(closed);
    assert!(server.stats().refused_connections >= 1);
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(&format!("{}/v1/info", server.url())).status, 200);
}

#[test]
fn failed_requests_keep_no_session_alive_and_slow_bodies_time_out() {
    let server = start(ServerLimits {
        idle_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(1),
        min_upload_rate: 1 << 30,
        ..Default::default()
    });
    let r = post(&format!("{}/v1/sessions", server.url()), keys());
    assert_eq!(r.status, 201);
    let id = serde_json::from_slice::<SessionCreated>(&r.body)
        .unwrap()
        .session;
    let infer = format!("{}/v1/sessions/{id}/infer", server.url());
    // A body that stops halfway: 408 after the grace time, the session stays free.
    let size = {
        let mut c = ClientSession::new(served().1.model.client_bundle()).unwrap();
        let ids = vec![2, 7, 3];
        c.encrypt_ids(&ids).unwrap().to_bytes(c.params()).len()
    };
    let mut s = connect(
        server.addr(),
        &format!(
            "POST /v1/sessions/{id}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        ),
    );
    s.write_all(&vec![0u8; size / 2]).unwrap();
    let t = Instant::now();
    // Meanwhile the session is busy: it cannot be closed under the running request.
    let session_url = format!("{}/v1/sessions/{id}", server.url());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(delete(&session_url).status, 409);
    let head = response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Requests that fail their checks, every 200 ms, do not keep the session alive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stats().reaped == 0 {
        assert!(Instant::now() < deadline, "the session was kept alive");
        let status = post(&infer, b"x").status;
        // The reaper may take the session between the check above and this request.
        if status == 404 && server.stats().reaped > 0 {
            break;
        }
        assert_eq!(status, 400);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(post(&infer, b"x").status, 404);
}

#[test]
fn a_cancelled_upload_keeps_its_reservation_until_parsed() {
    let server = start(ServerLimits {
        max_sessions: 1,
        ..Default::default()
    });
    let mut s = connect(
        server.addr(),
        &format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            keys().len()
        ),
    );
    s.write_all(keys()).unwrap();
    drop(s);
    // While the abandoned keys are parsed, their slot is taken; once parsed, they are
    // dropped (nobody holds the session id) and the slot is free again.
    let url = format!("{}/v1/sessions", server.url());
    let r = post(&url, keys());
    assert_eq!(r.status, 503, "{}", r.error());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = post(&url, keys());
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.error());
        assert!(Instant::now() < deadline, "the slot was never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.stats().sessions, 1);
}

const TOKEN_A: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
const TOKEN_B: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

#[test]
fn tokens_gate_every_route_but_info_and_bundle() {
    let server = start(ServerConfig {
        limits: ServerLimits {
            sessions_per_client: 1,
            ..Default::default()
        },
        tokens: Some(ApiTokens::new([TOKEN_A, TOKEN_B]).unwrap()),
        tls: None,
    });
    let base = server.url();
    assert_eq!(get(&format!("{base}/v1/info")).status, 200);
    assert_eq!(get(&format!("{base}/v1/bundle")).status, 200);
    for route in ["/v1/tokenizer", "/v1/stats"] {
        assert_eq!(get(&format!("{base}{route}")).status, 401, "{route}");
        let wrong = get_as(&format!("{base}{route}"), Some(&TOKEN_A.replace('a', "c")));
        assert_eq!(wrong.status, 401, "{route}");
        assert_eq!(get_as(&format!("{base}{route}"), Some(TOKEN_A)).status, 200);
    }
    let sessions = format!("{base}/v1/sessions");
    let r = post(&sessions, keys());
    assert_eq!(r.status, 401);
    assert!(r.error().contains("API token"), "{}", r.error());
    let r = post_as(&sessions, keys(), Some(TOKEN_A));
    assert_eq!(r.status, 201, "{}", r.error());
    let id = serde_json::from_slice::<SessionCreated>(&r.body)
        .unwrap()
        .session;
    // The token's quota.
    let r = post_as(&sessions, keys(), Some(TOKEN_A));
    assert_eq!(r.status, 429, "{}", r.error());
    // Another token does not see A's session.
    let infer = format!("{base}/v1/sessions/{id}/infer");
    assert_eq!(post_as(&infer, b"x", Some(TOKEN_B)).status, 404);
    assert_eq!(post_as(&infer, b"x", Some(TOKEN_A)).status, 400);

    // The client with a token runs an inference; without one it is refused.
    let err = Client::connect(&base).unwrap_err();
    assert!(matches!(err, NetError::Server { status: 401, .. }), "{err}");
    let options = ClientOptions {
        token: Some(TOKEN_B.into()),
        ..Default::default()
    };
    assert!(!format!("{options:?}").contains(TOKEN_B));
    let mut client = Client::connect_with(&base, &options).unwrap();
    assert_eq!(client.infer("w7 w8").unwrap().rounds, 4 * common::LAYERS);
}

#[test]
fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let server = start(ServerConfig {
        tls: Some(TlsIdentity::from_pem_files(&cert, &key).unwrap()),
        ..Default::default()
    });
    assert!(server.url().starts_with("https://"));
    let url = format!("https://localhost:{}", server.addr().port());
    // Without the CA the certificate is not trusted.
    let err = Client::connect(&url).unwrap_err();
    assert!(matches!(err, NetError::Transport { .. }), "{err}");
    let options = ClientOptions {
        ca_file: Some(ca_file),
        ..Default::default()
    };
    let mut client = Client::connect_with(&url, &options).unwrap();
    assert!(client.connect_report().key_bytes > 0);
    let r = client.infer("w9 w10 w11").unwrap();
    assert_eq!(r.rounds, 4 * common::LAYERS);
    // Plain HTTP to the TLS port is not served.
    let mut s = connect(server.addr(), "GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(!answer.contains("200 OK"), "{answer}");
    // Bad files get clear errors.
    let e = TlsIdentity::from_pem_files(&key, &key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no certificate"), "{e}");
    let e = TlsIdentity::from_pem_files(&cert, &cert)
        .unwrap_err()
        .to_string();
    assert!(e.contains("private key"), "{e}");
}

#[test]
fn plain_http_beyond_loopback_is_flagged() {
    assert!(thex_net::plain_http_warning("http://127.0.0.1:8080").is_none());
    assert!(thex_net::plain_http_warning("http://localhost/").is_none());
    assert!(thex_net::plain_http_warning("http://[::1]:9").is_none());
    assert!(thex_net::plain_http_warning("https://example.com").is_none());
    let w = thex_net::plain_http_warning("http://10.0.0.7:8080").unwrap();
    assert!(w.contains("plain HTTP"), "{w}");
    assert!(thex_net::plain_http_warning("http://example.com/v1").is_some());
}

#[test]
fn a_client_idle_past_the_header_timeout_opens_a_fresh_connection() {
    let server = start(ServerLimits {
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    let mut client = Client::connect(&server.url()).unwrap();
    // The server has closed the keep-alive connection by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(client.infer("w7 w8").unwrap().rounds, 4 * common::LAYERS);
}
