//! The HTTP server: one compiled model, many client sessions.
//!
//! Each session holds one client's evaluation keys in a [`ServerSession`] behind its own
//! mutex; the session map is behind another. The homomorphic work (parsing ciphertexts,
//! `start`/`resume`, serializing) runs on tokio's blocking pool, never on the async workers,
//! and a session runs one request at a time (a concurrent one gets `409`). A reaper task
//! drops sessions idle for longer than [`ServerLimits::idle_timeout`], including those whose
//! client vanished in the middle of an inference.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ckks::Parameters;
use rand::RngCore;
use thex_client::{ErrorClass, EvaluationKeys, Message, MessageLimits, Outgoing, Step};
use thex_engine::{EngineError, ServerSession};
use tokio::sync::oneshot;

use crate::api::{
    ErrorBody, PROTOCOL, SERVER_SECONDS_HEADER, SHA256_HEADER, ServerInfo, ServerStats,
    SessionCreated, routes,
};
use crate::error::{NetError, Result};
use crate::served::ServedModel;

/// Resource limits of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Largest request body in bytes (evaluation keys included); larger ones get `413`.
    pub max_body_bytes: usize,
    /// Most open sessions; more get `503`.
    pub max_sessions: usize,
    /// Most evaluation-key memory over all sessions, in bytes (estimated as twice the
    /// uploaded seeded keys: the server expands every seed); more gets `503`.
    pub max_key_memory: usize,
    /// Sessions without a request for this long are dropped.
    pub idle_timeout: Duration,
    /// A session whose client has not answered a pending round for this long is dropped with
    /// its inference (the client vanished mid-round).
    pub round_timeout: Duration,
    /// Bounds checked while parsing every message (its `max_bytes` is capped by
    /// `max_body_bytes`).
    pub messages: MessageLimits,
    /// Threads for the homomorphic work (tokio's blocking pool).
    pub compute_threads: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 30,
            max_sessions: 16,
            max_key_memory: 8 << 30,
            idle_timeout: Duration::from_secs(300),
            round_timeout: Duration::from_secs(120),
            messages: MessageLimits::default(),
            compute_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

struct Session {
    /// First 8 hex characters of the id, for logs (the full id is the session's credential).
    short: String,
    engine: Mutex<ServerSession>,
    /// When the session last saw a request.
    last_request: Mutex<Instant>,
    key_bytes: usize,
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_request) = Instant::now();
    }
    /// Seconds since the last request.
    fn idle_seconds(&self) -> f64 {
        lock(&self.last_request).elapsed().as_secs_f64()
    }
    /// Whether the session has outlived its timeout (`round` while a round waits for the
    /// client, `idle` otherwise) and no request of it is computing; then also whether a round
    /// was pending.
    fn expired(&self, idle: Duration, round: Duration) -> Option<bool> {
        let engine = self.engine.try_lock().ok()?;
        let pending = engine.pending_round().is_some();
        let limit = if pending { round } else { idle };
        (lock(&self.last_request).elapsed() > limit).then_some(pending)
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain counters and
/// timestamps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<String, Arc<Session>>,
    key_bytes: usize,
    /// Sessions being created (keys parsing) and their reserved key memory.
    reserved: usize,
    reserved_bytes: usize,
}

struct Shared {
    served: ServedModel,
    params: Parameters,
    limits: ServerLimits,
    messages: MessageLimits,
    info: ServerInfo,
    registry: Mutex<Registry>,
    inferences: AtomicU64,
    reaped: AtomicU64,
}

impl Shared {
    fn stats(&self) -> ServerStats {
        let r = lock(&self.registry);
        ServerStats {
            sessions: r.sessions.len(),
            key_bytes: r.key_bytes,
            inferences: self.inferences.load(Ordering::Relaxed),
            reaped: self.reaped.load(Ordering::Relaxed),
        }
    }

    fn session(&self, id: &str) -> std::result::Result<Arc<Session>, ApiError> {
        lock(&self.registry)
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, unknown_session(id)))
    }

    fn remove(&self, id: &str) -> bool {
        let mut r = lock(&self.registry);
        match r.sessions.remove(id) {
            Some(s) => {
                r.key_bytes -= s.key_bytes;
                true
            }
            None => false,
        }
    }

    /// Drops expired sessions whose compute is not running.
    fn reap(&self) -> usize {
        let (idle, round) = (self.limits.idle_timeout, self.limits.round_timeout);
        let mut r = lock(&self.registry);
        let stale: Vec<(String, bool)> = r
            .sessions
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), s.expired(idle, round)?)))
            .collect();
        for (id, round_pending) in &stale {
            if let Some(s) = r.sessions.remove(id) {
                r.key_bytes -= s.key_bytes;
                tracing::info!(
                    target: "thex_net::request",
                    event = "reaped",
                    session = %s.short,
                    round_pending,
                    idle_s = s.idle_seconds(),
                    key_bytes = s.key_bytes,
                    "session dropped after its timeout"
                );
            }
        }
        self.reaped.fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }
}

fn unknown_session(id: &str) -> String {
    let short: String = id.chars().take(8).collect();
    format!(
        "unknown session {short}…: it expired after the idle timeout, was closed, or the server restarted"
    )
}

/// An error answer: status and message, sent as `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    /// The client's fault is a 4xx, the server's (configuration, broken invariants) a 500.
    fn from(e: EngineError) -> Self {
        let status = match e.class() {
            ErrorClass::BadInput => StatusCode::BAD_REQUEST,
            ErrorClass::OutOfOrder => StatusCode::CONFLICT,
            ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::Config | ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<thex_client::Error> for ApiError {
    fn from(e: thex_client::Error) -> Self {
        EngineError::from(e).into()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body exceeds the server's limit".to_string()
        } else {
            r.body_text()
        };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// What one request did, logged as one line.
struct RequestLog {
    route: &'static str,
    session: String,
    started: Instant,
    bytes_in: usize,
    bytes_out: usize,
    /// The round a reply answered (0: the input).
    answered: Option<u32>,
    /// What the answer is: the next round's request, or the logits.
    next: Option<String>,
    compute_s: f64,
}

impl RequestLog {
    fn new(route: &'static str, bytes_in: usize) -> Self {
        Self {
            route,
            session: String::new(),
            started: Instant::now(),
            bytes_in,
            bytes_out: 0,
            answered: None,
            next: None,
            compute_s: 0.0,
        }
    }

    fn finish(self, result: std::result::Result<Response, ApiError>) -> Response {
        let response = result.unwrap_or_else(|e| {
            tracing::warn!(
                target: "thex_net::request",
                route = self.route,
                session = %self.session,
                status = e.status.as_u16(),
                bytes_in = self.bytes_in,
                error = %e.message,
                total_s = self.started.elapsed().as_secs_f64(),
                "request failed"
            );
            e.into_response()
        });
        if response.status().is_success() {
            tracing::info!(
                target: "thex_net::request",
                route = self.route,
                session = %self.session,
                status = response.status().as_u16(),
                answered = self.answered.map_or(-1, i64::from),
                next = self.next.as_deref().unwrap_or("-"),
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                compute_s = self.compute_s,
                total_s = self.started.elapsed().as_secs_f64(),
                "request"
            );
        }
        response
    }
}

type St = State<Arc<Shared>>;

/// Builds the router over the shared state.
fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.limits.max_body_bytes;
    Router::new()
        .route(routes::INFO, get(info))
        .route(routes::STATS, get(stats))
        .route(routes::BUNDLE, get(bundle))
        .route(routes::TOKENIZER, get(tokenizer))
        .route(routes::SESSIONS, post(create_session))
        .route(routes::SESSION, axum::routing::delete(delete_session))
        .route(routes::INFER, post(infer))
        .route(routes::ROUND, post(round))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

async fn info(State(s): St) -> Response {
    axum::Json(s.info.clone()).into_response()
}

async fn stats(State(s): St) -> Response {
    axum::Json(s.stats()).into_response()
}

fn binary(bytes: Vec<u8>, sha256: &str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(sha256) {
        headers.insert(SHA256_HEADER, v);
    }
    (headers, bytes).into_response()
}

async fn bundle(State(s): St) -> Response {
    let mut log = RequestLog::new("GET bundle", 0);
    log.bytes_out = s.served.bundle.len();
    let r = binary(s.served.bundle.to_vec(), &s.served.bundle_sha256);
    log.finish(Ok(r))
}

async fn tokenizer(State(s): St) -> Response {
    let mut log = RequestLog::new("GET tokenizer", 0);
    let t = &s.served.tokenizer;
    log.bytes_out = t.bytes.len();
    log.finish(Ok(binary(t.bytes.clone(), &t.info.sha256)))
}

/// Parses `buckets=16,32` (absent: every compiled bucket).
fn parse_buckets(
    query: Option<&str>,
    compiled: &[usize],
) -> std::result::Result<Vec<usize>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "buckets" {
            return Err(bad(format!("unknown query parameter {k:?}")));
        }
        for b in v.split(',').filter(|b| !b.is_empty()) {
            let b: usize = b
                .parse()
                .map_err(|_| bad(format!("bucket {b:?} is not a number")))?;
            if !compiled.contains(&b) {
                return Err(bad(format!("length bucket {b} is not one of {compiled:?}")));
            }
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    if out.is_empty() {
        out = compiled.to_vec();
    }
    out.sort_unstable();
    Ok(out)
}

/// Releases a session reservation when dropped (also when the request is cancelled).
struct Reservation {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = lock(&self.shared.registry);
        r.reserved -= 1;
        r.reserved_bytes -= self.bytes;
    }
}

fn reserve(shared: &Arc<Shared>, bytes: usize) -> std::result::Result<Reservation, ApiError> {
    let mut r = lock(&shared.registry);
    let l = &shared.limits;
    if r.sessions.len() + r.reserved >= l.max_sessions {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session limit reached ({} sessions)", l.max_sessions),
        ));
    }
    if r.key_bytes + r.reserved_bytes + bytes > l.max_key_memory {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "key memory limit: {} bytes held, {bytes} more requested, limit {}",
                r.key_bytes + r.reserved_bytes,
                l.max_key_memory
            ),
        ));
    }
    r.reserved += 1;
    r.reserved_bytes += bytes;
    Ok(Reservation {
        shared: shared.clone(),
        bytes,
    })
}

fn new_session_id() -> String {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

fn json_created(created: &SessionCreated) -> std::result::Result<(Response, usize), ApiError> {
    let body = serde_json::to_vec(created)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let n = body.len();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(((StatusCode::CREATED, headers, body).into_response(), n))
}

async fn create_session(
    State(s): St,
    RawQuery(query): RawQuery,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let mut log = RequestLog::new("POST sessions", 0);
    let result = async {
        let body = body?;
        log.bytes_in = body.len();
        let buckets = parse_buckets(query.as_deref(), s.served.model.buckets())?;
        let key_bytes = 2 * body.len();
        let reservation = reserve(&s, key_bytes)?;
        let t = Instant::now();
        let shared = s.clone();
        let keys_buckets = buckets.clone();
        let engine = tokio::task::spawn_blocking(move || {
            let keys = EvaluationKeys::from_bytes(&shared.params, &body, shared.messages)?;
            ServerSession::new(shared.served.model.clone(), keys, &keys_buckets)
        })
        .await
        .map_err(join_error)??;
        log.compute_s = t.elapsed().as_secs_f64();
        let id = new_session_id();
        let session = Arc::new(Session {
            short: id[..8].to_string(),
            engine: Mutex::new(engine),
            last_request: Mutex::new(Instant::now()),
            key_bytes,
        });
        log.session = session.short.clone();
        {
            let mut r = lock(&s.registry);
            r.sessions.insert(id.clone(), session);
            r.key_bytes += key_bytes;
        }
        drop(reservation);
        let (response, n) = json_created(&SessionCreated {
            session: id,
            buckets,
            key_bytes,
        })?;
        log.bytes_out = n;
        Ok(response)
    }
    .await;
    log.finish(result)
}

async fn delete_session(State(s): St, Path(id): Path<String>) -> Response {
    let mut log = RequestLog::new("DELETE session", 0);
    log.session = id.chars().take(8).collect();
    let result = if s.remove(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, unknown_session(&id)))
    };
    log.finish(result)
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("server computation failed: {e}"),
    )
}

/// A step computed by the blocking pool.
struct StepOut {
    bytes: Vec<u8>,
    /// The round the message answered (0: the input).
    answered: u32,
    /// The round the answer requests (none: the answer is the logits).
    next_round: Option<u32>,
    seconds: f64,
}

/// Hands the message (the input, else a round reply) to the session
/// ([`ServerSession::receive`]) and serializes the next step, holding the session's lock; a
/// second request meanwhile gets `409`.
fn compute(
    shared: &Shared,
    session: &Session,
    body: &[u8],
    kind: Outgoing,
) -> std::result::Result<StepOut, ApiError> {
    let t = Instant::now();
    let mut engine = match session.engine.try_lock() {
        Ok(c) => c,
        Err(TryLockError::WouldBlock) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session busy: another request of this session is being computed",
            ));
        }
        Err(TryLockError::Poisoned(_)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "session broken by an earlier failure; open a new session",
            ));
        }
    };
    let answered = engine.pending_round().unwrap_or(0);
    let step = engine.receive(kind, body, shared.messages)?;
    let next_round = match &step {
        Step::NeedRelu(req) => Some(req.round),
        Step::Done(_) => {
            shared.inferences.fetch_add(1, Ordering::Relaxed);
            None
        }
    };
    Ok(StepOut {
        bytes: step.to_bytes(&shared.params),
        answered,
        next_round,
        seconds: t.elapsed().as_secs_f64(),
    })
}

async fn run_step(
    s: Arc<Shared>,
    id: String,
    route: &'static str,
    body: std::result::Result<Bytes, BytesRejection>,
    kind: Outgoing,
) -> Response {
    let mut log = RequestLog::new(route, 0);
    log.session = id.chars().take(8).collect();
    let result = async {
        let body = body?;
        log.bytes_in = body.len();
        let session = s.session(&id)?;
        session.touch();
        let (shared, sess) = (s.clone(), session.clone());
        let out = tokio::task::spawn_blocking(move || compute(&shared, &sess, &body, kind))
            .await
            .map_err(join_error)?;
        session.touch();
        let out = out?;
        log.compute_s = out.seconds;
        log.bytes_out = out.bytes.len();
        log.answered = Some(out.answered);
        log.next = Some(match out.next_round {
            Some(r) => format!("round{r}"),
            None => "logits".into(),
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(
            SERVER_SECONDS_HEADER,
            HeaderValue::from_str(&format!("{:.6}", out.seconds)).expect("a number"),
        );
        Ok((headers, out.bytes).into_response())
    }
    .await;
    log.finish(result)
}

async fn infer(
    State(s): St,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    run_step(s, id, "POST infer", body, Outgoing::Input).await
}

async fn round(
    State(s): St,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    run_step(s, id, "POST round", body, Outgoing::Reply).await
}

/// A running server on a background thread with its own tokio runtime.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<SharedDebug>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// `Shared` with a `Debug` impl that prints only the counters.
struct SharedDebug(Arc<Shared>);

impl std::fmt::Debug for SharedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.0.stats())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Binds `addr` (port 0 picks a free port) and serves `served` until
    /// [`ServerHandle::shutdown`] or drop. Bind errors are returned here.
    pub fn start(served: ServedModel, addr: SocketAddr, limits: ServerLimits) -> Result<Self> {
        let listener = StdListener::bind(addr).map_err(|e| NetError::Transport {
            url: addr.to_string(),
            message: format!("cannot listen: {e}"),
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| NetError::io(addr.to_string(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NetError::io(addr.to_string(), e))?;
        let params = served.model.params().clone();
        let messages = MessageLimits {
            max_bytes: limits.messages.max_bytes.min(limits.max_body_bytes),
            ..limits.messages
        };
        let info = ServerInfo {
            protocol: PROTOCOL.into(),
            bundle_sha256: served.bundle_sha256.clone(),
            bundle_bytes: served.bundle.len(),
            tokenizer: served.tokenizer.info.clone(),
            buckets: served.model.buckets().to_vec(),
            rounds: served.model.rounds(),
            params_id: format!("{:016x}", params.id()),
            max_body_bytes: limits.max_body_bytes,
            idle_timeout_s: limits.idle_timeout.as_secs_f64(),
            round_timeout_s: limits.round_timeout.as_secs_f64(),
        };
        let shared = Arc::new(Shared {
            served,
            params,
            messages,
            info,
            registry: Mutex::new(Registry::default()),
            inferences: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
            limits,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .max_blocking_threads(shared.limits.compute_threads.max(1))
            .thread_name("thex-net")
            .build()
            .map_err(|e| NetError::io("tokio runtime", e))?;
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("thex-net-server".into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let reaper_state = state.clone();
                    let every = (reaper_state
                        .limits
                        .idle_timeout
                        .min(reaper_state.limits.round_timeout)
                        / 4)
                    .clamp(Duration::from_millis(20), Duration::from_secs(5));
                    let reaper = tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        loop {
                            tick.tick().await;
                            reaper_state.reap();
                        }
                    });
                    let served = axum::serve(listener, router(state))
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await;
                    reaper.abort();
                    served
                });
                runtime.shutdown_timeout(Duration::from_secs(10));
                result
            })
            .map_err(|e| NetError::io("server thread", e))?;
        Ok(Self {
            addr,
            shared: Arc::new(SharedDebug(shared)),
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sessions, key memory and counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.0.stats()
    }

    /// What `GET /v1/info` answers.
    pub fn info(&self) -> &ServerInfo {
        &self.shared.0.info
    }

    /// Stops accepting, finishes running requests and joins the server thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    /// Blocks until the server stops (it only stops on error or when the process ends).
    pub fn wait(mut self) -> Result<()> {
        self.wait_thread()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait_thread()
    }

    fn wait_thread(&mut self) -> Result<()> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(NetError::io(self.addr.to_string(), e)),
            Some(Err(_)) => Err(NetError::Protocol("server thread panicked".into())),
            _ => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_queries_are_parsed_and_checked() {
        let compiled = [16, 32, 64];
        assert_eq!(parse_buckets(None, &compiled).unwrap(), vec![16, 32, 64]);
        assert_eq!(
            parse_buckets(Some(""), &compiled).unwrap(),
            vec![16, 32, 64]
        );
        assert_eq!(
            parse_buckets(Some("buckets=64,16,64"), &compiled).unwrap(),
            vec![16, 64]
        );
        for (q, needle) in [
            ("buckets=8", "bucket 8 is not one of"),
            ("buckets=x", "not a number"),
            ("size=16", "unknown query parameter"),
        ] {
            let e = parse_buckets(Some(q), &compiled).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }

    #[test]
    fn engine_errors_map_to_client_or_server_statuses() {
        use thex_client::Error;
        let status = |e: EngineError| ApiError::from(e).status;
        let protocol = |e: Error| ApiError::from(e).status;
        assert_eq!(
            protocol(Error::Malformed("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            protocol(Error::WrongRound {
                got: 2,
                expected: 1
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            protocol(Error::StaleReply { round: 1 }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            protocol(Error::LimitExceeded {
                what: "message bytes",
                value: 2,
                limit: 1
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(EngineError::UnsupportedModel("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(EngineError::Internal("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            protocol(Error::Internal("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn session_ids_are_128_random_bits() {
        let a = new_session_id();
        let b = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
