//! Both sides in one process: every message goes through its byte form, so the byte counts
//! are what a network would carry.

use std::time::Instant;

use serde::Serialize;

use crate::client::ClientSession;
use crate::error::Result;
use crate::server::ServerSession;
use crate::wire::{EncryptedInput, EncryptedLogits, MessageLimits, ReluReply, ReluRequest, Step};

/// Time spent in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTiming {
    /// Phase name: `client.encrypt`, `client.rounds`, `client.decrypt`, `serialization`, or a
    /// server segment `server.layer{i}.{segment}`.
    pub name: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The outcome of one encrypted inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferenceResult {
    /// Decrypted logits.
    pub logits: Vec<f64>,
    /// Softmax of the logits.
    pub probabilities: Vec<f64>,
    /// Predicted label name.
    pub label: String,
    /// Predicted label index.
    pub label_id: usize,
    /// Tokens of the input (with `[CLS]`/`[SEP]`).
    pub tokens: usize,
    /// Length bucket used.
    pub bucket: usize,
    /// Client rounds.
    pub rounds: usize,
    /// Bytes from client to server (input and replies; keys excluded).
    pub bytes_up: usize,
    /// Bytes from server to client (requests and logits).
    pub bytes_down: usize,
    /// Time per phase.
    pub timings: Vec<PhaseTiming>,
    /// Total wall time in seconds.
    pub total_seconds: f64,
}

/// Runs one inference of `text` between `client` and `server` in this process.
pub fn run_local(
    client: &mut ClientSession,
    server: &mut ServerSession,
    text: &str,
) -> Result<InferenceResult> {
    run(client, server, |c| c.encrypt_text(text))
}

/// Runs one inference on token ids (no tokenizer needed).
pub fn run_local_ids(
    client: &mut ClientSession,
    server: &mut ServerSession,
    ids: &[u32],
) -> Result<InferenceResult> {
    run(client, server, |c| c.encrypt_ids(ids))
}

fn run(
    client: &mut ClientSession,
    server: &mut ServerSession,
    encrypt: impl FnOnce(&mut ClientSession) -> Result<EncryptedInput>,
) -> Result<InferenceResult> {
    let start = Instant::now();
    let params = client.params().clone();
    let limits = MessageLimits::default();
    let (mut up, mut down, mut rounds) = (0usize, 0usize, 0usize);
    let (mut t_rounds, mut t_ser) = (0.0, 0.0);

    let t = Instant::now();
    let input = encrypt(client)?;
    let t_encrypt = t.elapsed().as_secs_f64();
    let bucket = input.bucket;
    let tokens = client.tokens_in_flight().unwrap_or(0);

    let t = Instant::now();
    let bytes = input.to_bytes(&params);
    up += bytes.len();
    let input = EncryptedInput::from_bytes(&params, &bytes, limits)?;
    t_ser += t.elapsed().as_secs_f64();
    let mut step = server.start(input)?;
    let logits = loop {
        match step {
            Step::Done(l) => {
                let t = Instant::now();
                let bytes = l.to_bytes(&params);
                down += bytes.len();
                let l = EncryptedLogits::from_bytes(&params, &bytes, limits)?;
                t_ser += t.elapsed().as_secs_f64();
                break l;
            }
            Step::NeedRelu(req) => {
                rounds += 1;
                let t = Instant::now();
                let bytes = req.to_bytes(&params);
                down += bytes.len();
                let req = ReluRequest::from_bytes(&params, &bytes, limits)?;
                t_ser += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let reply = client.answer(&req)?;
                t_rounds += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let bytes = reply.to_bytes(&params);
                up += bytes.len();
                let reply = ReluReply::from_bytes(&params, &bytes, limits)?;
                t_ser += t.elapsed().as_secs_f64();
                step = server.resume(reply)?;
            }
        }
    };
    let t = Instant::now();
    let pred = client.decrypt_logits(&logits)?;
    let t_decrypt = t.elapsed().as_secs_f64();

    let mut timings = vec![
        PhaseTiming {
            name: "client.encrypt".into(),
            seconds: t_encrypt,
        },
        PhaseTiming {
            name: "client.rounds".into(),
            seconds: t_rounds,
        },
        PhaseTiming {
            name: "client.decrypt".into(),
            seconds: t_decrypt,
        },
        PhaseTiming {
            name: "serialization".into(),
            seconds: t_ser,
        },
    ];
    timings.extend(server.timings().iter().map(|(n, d)| PhaseTiming {
        name: format!("server.{n}"),
        seconds: d.as_secs_f64(),
    }));
    Ok(InferenceResult {
        logits: pred.logits,
        probabilities: pred.probabilities,
        label: pred.label,
        label_id: pred.label_id,
        tokens,
        bucket,
        rounds,
        bytes_up: up,
        bytes_down: down,
        timings,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}
