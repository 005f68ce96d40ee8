//! Hostile traffic against a real `thex serve` process on loopback while a legitimate client
//! runs inferences: parallel oversized bodies to unknown sessions, slowloris connections,
//! sessions filled with all-zero keys and kept "alive" by failing requests, padded and
//! cancelled key uploads, every malformed Galois element, malformed ciphertext fields,
//! wrong-bucket inputs, replays and concurrent replies.
//!
//! It asserts that the server never crashes, never answers an attacker's input with a 500,
//! stays within its memory bound, and that the legitimate client completes every inference.
//! The report (inputs per kind and their statuses, peak RSS against the bound, legitimate
//! latency against a quiet baseline) is printed, and written as JSON to
//! `$THEX_HOSTILE_REPORT` if set. The attack lasts `$THEX_HOSTILE_SECONDS` (default 20).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ckks::{GaloisKeys, Parameters, RelinKey};
use serde_json::json;
use thex_client::{ClientBundle, ClientSession, Message, Step};
use thex_model::synthetic::{SMALL, write_dir};
use thex_net::{Client, ClientOptions};

use common::Server;

const ATTACKER: &str = "attacker-token-0123456789abcdef";
/// A second hostile token for the key-format attacks, so that the first one's full quota
/// does not stop them before the parser.
const ATTACKER2: &str = "attacker-token-2-0123456789abcdef";
const LEGIT: &str = "legitimate-token-0123456789abcdef";
const MAX_SESSIONS: usize = 6;
const PER_TOKEN: usize = 2;
const IDLE_S: u64 = 8;
const HEADER_S: u64 = 2;

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Statuses of the answers to one kind of hostile input.
#[derive(Default, Debug)]
struct Tally {
    sent: u64,
    statuses: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Report(Mutex<BTreeMap<&'static str, Tally>>);

impl Report {
    fn record(&self, kind: &'static str, outcome: impl ToString) {
        let mut r = self.0.lock().unwrap();
        let t = r.entry(kind).or_default();
        t.sent += 1;
        *t.statuses.entry(outcome.to_string()).or_default() += 1;
    }
}

/// Reads a response: its status code and body (by Content-Length, at most 64 MiB).
fn read_response(s: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(64 << 20)];
    s.read_exact(&mut body).ok()?;
    Some((status, body))
}

/// `POST path` (see [`request`]); the final status, or `None` if the server closed the
/// connection.
fn post(addr: SocketAddr, path: &str, body: &[u8], declared: usize, token: &str) -> Option<u16> {
    request(addr, "POST", path, body, declared, token).map(|a| a.0)
}

/// One request on its own connection, declaring `declared` body bytes. A body goes out with
/// `Expect: 100-continue`, only if the server asks for it. Returns the final status and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    declared: usize,
    token: &str,
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let expect = if declared > 0 {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {declared}\r\n{expect}Connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    let answer = read_response(&mut s)?;
    if answer.0 != 100 {
        return Some(answer);
    }
    s.write_all(body).ok()?;
    read_response(&mut s)
}

fn outcome(status: Option<u16>) -> String {
    status.map_or("closed".into(), |s| s.to_string())
}

/// Byte ranges of the residues of every key-switching key in an evaluation-key message, and
/// the offsets of the Galois elements.
struct KeyLayout {
    residues: Vec<std::ops::Range<usize>>,
    elements: Vec<usize>,
}

fn key_layout(params: &Parameters, galois: usize) -> KeyLayout {
    let ksk = GaloisKeys::serialized_len(params, 1) - GaloisKeys::serialized_len(params, 0) - 8;
    let dnum = params.dnum();
    let packed = (ksk - 32) / dnum - 2;
    let mut residues = Vec::new();
    let mut digits = |start: usize| {
        for d in 0..dnum {
            let p = start + 32 + d * (2 + packed) + 2;
            residues.push(p..p + packed);
        }
    };
    // Message header, relin blob length, relin header.
    digits(15 + 4 + 15);
    let galois_start = 15 + 4 + RelinKey::serialized_len(params) + 4;
    let mut elements = Vec::new();
    for k in 0..galois {
        let key = galois_start + 15 + 4 + k * (8 + ksk);
        elements.push(key);
        digits(key + 8);
    }
    KeyLayout { residues, elements }
}

/// Opens a session with `keys` for bucket 16; its id.
fn session_id(addr: SocketAddr, keys: &[u8]) -> Option<String> {
    let (status, body) = request(
        addr,
        "POST",
        "/v1/sessions?buckets=16",
        keys,
        keys.len(),
        ATTACKER,
    )?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    (status == 201).then(|| v["session"].as_str().map(str::to_string))?
}

fn start_server(model: &Path, log: &Path, tokens: &Path, key_mib: usize) -> (Server, String) {
    let (server, url, _) = common::serve(
        model,
        log,
        &[
            "--buckets",
            "16,32",
            "--tokens",
            tokens.to_str().unwrap(),
            "--max-sessions",
            &MAX_SESSIONS.to_string(),
            "--sessions-per-token",
            &PER_TOKEN.to_string(),
            "--max-key-mib",
            &key_mib.to_string(),
            "--idle-timeout",
            &IDLE_S.to_string(),
            "--header-timeout",
            &HEADER_S.to_string(),
            "--max-connections",
            "64",
            "--threads",
            "2",
        ],
    );
    (server, url)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
fn hostile_traffic_leaves_the_server_up_and_within_its_limits() {
    let seconds: u64 = std::env::var("THEX_HOSTILE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_dir(SMALL, 5, &model).unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{ATTACKER}\n{ATTACKER2}\n{LEGIT}\n")).unwrap();

    // The legitimate client's key memory sets the limit: room for four sessions.
    let bundle_probe = {
        let (server, url) = start_server(&model, &tmp.path().join("probe.log"), &tokens, 1 << 20);
        let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
        let (_, bytes) = request(addr, "GET", "/v1/bundle", b"", 0, ATTACKER).unwrap();
        drop(server);
        ClientBundle::from_bytes(&bytes).unwrap()
    };
    let params = Parameters::new(&bundle_probe.params).unwrap();
    let attacker = ClientSession::new(bundle_probe.clone()).unwrap();
    let keys16 = attacker.evaluation_keys(&[16]).unwrap();
    let galois = keys16.galois.galois_elements().len();
    let keys16 = keys16.to_bytes(&params);
    let expanded = thex_client::EvaluationKeys::expanded_len(&params, galois);
    let key_limit = 4 * (expanded + keys16.len());
    let key_mib = key_limit.div_ceil(1 << 20);

    let log = tmp.path().join("serve.log");
    let (server, url) = start_server(&model, &log, &tokens, key_mib);
    let pid = server.0.id();
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let rss_start = rss_kib(pid, "VmRSS:");

    let legit_options = ClientOptions {
        token: Some(LEGIT.into()),
        buckets: vec![16],
        ..Default::default()
    };
    let mut legit = Client::connect_with(&url, &legit_options).unwrap();
    let text = "w7 w8 w9 w10";
    let mut quiet: Vec<f64> = (0..3)
        .map(|_| legit.infer(text).unwrap().total_seconds)
        .collect();
    let quiet_median = median(&mut quiet);

    let report = Arc::new(Report::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(Mutex::new(0u64));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut attackers = Vec::new();
    let running = move |stop: &AtomicBool| !stop.load(Ordering::Relaxed) && Instant::now() < until;

    // RSS sampler.
    {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = rss_kib(pid, "VmRSS:");
                let mut p = peak.lock().unwrap();
                *p = (*p).max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // Oversized bodies to unknown sessions, from four threads.
    for t in 0..4 {
        let (report, stop) = (report.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while running(&stop) && i < 5_000 {
                let path = format!("/v1/sessions/{:032x}/infer", (t << 40) + i);
                let s = post(addr, &path, &[0; 1 << 16], 256 << 20, ATTACKER);
                report.record("oversized body, unknown session", outcome(s));
                i += 1;
            }
        }));
    }
    // Slowloris: 24 connections that never finish their headers, reopened when dropped.
    {
        let (report, stop) = (report.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || {
            let mut open: Vec<(TcpStream, Instant)> = Vec::new();
            while running(&stop) {
                open.retain_mut(|(c, since)| {
                    c.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 1];
                    let closed = matches!(c.read(&mut b), Ok(0));
                    if closed {
                        report.record(
                            "slowloris connection",
                            format!("dropped after {:.0} s", since.elapsed().as_secs_f64()),
                        );
                    }
                    !closed
                });
                while open.len() < 24 {
                    match TcpStream::connect(addr) {
                        Ok(mut c) => {
                            let _ =
                                c.write_all(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                            open.push((c, Instant::now()));
                        }
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    // Key uploads: all-zero keys (kept "alive" by failing requests), padded keys, cancelled
    // uploads, and every malformed Galois element.
    {
        let (report, stop) = (report.clone(), stop.clone());
        let keys = keys16.clone();
        let layout = key_layout(&params, galois);
        let two_n = 2 * params.n() as u64;
        attackers.push(std::thread::spawn(move || {
            let mut zero = keys.clone();
            for r in &layout.residues {
                zero[r.clone()].fill(0);
            }
            let mut zero_sessions = Vec::new();
            let mut round = 0u64;
            while running(&stop) && round < 1_000 {
                if let Some(id) = session_id(addr, &zero) {
                    report.record("all-zero keys", "201");
                    zero_sessions.push(id);
                } else {
                    report.record("all-zero keys", "refused");
                }
                for id in &zero_sessions {
                    let s = post(addr, &format!("/v1/sessions/{id}/infer"), b"x", 1, ATTACKER);
                    report.record("1-byte request to keep a session alive", outcome(s));
                }
                let k = round as usize % layout.elements.len();
                let at = layout.elements[k];
                let current = u64::from_le_bytes(keys[at..at + 8].try_into().unwrap());
                let bad = [0, 2, current + 1, two_n + 1, u64::MAX, current];
                for (j, g) in bad.into_iter().enumerate() {
                    let mut forged = keys.clone();
                    let g = if j == 5 {
                        // A duplicate of the previous element (or of the next one).
                        let other = layout.elements[if k == 0 { 1 } else { k - 1 }];
                        u64::from_le_bytes(keys[other..other + 8].try_into().unwrap())
                    } else {
                        g
                    };
                    forged[at..at + 8].copy_from_slice(&g.to_le_bytes());
                    let s =
                        post(addr, "/v1/sessions?buckets=16", &forged, forged.len(), ATTACKER2);
                    report.record("malformed Galois element", outcome(s));
                }
                let mut padded = keys.clone();
                padded.extend_from_slice(&vec![0; 1 + (round as usize % 4096)]);
                let s = post(addr, "/v1/sessions?buckets=16", &padded, padded.len(), ATTACKER2);
                report.record("padded keys", outcome(s));
                // Cancelled mid-upload.
                if let Ok(mut c) = TcpStream::connect(addr) {
                    let head = format!(
                        "POST /v1/sessions?buckets=16 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ATTACKER2}\r\nContent-Length: {}\r\n\r\n",
                        keys.len()
                    );
                    let cut = if round.is_multiple_of(2) { keys.len() / 2 } else { keys.len() };
                    let _ = c.write_all(head.as_bytes());
                    let _ = c.write_all(&keys[..cut]);
                    report.record("cancelled upload", if cut == keys.len() { "after the body" } else { "mid-body" });
                }
                round += 1;
            }
        }));
    }
    // Malformed ciphertext fields, wrong-bucket inputs, replays and concurrent replies, on the
    // attacker's own (honest-key) session.
    {
        let (report, stop) = (report.clone(), stop.clone());
        let keys = keys16.clone();
        let mut client = attacker;
        attackers.push(std::thread::spawn(move || {
            let Some(id) = session_id(addr, &keys) else {
                report.record("attacker session", "refused");
                return;
            };
            let infer = format!("/v1/sessions/{id}/infer");
            let round_path = format!("/v1/sessions/{id}/round");
            let params = client.params().clone();
            let mut n = 0u64;
            while running(&stop) && n < 200 {
                let input = client.encrypt_ids(&[2, 7, 8, 3]).unwrap().to_bytes(&params);
                // Header fields (type, parameter id, bucket, count) and the first
                // ciphertext's fields (scale, slots, seed, limb counts, residues).
                let ct = 15 + 4 + 4 + 4;
                // (offset, bytes written): message type, parameter id, bucket, count, the
                // ciphertext's scale (NaN, then 2^-1023), slots, limb counts, and a run of
                // all-one bits (an unreduced residue).
                let fields: [(usize, &[u8]); 10] = [
                    (6, &[9]),
                    (7, &[0x55]),
                    (15, &[32]),
                    (19, &[0xff]),
                    (ct + 15, &[0xff; 8]),
                    (ct + 15, &[0, 0, 0, 0, 0, 0, 0x10, 0]),
                    (ct + 15 + 8, &[3, 0, 0, 0]),
                    (ct + 15 + 44, &[0x0f]),
                    (ct + 15 + 45, &[0x03]),
                    (input.len() - 17, &[0xff; 16]),
                ];
                for (at, v) in fields {
                    let mut bad = input.clone();
                    bad[at..at + v.len()].copy_from_slice(v);
                    let s = post(addr, &infer, &bad, bad.len(), ATTACKER);
                    report.record("malformed ciphertext field", outcome(s));
                }
                // An input of the 32-token bucket, whose keys this session lacks.
                let long: Vec<u32> = (0..20).map(|i| 5 + i % 40).collect();
                let wrong = client.encrypt_ids(&long).unwrap().to_bytes(&params);
                let s = post(addr, &infer, &wrong, wrong.len(), ATTACKER);
                report.record("wrong-bucket input", outcome(s));
                // A real inference: the first reply sent twice at once, then replayed; the
                // rest answered honestly to the logits.
                let input = client.encrypt_ids(&[2, 7, 8, 3]).unwrap().to_bytes(&params);
                let Some((200, body)) =
                    request(addr, "POST", &infer, &input, input.len(), ATTACKER)
                else {
                    report.record("attacker inference", "refused");
                    break;
                };
                let mut step = Step::from_bytes(&params, &body, Default::default()).unwrap();
                let mut first = true;
                while let Step::NeedRelu(req) = &step {
                    let reply = client.answer(req).unwrap().to_bytes(&params);
                    if !first {
                        let (status, body) =
                            request(addr, "POST", &round_path, &reply, reply.len(), ATTACKER)
                                .unwrap();
                        assert_eq!(status, 200);
                        step = Step::from_bytes(&params, &body, Default::default()).unwrap();
                        continue;
                    }
                    first = false;
                    let twins: Vec<_> = (0..2)
                        .map(|_| {
                            let (path, reply) = (round_path.clone(), reply.clone());
                            std::thread::spawn(move || {
                                request(addr, "POST", &path, &reply, reply.len(), ATTACKER)
                            })
                        })
                        .collect();
                    let mut next = None;
                    for t in twins {
                        let answer = t.join().unwrap();
                        report.record("concurrent reply", outcome(answer.as_ref().map(|a| a.0)));
                        if let Some((200, body)) = answer {
                            next = Some(body);
                        }
                    }
                    let s = post(addr, &round_path, &reply, reply.len(), ATTACKER);
                    report.record("replayed reply", outcome(s));
                    let Some(body) = next else {
                        report.record("attacker inference", "no reply accepted");
                        break;
                    };
                    step = Step::from_bytes(&params, &body, Default::default()).unwrap();
                }
                if let Step::Done(logits) = &step {
                    client.decrypt_logits(logits).unwrap();
                    report.record("attacker inference", "completed");
                }
                n += 1;
            }
        }));
    }

    // The legitimate client meanwhile.
    let mut busy = Vec::new();
    let mut legit_errors = Vec::new();
    while Instant::now() < until {
        match legit.infer(text) {
            Ok(r) => busy.push(r.total_seconds),
            Err(e) => legit_errors.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let busy_n = busy.len();
    let busy_median = median(&mut busy);
    let alive = request(addr, "GET", "/v1/info", b"", 0, ATTACKER).is_some_and(|a| a.0 == 200);
    let stats: serde_json::Value = request(addr, "GET", "/v1/stats", b"", 0, ATTACKER)
        .and_then(|(_, body)| serde_json::from_slice(&body).ok())
        .unwrap_or_default();
    let mut server = server;
    let crashed = server.0.try_wait().unwrap().is_some();
    let hwm = rss_kib(pid, "VmHWM:");
    let peak = (*peak_rss.lock().unwrap()).max(hwm);
    // Bound: the memory at start, the key-memory limit, and for each session and queued
    // request a body with its parsed ciphertexts (at most 4 × the largest message).
    let largest = {
        let sched = bundle_probe.schedule(&params, 32).unwrap();
        let input = thex_client::EncryptedInput::serialized_len(&params, &sched);
        let reply = sched
            .rounds()
            .iter()
            .map(|r| thex_client::ReluReply::serialized_len(&params, r))
            .max()
            .unwrap();
        input.max(reply)
    };
    let bound_kib = rss_start
        + (key_mib << 10) as u64
        + ((MAX_SESSIONS * 4 * largest) >> 10) as u64
        + (64 << 10);

    let kinds: serde_json::Map<String, serde_json::Value> = report
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(k, t)| {
            (
                k.to_string(),
                json!({"sent": t.sent, "answers": t.statuses}),
            )
        })
        .collect();
    let out = json!({
        "attack_seconds": seconds,
        "inputs": kinds,
        "server_crashes": u64::from(crashed || !alive),
        "rss_start_mib": rss_start as f64 / 1024.0,
        "rss_peak_mib": peak as f64 / 1024.0,
        "rss_bound_mib": bound_kib as f64 / 1024.0,
        "key_memory_limit_mib": key_mib,
        "server_stats": stats,
        "legit_inferences": busy_n,
        "legit_errors": legit_errors,
        "legit_latency_quiet_s": quiet_median,
        "legit_latency_under_attack_s": busy_median,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    if let Ok(path) = std::env::var("THEX_HOSTILE_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    }
    let server_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!crashed && alive, "the server died:\n{}", server_log());
    assert!(legit_errors.is_empty(), "{legit_errors:?}");
    assert!(busy_n > 0, "no legitimate inference finished under attack");
    assert!(
        peak <= bound_kib,
        "peak RSS {peak} KiB over the bound {bound_kib} KiB"
    );
    for (kind, t) in report.0.lock().unwrap().iter() {
        assert!(
            !t.statuses.keys().any(|s| s.starts_with('5') && s != "503"),
            "{kind}: a server error for a client's input: {:?}\n{}",
            t.statuses,
            server_log()
        );
    }
}
