//! Both sides in one process: the in-process [`Transport`], so every message goes through its
//! byte form and the byte counts are what a network would carry.

use std::time::Instant;

use thex_client::{
    Answer, ClientSession, Inference, MessageLimits, Outgoing, PhaseTiming, Transport, infer,
};

use crate::error::{EngineError, Result};
use crate::server::ServerSession;

/// A [`Transport`] that hands each message to a [`ServerSession`] in this process.
#[derive(Debug)]
pub struct Local<'a> {
    server: &'a mut ServerSession,
    limits: MessageLimits,
}

impl<'a> Local<'a> {
    /// A transport to `server`.
    pub fn new(server: &'a mut ServerSession) -> Self {
        Self {
            server,
            limits: MessageLimits::default(),
        }
    }
}

impl Transport for Local<'_> {
    type Error = EngineError;

    fn exchange(&mut self, kind: Outgoing, bytes: &[u8]) -> Result<Answer> {
        let t = Instant::now();
        let step = self.server.receive(kind, bytes, self.limits)?;
        Ok(Answer {
            bytes: step.to_bytes(self.server.model().params()),
            server_seconds: t.elapsed().as_secs_f64(),
        })
    }
}

/// Runs one inference of token ids (with `[CLS]`/`[SEP]`) between `client` and `server` in
/// this process. Its phases add the server's time per segment (`server.layer{i}.{segment}`).
/// A failed inference is aborted on both sides, which are then ready for the next one.
pub fn run_local(
    client: &mut ClientSession,
    server: &mut ServerSession,
    ids: &[u32],
) -> Result<Inference> {
    let mut r = match infer(client, &mut Local::new(server), ids, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    r.phases
        .extend(server.timings().iter().map(|(n, d)| PhaseTiming {
            name: format!("server.{n}"),
            seconds: d.as_secs_f64(),
        }));
    Ok(r)
}
