//! The blocking client: downloads (or reuses) the bundle and tokenizer, keeps the secret key
//! local, uploads evaluation keys once per session and runs inferences round by round.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckks::{Parameters, SecretKey};
use serde::Serialize;
use thex_client::{
    Answer, BertTokenizer, ClientBundle, ClientSession, Decrypted, Inference, Message,
    MessageLimits, Outgoing, Transport, infer, is_sha256_hex, sha256_hex,
};
use ureq::Agent;
use ureq::http::Response;
use zeroize::Zeroizing;

use crate::api::{
    ErrorBody, PROTOCOL, SERVER_SECONDS_HEADER, SHA256_HEADER, ServerInfo, SessionCreated,
    TokenizerKind, routes,
};
use crate::error::{NetError, Result};

/// How a [`Client`] connects.
#[derive(Clone, PartialEq)]
pub struct ClientOptions {
    /// Where the bundle and tokenizer are cached by hash (none: download every time).
    pub cache_dir: Option<PathBuf>,
    /// Secret-key file: loaded if it exists, else created (mode 0600) with a fresh key.
    /// Without one, every connection generates a fresh key that is never stored.
    pub key_file: Option<PathBuf>,
    /// Length buckets to upload rotation keys for (empty: every bucket the server offers).
    pub buckets: Vec<usize>,
    /// Timeout of one HTTP exchange (a round includes the server's compute).
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
    /// API token sent with every request (`Authorization: Bearer`), for servers started
    /// with `--tokens`.
    pub token: Option<String>,
    /// PEM file of the certificate authorities an `https://` server's certificate must
    /// chain to (none: the Mozilla roots bundled with the client).
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            key_file: None,
            buckets: Vec::new(),
            timeout: Duration::from_secs(900),
            max_response_bytes: 1 << 30,
            token: None,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("cache_dir", &self.cache_dir)
            .field("key_file", &self.key_file)
            .field("buckets", &self.buckets)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A warning for a plain `http://` URL whose host is not loopback: the ciphertexts and the
/// session id (the session's credential) would travel unencrypted and unauthenticated.
pub fn plain_http_warning(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "warning: {url} is plain HTTP beyond loopback: anyone on the path can read the \
             session id and tamper with messages; use https://"
        )
    })
}

/// The TLS settings of the agent: the CAs of `ca_file`, else the bundled Mozilla roots.
fn tls_config(ca_file: Option<&Path>) -> Result<ureq::tls::TlsConfig> {
    let roots = match ca_file {
        None => ureq::tls::RootCerts::WebPki,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| NetError::io(path, e))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| NetError::Config(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(NetError::Config(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
    };
    Ok(ureq::tls::TlsConfig::builder().root_certs(roots).build())
}

/// What [`Client::connect_with`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectReport {
    /// Client bundle size in bytes.
    pub bundle_bytes: usize,
    /// The bundle came from the cache (hash verified).
    pub bundle_cached: bool,
    /// The tokenizer came from the cache (hash verified).
    pub tokenizer_cached: bool,
    /// The secret key was loaded from `key_file` (false: generated).
    pub key_loaded: bool,
    /// Evaluation keys uploaded, in bytes (seeded).
    pub key_bytes: usize,
    /// Buckets the keys cover.
    pub buckets: Vec<usize>,
    /// Seconds to generate the evaluation keys.
    pub keygen_seconds: f64,
    /// Seconds to upload them and have the server load them.
    pub upload_seconds: f64,
}

/// Reads a response body of at most `limit` bytes.
fn read_body(resp: &mut Response<ureq::Body>, url: &str, limit: u64) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| NetError::Transport {
            url: url.into(),
            message: format!("reading the answer: {e}"),
        })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| NetError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| NetError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NetError::io(path, e))
}

/// Loads the secret key of `path` for `bundle`, or creates the file (mode 0600) with a
/// fresh key. Returns the client and whether the key was loaded.
fn client_with_key_file(bundle: ClientBundle, path: &Path) -> Result<(ClientSession, bool)> {
    let key_err = |reason: String| NetError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| NetError::io(path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(key_err(format!(
                    "permissions {:o} let other users read it (chmod 600)",
                    mode & 0o777
                )));
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| NetError::io(path, e))?);
        let params = Parameters::new(&bundle.params)?;
        let sk = SecretKey::from_bytes_secret(&params, &bytes).map_err(|e| {
            key_err(format!(
                "not a secret key for this server's parameters: {e}"
            ))
        })?;
        return Ok((ClientSession::with_secret_key(bundle, sk)?, true));
    }
    let client = ClientSession::new(bundle)?;
    let bytes = Zeroizing::new(client.secret_key_bytes());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| NetError::io(dir, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| NetError::io(path, e))?;
    if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(NetError::io(path, e));
    }
    Ok((client, false))
}

/// HTTP plumbing: one keep-alive agent; error answers become [`NetError`]s.
struct Http {
    base: String,
    agent: Agent,
    max_response_bytes: u64,
    /// `Bearer TOKEN`, sent with every request.
    authorization: Option<Zeroizing<String>>,
}

/// An HTTP answer: headers and the whole body.
struct HttpAnswer {
    response: Response<ureq::Body>,
    body: Vec<u8>,
}

impl HttpAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }
}

impl Http {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; `session` marks session routes (a 404 there is an unknown session).
    fn send(
        &self,
        what: &str,
        path: &str,
        session: Option<&str>,
        request: impl FnOnce(&Agent, &str) -> std::result::Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<HttpAnswer> {
        let url = self.url(path);
        let mut response = request(&self.agent, &url).map_err(|e| NetError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let body = read_body(&mut response, &url, self.max_response_bytes)?;
            return Ok(HttpAnswer { response, body });
        }
        if status == 404
            && let Some(id) = session
        {
            return Err(NetError::UnknownSession {
                session: id.chars().take(8).collect(),
            });
        }
        let body = read_body(&mut response, &url, 1 << 16).unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(NetError::Server {
            what: what.into(),
            status,
            message,
        })
    }

    /// Adds the API token, if any.
    fn authorized<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(auth) => r.header("authorization", auth.as_str()),
            None => r,
        }
    }

    fn get(&self, what: &str, path: &str) -> Result<HttpAnswer> {
        self.send(what, path, None, |a, u| self.authorized(a.get(u)).call())
    }

    fn post(
        &self,
        what: &str,
        path: &str,
        session: Option<&str>,
        body: &[u8],
    ) -> Result<HttpAnswer> {
        self.send(what, path, session, |a, u| {
            // The server checks the session and the body's exact size first: with
            // `Expect: 100-continue` a refusal arrives before the body is sent.
            let r = a
                .post(u)
                .header("content-type", "application/octet-stream")
                .header("expect", "100-continue");
            self.authorized(r).send(body)
        })
    }

    /// Downloads `path` unless `cache` holds a file with the expected hash; checks the hash
    /// of what it downloads and stores it in `cache`. Returns the bytes and whether they came
    /// from the cache.
    fn fetch_verified(
        &self,
        what: &'static str,
        path: &str,
        expected: &str,
        cache: Option<&Path>,
    ) -> Result<(Vec<u8>, bool)> {
        if let Some(file) = cache
            && let Ok(bytes) = std::fs::read(file)
            && sha256_hex(&bytes) == expected
        {
            return Ok((bytes, true));
        }
        let answer = self.get(what, path)?;
        if let Some(h) = answer.header(SHA256_HEADER)
            && h != expected
        {
            return Err(NetError::HashMismatch {
                what,
                expected: expected.into(),
                got: h.into(),
            });
        }
        let got = sha256_hex(&answer.body);
        if got != expected {
            return Err(NetError::HashMismatch {
                what,
                expected: expected.into(),
                got,
            });
        }
        if let Some(file) = cache {
            write_atomic(file, &answer.body)?;
        }
        Ok((answer.body, false))
    }
}

/// Builds the tokenizer the server announced from its file's bytes.
fn load_tokenizer(info: &crate::api::TokenizerInfo, bytes: &[u8]) -> Result<BertTokenizer> {
    Ok(match info.kind {
        TokenizerKind::TokenizerJson => {
            BertTokenizer::from_tokenizer_json_bytes(bytes, info.max_len)?
        }
        TokenizerKind::VocabTxt => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| NetError::Protocol("the server's vocab.txt is not UTF-8".into()))?;
            BertTokenizer::from_vocab_text(text, info.lowercase, info.max_len)?
        }
    })
}

/// The HTTP [`Transport`] of one session: the input goes to `POST …/infer`, round replies to
/// `POST …/round`.
struct SessionTransport<'a> {
    http: &'a Http,
    session: &'a str,
}

impl Transport for SessionTransport<'_> {
    type Error = NetError;

    fn exchange(&mut self, kind: Outgoing, bytes: &[u8]) -> Result<Answer> {
        let (what, route) = match kind {
            Outgoing::Input => ("encrypted input", routes::INFER),
            Outgoing::Reply => ("round reply", routes::ROUND),
        };
        let path = routes::with_id(route, self.session);
        let answer = self.http.post(what, &path, Some(self.session), bytes)?;
        let server_seconds = answer
            .header(SERVER_SECONDS_HEADER)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(0.0);
        Ok(Answer {
            bytes: answer.body,
            server_seconds,
        })
    }

    fn limits(&self) -> MessageLimits {
        MessageLimits {
            max_bytes: usize::try_from(self.http.max_response_bytes).unwrap_or(usize::MAX),
            ..MessageLimits::default()
        }
    }
}

/// A connected client with an open session. The secret key stays in this process (and in
/// the key file, if one was given).
pub struct Client {
    http: Http,
    info: ServerInfo,
    engine: ClientSession,
    tokenizer: BertTokenizer,
    session: String,
    report: ConnectReport,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.http.base)
            .field("session", &format!("{}…", self.session_prefix()))
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with default options (no cache, a fresh key, keys for every bucket).
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &ClientOptions::default())
    }

    /// [`Client::prepare`], then [`Client::open_session`] for `options.buckets`.
    pub fn connect_with(url: &str, options: &ClientOptions) -> Result<Self> {
        let mut client = Self::prepare(url, options)?;
        client.open_session(&options.buckets)?;
        Ok(client)
    }

    /// Fetches the server info, the bundle and the tokenizer (from the cache when their
    /// hashes match) and loads or creates the secret key; opens no session yet (see
    /// [`Client::open_session`]).
    pub fn prepare(url: &str, options: &ClientOptions) -> Result<Self> {
        let http = Http {
            base: url.trim_end_matches('/').to_string(),
            agent: Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_global(Some(options.timeout))
                .tls_config(tls_config(options.ca_file.as_deref())?)
                .build()
                .into(),
            max_response_bytes: options.max_response_bytes,
            authorization: options
                .token
                .as_ref()
                .map(|t| Zeroizing::new(format!("Bearer {t}"))),
        };
        let answer = http.get("server info", routes::INFO)?;
        let info: ServerInfo = serde_json::from_slice(&answer.body)
            .map_err(|e| NetError::Protocol(format!("server info: {e}")))?;
        if info.protocol != PROTOCOL {
            return Err(NetError::Protocol(format!(
                "server speaks {:?}, this client {PROTOCOL:?}",
                info.protocol
            )));
        }

        // The hashes name cache files: anything but 64 hex digits could escape the cache.
        for (what, h) in [
            ("bundle", &info.bundle_sha256),
            ("tokenizer", &info.tokenizer.sha256),
        ] {
            if !is_sha256_hex(h) {
                let shown: String = h.chars().take(80).collect();
                return Err(NetError::Protocol(format!(
                    "server info: the {what} SHA-256 {shown:?} is not 64 lowercase hex digits"
                )));
            }
        }
        let cache = options.cache_dir.as_deref();
        let bundle_file = cache.map(|d| {
            d.join("bundles")
                .join(format!("{}.thxb", info.bundle_sha256))
        });
        let (bundle_bytes, bundle_cached) = http.fetch_verified(
            "client bundle",
            routes::BUNDLE,
            &info.bundle_sha256,
            bundle_file.as_deref(),
        )?;
        let bundle = ClientBundle::from_bytes(&bundle_bytes)?;

        let tok = &info.tokenizer;
        let tok_file = cache.map(|d| {
            d.join("tokenizers")
                .join(&tok.sha256)
                .join(tok.kind.file_name())
        });
        let (tok_bytes, tokenizer_cached) = http.fetch_verified(
            "tokenizer",
            routes::TOKENIZER,
            &tok.sha256,
            tok_file.as_deref(),
        )?;
        let tokenizer = load_tokenizer(tok, &tok_bytes)?;

        let (engine, key_loaded) = match &options.key_file {
            Some(path) => client_with_key_file(bundle, path)?,
            None => (ClientSession::new(bundle)?, false),
        };
        Ok(Self {
            http,
            info,
            engine,
            tokenizer,
            session: String::new(),
            report: ConnectReport {
                bundle_bytes: bundle_bytes.len(),
                bundle_cached,
                tokenizer_cached,
                key_loaded,
                key_bytes: 0,
                buckets: Vec::new(),
                keygen_seconds: 0.0,
                upload_seconds: 0.0,
            },
        })
    }

    /// The length bucket `text` needs (tokenizes locally).
    pub fn bucket_for(&self, text: &str) -> Result<usize> {
        Ok(self.engine.bundle().bucket_for(self.tokenize(text)?)?)
    }

    /// Number of tokens of `text` (with `[CLS]`/`[SEP]`).
    pub fn tokenize(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text).len())
    }

    /// Generates evaluation keys for `buckets` (empty: all) and opens a new session with
    /// them; the previous session, if any, is left to expire on the server.
    pub fn open_session(&mut self, buckets: &[usize]) -> Result<()> {
        let buckets = if buckets.is_empty() {
            self.info.buckets.clone()
        } else {
            let mut b = buckets.to_vec();
            b.sort_unstable();
            b.dedup();
            b
        };
        let t = Instant::now();
        let keys = self.engine.evaluation_keys(&buckets)?;
        let bytes = keys.to_bytes(self.engine.params());
        drop(keys);
        self.report.keygen_seconds = t.elapsed().as_secs_f64();
        if bytes.len() > self.info.max_body_bytes {
            return Err(NetError::Protocol(format!(
                "the evaluation keys for buckets {buckets:?} are {} bytes, the server accepts at most {} per request (upload keys for fewer buckets)",
                bytes.len(),
                self.info.max_body_bytes
            )));
        }
        let t = Instant::now();
        let list: Vec<String> = buckets.iter().map(usize::to_string).collect();
        let path = format!("{}?buckets={}", routes::SESSIONS, list.join(","));
        let answer = self.http.post("session creation", &path, None, &bytes)?;
        let created: SessionCreated = serde_json::from_slice(&answer.body)
            .map_err(|e| NetError::Protocol(format!("session creation answer: {e}")))?;
        self.report.upload_seconds = t.elapsed().as_secs_f64();
        self.report.key_bytes = bytes.len();
        self.report.buckets = created.buckets;
        self.session = created.session;
        Ok(())
    }

    /// What the server announced.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// What connecting did (cache hits, key bytes, times).
    pub fn connect_report(&self) -> &ConnectReport {
        &self.report
    }

    /// The first 8 hex characters of the session id (the full id is a credential).
    pub fn session_prefix(&self) -> &str {
        &self.session[..8.min(self.session.len())]
    }

    /// The bundle the server published (parameters, shapes, buckets, embedding tables).
    pub fn bundle(&self) -> &ClientBundle {
        self.engine.bundle()
    }

    /// The server's tokenizer.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    /// From now on, keeps what this client decrypts in every round
    /// ([`ClientSession::record_transcript`]).
    pub fn record_transcript(&mut self) {
        self.engine.record_transcript();
    }

    /// What this client decrypted since the last call ([`ClientSession::take_transcript`]).
    pub fn take_transcript(&mut self) -> Vec<Decrypted> {
        self.engine.take_transcript()
    }

    /// The label names of the model.
    pub fn labels(&self) -> &[String] {
        &self.engine.bundle().dims.labels
    }

    /// Tokenizes, encrypts and classifies `text`.
    pub fn infer(&mut self, text: &str) -> Result<Inference> {
        self.infer_with_progress(text, &mut |_| {})
    }

    /// [`Client::infer`], calling `on_round(r)` when round `r` has been answered (0: the
    /// input was sent).
    pub fn infer_with_progress(
        &mut self,
        text: &str,
        on_round: &mut dyn FnMut(u32),
    ) -> Result<Inference> {
        let ids = self.tokenizer.encode(text);
        self.run(&ids, on_round)
    }

    /// Classifies token ids (with `[CLS]`/`[SEP]`), skipping the tokenizer.
    pub fn infer_ids(&mut self, ids: &[u32]) -> Result<Inference> {
        self.run(ids, &mut |_| {})
    }

    /// Closes the session on the server (its keys are dropped there).
    pub fn close(self) -> Result<()> {
        let path = routes::with_id(routes::SESSION, &self.session);
        self.http
            .send("session close", &path, Some(&self.session), |a, u| {
                self.http.authorized(a.delete(u)).call()
            })
            .map(|_| ())
    }

    fn run(&mut self, ids: &[u32], on_round: &mut dyn FnMut(u32)) -> Result<Inference> {
        if self.session.is_empty() {
            return Err(NetError::Protocol(
                "no session is open (call open_session first)".into(),
            ));
        }
        let mut transport = SessionTransport {
            http: &self.http,
            session: &self.session,
        };
        infer(&mut self.engine, &mut transport, ids, on_round)
    }
}
