//! HTTP plumbing of the server: error answers, the request log line, and bounded body reads.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use thex_client::ErrorClass;
use thex_engine::EngineError;

use crate::api::ErrorBody;

/// An error answer: status and message, sent as `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The declared body size of a request. A body without `Content-Length` (chunked) is refused:
/// every body's exact size is checked before it is read.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<usize, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "a request body needs a Content-Length header",
            )
        })
}

/// How fast a body must arrive: `grace` for the first bytes, then at least `min_rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline {
    pub grace: Duration,
    pub min_rate: u64,
}

impl BodyDeadline {
    /// The time allowed for a body of `len` bytes.
    pub fn allowed(&self, len: usize) -> Duration {
        self.grace + Duration::from_secs_f64(len as f64 / self.min_rate.max(1) as f64)
    }
}

/// Reads a body whose `Content-Length` is `len` (already checked against the route's exact
/// size) within the deadline's time; a slower or shorter body is refused.
pub(crate) async fn read_body(
    body: Body,
    len: usize,
    deadline: BodyDeadline,
) -> Result<Vec<u8>, ApiError> {
    let allowed = deadline.allowed(len);
    let until = tokio::time::Instant::from_std(Instant::now() + allowed);
    let mut body = body;
    let mut out = Vec::with_capacity(len);
    loop {
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body too slow: {} of {len} bytes in {:.0} s",
                        out.len(),
                        allowed.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > len {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body longer than its Content-Length {len}"),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    if out.len() != len {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("request body ended after {} of {len} bytes", out.len()),
        ));
    }
    Ok(out)
}

/// What one request did, logged as one line.
pub(crate) struct RequestLog {
    pub route: &'static str,
    pub session: String,
    started: Instant,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// The round a reply answered (0: the input).
    pub answered: Option<u32>,
    /// What the answer is: the next round's request, or the logits.
    pub next: Option<String>,
    pub compute_s: f64,
}

impl RequestLog {
    pub fn new(route: &'static str) -> Self {
        Self {
            route,
            session: String::new(),
            started: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            answered: None,
            next: None,
            compute_s: 0.0,
        }
    }

    pub fn finish(self, result: Result<Response, ApiError>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let size = |got| Error::WrongSize {
            what: "round reply",
            got,
            expected: vec![10, 20],
        };
        assert_eq!(protocol(size(15)), StatusCode::BAD_REQUEST);
        assert_eq!(protocol(size(21)), StatusCode::PAYLOAD_TOO_LARGE);
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
    fn body_time_grows_with_its_size() {
        let d = BodyDeadline {
            grace: Duration::from_secs(10),
            min_rate: 1 << 20,
        };
        assert_eq!(d.allowed(0), Duration::from_secs(10));
        assert_eq!(d.allowed(5 << 20), Duration::from_secs(15));
    }
}
