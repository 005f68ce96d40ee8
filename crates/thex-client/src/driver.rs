//! The client's side of one inference over any transport: encrypt, send, answer every round,
//! decrypt. The HTTP client and the in-process runner are two [`Transport`]s of this one loop.

use std::time::Instant;

use serde::Serialize;

use crate::error::Error;
use crate::session::ClientSession;
use crate::wire::{Message, MessageLimits, Step};

/// Which client message a transport carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// The encrypted input, which starts an inference.
    Input,
    /// The reply to the pending round.
    Reply,
}

/// The server's answer to one client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The bytes of the next [`Step`]: a round request or the logits.
    pub bytes: Vec<u8>,
    /// The server's compute time for this message as it reports it, in seconds.
    pub server_seconds: f64,
}

/// How client messages reach a server: one exchange per message, in protocol order.
pub trait Transport {
    /// The transport's error; the client's own errors convert into it.
    type Error: From<Error>;
    /// Sends one message and waits for the server's answer.
    fn exchange(&mut self, kind: Outgoing, bytes: &[u8]) -> Result<Answer, Self::Error>;
    /// Bounds on the answers' sizes and counts.
    fn limits(&self) -> MessageLimits {
        MessageLimits::default()
    }
}

/// Time spent in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTiming {
    /// Phase name: `client.encrypt`, `client.rounds`, `client.decrypt`,
    /// `client.serialization`, `server.compute` (as the server reports it), `network`
    /// (waiting minus server compute), or a transport's own phases.
    pub name: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One exchange of an inference: the input or the reply to a round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    /// 0 for the input, else the round answered (rounds count from 1).
    pub round: u32,
    /// Bytes sent.
    pub bytes_up: usize,
    /// Bytes received.
    pub bytes_down: usize,
    /// Seconds from sending to having the whole answer (transport and server).
    pub wait_seconds: f64,
    /// Of these, the server's compute as it reports it.
    pub server_seconds: f64,
}

/// The outcome of one encrypted inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inference {
    /// Predicted label name.
    pub label: String,
    /// Predicted label index.
    pub label_id: usize,
    /// Label names, index-aligned with `probabilities` and `logits`.
    pub labels: Vec<String>,
    /// Softmax of the logits.
    pub probabilities: Vec<f64>,
    /// Decrypted logits.
    pub logits: Vec<f64>,
    /// Tokens of the input (with `[CLS]`/`[SEP]`).
    pub tokens: usize,
    /// Length bucket used.
    pub bucket: usize,
    /// Client rounds.
    pub rounds: usize,
    /// Bytes sent (input and replies; keys excluded).
    pub bytes_up: usize,
    /// Bytes received (requests and logits).
    pub bytes_down: usize,
    /// Seconds per phase.
    pub phases: Vec<PhaseTiming>,
    /// Every exchange in order.
    pub exchanges: Vec<Exchange>,
    /// Wall time in seconds.
    pub total_seconds: f64,
}

/// Runs one inference of token ids (with `[CLS]`/`[SEP]`) through `transport`, calling
/// `on_exchange(r)` after each answer (0: the input's, else round `r`'s). On any error the
/// client's inference is aborted: it answers no further request of it.
pub fn infer<T: Transport>(
    client: &mut ClientSession,
    transport: &mut T,
    ids: &[u32],
    on_exchange: &mut dyn FnMut(u32),
) -> Result<Inference, T::Error> {
    let result = run(client, transport, ids, on_exchange);
    if result.is_err() {
        client.abort();
    }
    result
}

fn run<T: Transport>(
    client: &mut ClientSession,
    transport: &mut T,
    ids: &[u32],
    on_exchange: &mut dyn FnMut(u32),
) -> Result<Inference, T::Error> {
    let start = Instant::now();
    let params = client.params().clone();
    let limits = transport.limits();
    let (mut t_rounds, mut t_ser) = (0.0, 0.0);
    let mut exchanges: Vec<Exchange> = Vec::new();

    let t = Instant::now();
    let input = client.encrypt_ids(ids)?;
    let t_encrypt = t.elapsed().as_secs_f64();
    let bucket = input.bucket;
    let t = Instant::now();
    let mut body = input.to_bytes(&params);
    drop(input);
    t_ser += t.elapsed().as_secs_f64();

    let (mut kind, mut round) = (Outgoing::Input, 0u32);
    let logits = loop {
        let t = Instant::now();
        let answer = transport.exchange(kind, &body)?;
        exchanges.push(Exchange {
            round,
            bytes_up: body.len(),
            bytes_down: answer.bytes.len(),
            wait_seconds: t.elapsed().as_secs_f64(),
            server_seconds: answer.server_seconds,
        });
        on_exchange(round);
        let t = Instant::now();
        let step = Step::from_bytes(&params, &answer.bytes, limits)?;
        t_ser += t.elapsed().as_secs_f64();
        match step {
            Step::Done(logits) => break logits,
            Step::NeedRelu(req) => {
                let t = Instant::now();
                let reply = client.answer(&req)?;
                round = req.round;
                drop(req);
                t_rounds += t.elapsed().as_secs_f64();
                let t = Instant::now();
                body = reply.to_bytes(&params);
                t_ser += t.elapsed().as_secs_f64();
                kind = Outgoing::Reply;
            }
        }
    };
    let t = Instant::now();
    let pred = client.decrypt_logits(&logits)?;
    let t_decrypt = t.elapsed().as_secs_f64();

    let wait: f64 = exchanges.iter().map(|e| e.wait_seconds).sum();
    let server: f64 = exchanges.iter().map(|e| e.server_seconds).sum();
    let phase = |name: &str, seconds: f64| PhaseTiming {
        name: name.into(),
        seconds,
    };
    Ok(Inference {
        label: pred.label,
        label_id: pred.label_id,
        labels: client.bundle().dims.labels.clone(),
        probabilities: pred.probabilities,
        logits: pred.logits,
        tokens: ids.len(),
        bucket,
        rounds: round as usize,
        bytes_up: exchanges.iter().map(|e| e.bytes_up).sum(),
        bytes_down: exchanges.iter().map(|e| e.bytes_down).sum(),
        phases: vec![
            phase("client.encrypt", t_encrypt),
            phase("client.rounds", t_rounds),
            phase("client.decrypt", t_decrypt),
            phase("client.serialization", t_ser),
            phase("server.compute", server),
            phase("network", (wait - server).max(0.0)),
        ],
        exchanges,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}
