//! The HTTP server: one compiled model, many client sessions, every peer treated as hostile.
//!
//! Each request is bounded before its body is read: the API token and the session are
//! checked first, the session is marked busy (one request at a time, a second gets `409`),
//! and the body must declare the exact size the protocol allows at that moment (the input of
//! one of the session's buckets, the reply to the pending round, or the exact evaluation-key
//! set of the requested buckets); it must then arrive within a time that grows with its size.
//! A key upload reserves its body and the expanded keys' memory before it is read, and the
//! reservation lives until the keys are parsed, even if the client hangs up. The homomorphic
//! work runs on tokio's blocking pool (`compute_threads`) behind a bounded queue; a full
//! queue answers `503`. Connections are capped and must send their headers in time. A reaper
//! drops sessions idle (or with an unanswered round) past their timeout and sessions whose
//! computation panicked.

mod access;
mod http;
mod listen;
mod registry;
mod tls;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ckks::Parameters;
use thex_client::{EvaluationKeys, MessageLimits, Outgoing, Step, check_size};
use thex_engine::ServerSession;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use access::ApiTokens;
pub use tls::TlsIdentity;

use crate::api::{
    PROTOCOL, SERVER_SECONDS_HEADER, SHA256_HEADER, ServerInfo, ServerStats, SessionCreated, routes,
};
use crate::error::{NetError, Result};
use crate::served::ServedModel;
use access::{Client, authorize};
use http::{ApiError, BodyDeadline, RequestLog, content_length, read_body};
use listen::ListenLimits;
use registry::{Busy, Quotas, Session, Sessions};

/// Resource limits of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Largest request body in bytes (evaluation keys included); larger ones get `413`.
    pub max_body_bytes: usize,
    /// Most open sessions; more get `503`.
    pub max_sessions: usize,
    /// Most memory of expanded evaluation keys over all sessions, in bytes; uploads being
    /// read also count their body. More gets `503`.
    pub max_key_memory: usize,
    /// Most sessions (open or being created) per API token; more get `429`.
    pub sessions_per_client: usize,
    /// Sessions without a validated request for this long are dropped.
    pub idle_timeout: Duration,
    /// A session whose client has not answered a pending round for this long is dropped with
    /// its inference (the client vanished mid-round).
    pub round_timeout: Duration,
    /// Time for a request's headers to arrive (idle keep-alive connections too), and for the
    /// first bytes of its body.
    pub header_timeout: Duration,
    /// Slowest accepted upload in bytes per second: a body of `n` bytes must arrive within
    /// `header_timeout + n / min_upload_rate`.
    pub min_upload_rate: u64,
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// Bounds checked while parsing every message (its `max_bytes` is capped by
    /// `max_body_bytes`).
    pub messages: MessageLimits,
    /// Threads for the homomorphic work (tokio's blocking pool).
    pub compute_threads: usize,
    /// Most requests computing or waiting for a compute thread; more get `503`.
    pub compute_queue: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 30,
            max_sessions: 16,
            max_key_memory: 16 << 30,
            sessions_per_client: 4,
            idle_timeout: Duration::from_secs(300),
            round_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            min_upload_rate: 1 << 20,
            max_connections: 256,
            messages: MessageLimits::default(),
            compute_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            compute_queue: 32,
        }
    }
}

/// Everything a server is started with: limits, optional API tokens, optional TLS.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Resource limits.
    pub limits: ServerLimits,
    /// API tokens; without them every route is open (fine on loopback).
    pub tokens: Option<ApiTokens>,
    /// Certificate and key; without them the server speaks plain HTTP.
    pub tls: Option<TlsIdentity>,
}

impl From<ServerLimits> for ServerConfig {
    fn from(limits: ServerLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }
}

struct Shared {
    served: ServedModel,
    params: Parameters,
    limits: ServerLimits,
    messages: MessageLimits,
    info: ServerInfo,
    tokens: Option<ApiTokens>,
    sessions: Arc<Sessions>,
    compute: Arc<Semaphore>,
    inferences: AtomicU64,
    reaped: AtomicU64,
    refused_connections: Arc<AtomicU64>,
}

impl Shared {
    fn stats(&self) -> ServerStats {
        let mut stats = ServerStats {
            sessions: 0,
            key_bytes: 0,
            inferences: self.inferences.load(Ordering::Relaxed),
            reaped: self.reaped.load(Ordering::Relaxed),
            refused_connections: self.refused_connections.load(Ordering::Relaxed),
        };
        self.sessions.fill(&mut stats);
        stats
    }

    fn client(&self, headers: &HeaderMap) -> std::result::Result<Client, ApiError> {
        authorize(self.tokens.as_ref(), headers)
    }

    fn deadline(&self) -> BodyDeadline {
        BodyDeadline {
            grace: self.limits.header_timeout,
            min_rate: self.limits.min_upload_rate,
        }
    }

    /// A place in the compute queue, or `503`.
    fn queue(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        self.compute.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "server busy: {} requests are computing or queued; retry later",
                    self.limits.compute_queue
                ),
            )
        })
    }

    /// The declared size of a body, if it is one of `sizes` and within the body limit.
    fn expect_body(
        &self,
        what: &'static str,
        headers: &HeaderMap,
        sizes: &[usize],
    ) -> std::result::Result<usize, ApiError> {
        let len = content_length(headers)?;
        if len > self.limits.max_body_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{what} of {len} bytes exceeds the server's limit of {} bytes",
                    self.limits.max_body_bytes
                ),
            ));
        }
        check_size(what, len, sizes)?;
        Ok(len)
    }

    fn reap(&self) {
        let (idle, round) = (self.limits.idle_timeout, self.limits.round_timeout);
        for (s, why) in self.sessions.reap(idle, round) {
            self.reaped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                target: "thex_net::request",
                event = "reaped",
                session = %s.short,
                reason = ?why,
                key_bytes = s.key_bytes,
                "session dropped"
            );
        }
    }
}

type St = State<Arc<Shared>>;

/// Builds the router over the shared state.
fn router(shared: Arc<Shared>) -> Router {
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
        .with_state(shared)
}

async fn info(State(s): St) -> Response {
    axum::Json(s.info.clone()).into_response()
}

async fn stats(State(s): St, headers: HeaderMap) -> Response {
    match s.client(&headers) {
        Ok(_) => axum::Json(s.stats()).into_response(),
        Err(e) => RequestLog::new("GET stats").finish(Err(e)),
    }
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
    let mut log = RequestLog::new("GET bundle");
    log.bytes_out = s.served.bundle.len();
    let r = binary(s.served.bundle.to_vec(), &s.served.bundle_sha256);
    log.finish(Ok(r))
}

async fn tokenizer(State(s): St, headers: HeaderMap) -> Response {
    let mut log = RequestLog::new("GET tokenizer");
    let result = s.client(&headers).map(|_| {
        let t = &s.served.tokenizer;
        log.bytes_out = t.bytes.len();
        binary(t.bytes.clone(), &t.info.sha256)
    });
    log.finish(result)
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

/// `POST /v1/sessions`: the key set of the requested buckets is known before the upload, so
/// its exact size is checked and the memory of the expanded keys reserved before any byte is
/// read; the keys are parsed against that exact set (a missing, extra or other key costs no
/// expansion).
async fn create_session(
    State(s): St,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut log = RequestLog::new("POST sessions");
    let result = async {
        let client = s.client(&headers)?;
        let buckets = parse_buckets(query.as_deref(), s.served.model.buckets())?;
        let elements = s.served.model.galois_elements(&buckets)?;
        let exact = EvaluationKeys::serialized_len(&s.params, elements.len());
        let expanded = EvaluationKeys::expanded_len(&s.params, elements.len());
        let len = s.expect_body("evaluation keys", &headers, &[exact])?;
        let reservation = s.sessions.reserve(client, expanded + len)?;
        let bytes = read_body(body, len, s.deadline()).await?;
        log.bytes_in = bytes.len();
        let permit = s.queue()?;
        let t = Instant::now();
        let shared = s.clone();
        let keys_buckets = buckets.clone();
        // The reservation moves into the computation: a cancelled request cannot free it
        // while the keys are still being parsed.
        let (engine, reservation) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let keys = EvaluationKeys::from_bytes_exact(
                &shared.params,
                &bytes,
                shared.messages,
                &elements,
            )?;
            drop(bytes);
            let engine = ServerSession::new(shared.served.model.clone(), keys, &keys_buckets)?;
            Ok::<_, ApiError>((engine, reservation))
        })
        .await
        .map_err(join_error)??;
        log.compute_s = t.elapsed().as_secs_f64();
        let (id, session) = reservation.commit(engine, expanded);
        log.session = session.short.clone();
        let (response, n) = json_created(&SessionCreated {
            session: id,
            buckets,
            key_bytes: expanded,
        })?;
        log.bytes_out = n;
        Ok(response)
    }
    .await;
    log.finish(result)
}

async fn delete_session(State(s): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut log = RequestLog::new("DELETE session");
    log.session = id.chars().take(8).collect();
    let result = s
        .client(&headers)
        .and_then(|client| s.sessions.remove(&id, client))
        .map(|_| StatusCode::NO_CONTENT.into_response());
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

/// Hands the message to the session ([`ServerSession::receive`]) and serializes the next
/// step.
fn compute(
    shared: &Shared,
    session: &Session,
    body: &[u8],
    kind: Outgoing,
) -> std::result::Result<StepOut, ApiError> {
    let t = Instant::now();
    let mut engine = session.engine.lock().map_err(|_| broken())?;
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

fn broken() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "session broken by an earlier failure; open a new session",
    )
}

/// The exact sizes the session takes for a message of this kind now (`409` in the wrong
/// state).
fn message_sizes(busy: &Busy, kind: Outgoing) -> std::result::Result<Vec<usize>, ApiError> {
    let engine = busy.session().engine.lock().map_err(|_| broken())?;
    Ok(engine.message_sizes(kind)?)
}

async fn run_step(
    s: Arc<Shared>,
    id: String,
    headers: HeaderMap,
    body: Body,
    kind: Outgoing,
) -> Response {
    let (route, what) = match kind {
        Outgoing::Input => ("POST infer", "encrypted input"),
        Outgoing::Reply => ("POST round", "round reply"),
    };
    let mut log = RequestLog::new(route);
    log.session = id.chars().take(8).collect();
    let result = async {
        let client = s.client(&headers)?;
        let busy = s.sessions.claim(&id, client)?;
        let len = s.expect_body(what, &headers, &message_sizes(&busy, kind)?)?;
        let bytes = read_body(body, len, s.deadline()).await?;
        log.bytes_in = bytes.len();
        let permit = s.queue()?;
        let shared = s.clone();
        // The busy mark moves into the computation: it ends with it, not with the request.
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let out = compute(&shared, busy.session(), &bytes, kind);
            if out.is_ok() {
                busy.session().touch();
            }
            out
        })
        .await;
        let out = match out {
            Ok(out) => out?,
            Err(e) => {
                // A panic left the session's state unknown (its mutex poisoned): the reaper
                // drops it at its next pass.
                return Err(join_error(e));
            }
        };
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

async fn infer(State(s): St, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Response {
    run_step(s, id, headers, body, Outgoing::Input).await
}

async fn round(State(s): St, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Response {
    run_step(s, id, headers, body, Outgoing::Reply).await
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
    /// [`ServerHandle::shutdown`] or drop. Bind errors are returned here. Plain HTTP on an
    /// address other than loopback logs a warning: ciphertexts and the session id (the
    /// session's credential) would travel in the clear.
    pub fn start(
        served: ServedModel,
        addr: SocketAddr,
        config: impl Into<ServerConfig>,
    ) -> Result<Self> {
        let ServerConfig {
            limits,
            tokens,
            tls,
        } = config.into();
        if limits.compute_queue < limits.compute_threads.max(1) {
            return Err(NetError::Config(format!(
                "compute queue {} is shorter than the {} compute threads",
                limits.compute_queue, limits.compute_threads
            )));
        }
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
            tls: tls.is_some(),
            tokens: tokens.is_some(),
        };
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                target: "thex_net::request",
                %addr,
                "serving plain HTTP beyond loopback: ciphertexts and session ids travel in \
                 the clear (use --tls-cert and --tls-key)"
            );
        }
        let quotas = Quotas {
            max_sessions: limits.max_sessions,
            max_key_memory: limits.max_key_memory,
            sessions_per_client: limits.sessions_per_client,
        };
        let listen = ListenLimits {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
        };
        let refused = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            served,
            params,
            messages,
            info,
            tokens,
            sessions: Arc::new(Sessions::new(quotas)),
            compute: Arc::new(Semaphore::new(limits.compute_queue)),
            inferences: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
            refused_connections: refused.clone(),
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
                    let acceptor = tls.map(|t| t.acceptor);
                    let served =
                        listen::serve(listener, router(state), listen, acceptor, refused, rx).await;
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

    /// `http://ADDR`, or `https://ADDR` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.shared.0.info.tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
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
}
