//! The server's sessions: each one's keys and state, the memory they hold and reserve, and
//! the reaper's rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rand::RngCore;
use thex_engine::ServerSession;

use super::access::Client;
use super::http::ApiError;
use crate::api::ServerStats;

/// Locks a mutex whose data stays consistent even if a holder panicked (plain counters and
/// timestamps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client session.
#[derive(Debug)]
pub(crate) struct Session {
    /// First 8 hex characters of the id, for logs (the full id is the session's credential).
    pub short: String,
    /// The API token that opened it: only requests with that token reach it.
    pub owner: Client,
    pub engine: Mutex<ServerSession>,
    /// When a request of the session last validated.
    last_request: Mutex<Instant>,
    /// A request of the session is being read or computed.
    busy: AtomicBool,
    /// Memory of its expanded keys.
    pub key_bytes: usize,
}

/// Why the reaper drops a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No request for the idle timeout.
    Idle,
    /// A round left unanswered for the round timeout.
    RoundUnanswered,
    /// A computation of the session panicked: its state cannot be trusted.
    Poisoned,
}

impl Session {
    /// Only a validated request calls it: a request that fails its checks keeps nothing alive.
    pub fn touch(&self) {
        *lock(&self.last_request) = Instant::now();
    }

    /// Marks the session busy for one request; `None` if another one holds it.
    fn claim(self: &Arc<Self>) -> Option<Busy> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Busy(self.clone()))
    }

    fn expired(&self, idle: Duration, round: Duration) -> Option<Expiry> {
        if self.engine.is_poisoned() {
            return Some(Expiry::Poisoned);
        }
        if self.busy.load(Ordering::Acquire) {
            return None;
        }
        let pending = self.engine.try_lock().ok()?.pending_round().is_some();
        let (limit, why) = if pending {
            (round, Expiry::RoundUnanswered)
        } else {
            (idle, Expiry::Idle)
        };
        (lock(&self.last_request).elapsed() > limit).then_some(why)
    }
}

/// A session marked busy; dropping it (also with a cancelled request's task) frees it.
pub(crate) struct Busy(Arc<Session>);

impl Busy {
    pub fn session(&self) -> &Session {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Bounds of the registry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quotas {
    pub max_sessions: usize,
    pub max_key_memory: usize,
    pub sessions_per_client: usize,
}

#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<String, Arc<Session>>,
    /// Key memory of the sessions.
    key_bytes: usize,
    /// Sessions being created and the memory reserved for them.
    reserved: usize,
    reserved_bytes: usize,
    /// Sessions and reservations of each API token.
    per_client: HashMap<Client, usize>,
}

impl Registry {
    /// One session or reservation of `client` fewer.
    fn uncount(&mut self, client: Client) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// Every session of a server.
#[derive(Debug)]
pub(crate) struct Sessions {
    quotas: Quotas,
    registry: Mutex<Registry>,
}

impl Sessions {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            registry: Mutex::new(Registry::default()),
        }
    }

    /// Marks session `id` of `client` busy for one request (`404` if unknown — another
    /// client's session is as unknown as a missing one —, `409` if busy). Done under the
    /// registry's lock, so a session cannot be removed between its lookup and its claim.
    pub fn claim(&self, id: &str, client: Client) -> Result<Busy, ApiError> {
        let r = lock(&self.registry);
        let session = r
            .sessions
            .get(id)
            .filter(|s| s.owner == client)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, unknown_session(id)))?;
        session.claim().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "session busy: another request of this session is being read or computed",
            )
        })
    }

    /// Removes session `id` of `client`, unless a request of it is running (`409`): its keys
    /// stay counted as long as they are in use.
    pub fn remove(&self, id: &str, client: Client) -> Result<Arc<Session>, ApiError> {
        let mut r = lock(&self.registry);
        match r.sessions.get(id) {
            Some(s) if s.owner == client => {
                if s.busy.load(Ordering::Acquire) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "session busy: a request of it is running; close it afterwards",
                    ));
                }
                let s = r.sessions.remove(id).expect("present");
                release(&mut r, &s);
                Ok(s)
            }
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, unknown_session(id))),
        }
    }

    /// Reserves a session slot and `bytes` of key memory for `client`, before its keys are
    /// read; the reservation lasts until it is committed or dropped.
    pub fn reserve(
        self: &Arc<Self>,
        client: Client,
        bytes: usize,
    ) -> Result<Reservation, ApiError> {
        let q = self.quotas;
        let mut r = lock(&self.registry);
        let unavailable = |m: String| Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m));
        if r.sessions.len() + r.reserved >= q.max_sessions {
            return unavailable(format!(
                "session limit reached ({} sessions)",
                q.max_sessions
            ));
        }
        let held = r.key_bytes + r.reserved_bytes;
        if held.saturating_add(bytes) > q.max_key_memory {
            return unavailable(format!(
                "key memory limit: {held} bytes held, {bytes} more needed, limit {}",
                q.max_key_memory
            ));
        }
        let mine = r.per_client.get(&client).copied().unwrap_or(0);
        if client.is_some() && mine >= q.sessions_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this API token has {mine} sessions, its limit is {}: close one first",
                    q.sessions_per_client
                ),
            ));
        }
        r.reserved += 1;
        r.reserved_bytes += bytes;
        *r.per_client.entry(client).or_default() += 1;
        Ok(Reservation {
            sessions: self.clone(),
            client,
            bytes,
        })
    }

    /// Drops the sessions past their timeout or poisoned, none of whose requests is running.
    pub fn reap(&self, idle: Duration, round: Duration) -> Vec<(Arc<Session>, Expiry)> {
        let mut r = lock(&self.registry);
        let stale: Vec<(String, Expiry)> = r
            .sessions
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), s.expired(idle, round)?)))
            .collect();
        stale
            .into_iter()
            .filter_map(|(id, why)| {
                let s = r.sessions.remove(&id)?;
                release(&mut r, &s);
                Some((s, why))
            })
            .collect()
    }

    /// Snapshot of the counters the registry owns (the rest of [`ServerStats`] is the
    /// caller's).
    pub fn fill(&self, stats: &mut ServerStats) {
        let r = lock(&self.registry);
        stats.sessions = r.sessions.len();
        stats.key_bytes = r.key_bytes;
    }
}

fn release(r: &mut Registry, s: &Session) {
    r.key_bytes -= s.key_bytes;
    r.uncount(s.owner);
}

/// A reserved session slot and key memory (see [`Sessions::reserve`]).
#[derive(Debug)]
pub(crate) struct Reservation {
    sessions: Arc<Sessions>,
    client: Client,
    bytes: usize,
}

impl Reservation {
    /// Turns the reservation into a session holding `key_bytes` (at most the reservation)
    /// and returns its new id.
    pub fn commit(self, engine: ServerSession, key_bytes: usize) -> (String, Arc<Session>) {
        let id = new_session_id();
        let session = Arc::new(Session {
            short: id[..8].to_string(),
            owner: self.client,
            engine: Mutex::new(engine),
            last_request: Mutex::new(Instant::now()),
            busy: AtomicBool::new(false),
            key_bytes,
        });
        let mut r = lock(&self.sessions.registry);
        r.sessions.insert(id.clone(), session.clone());
        r.key_bytes += key_bytes;
        // The session now counts for its client: the reservation's count moves to it.
        *r.per_client.entry(self.client).or_default() += 1;
        drop(r);
        (id, session)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = lock(&self.sessions.registry);
        r.reserved -= 1;
        r.reserved_bytes -= self.bytes;
        r.uncount(self.client);
    }
}

fn unknown_session(id: &str) -> String {
    let short: String = id.chars().take(8).collect();
    format!(
        "unknown session {short}…: it expired after the idle timeout, was closed, or the server restarted"
    )
}

pub(crate) fn new_session_id() -> String {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_128_random_bits() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn reservations_count_against_every_quota_until_dropped() {
        let sessions = Arc::new(Sessions::new(Quotas {
            max_sessions: 3,
            max_key_memory: 100,
            sessions_per_client: 2,
        }));
        let a = sessions.reserve(Some(0), 60).unwrap();
        // Memory: 60 reserved, 50 more would pass the limit.
        assert_eq!(
            sessions.reserve(None, 50).unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let b = sessions.reserve(Some(0), 10).unwrap();
        // The token's quota.
        assert_eq!(
            sessions.reserve(Some(0), 1).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let c = sessions.reserve(Some(1), 10).unwrap();
        // The session limit.
        assert_eq!(
            sessions.reserve(Some(2), 1).unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop((a, b, c));
        let r = lock(&sessions.registry);
        assert_eq!((r.reserved, r.reserved_bytes), (0, 0));
        assert!(r.per_client.is_empty());
    }
}
