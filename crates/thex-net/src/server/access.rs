//! API tokens: who may open and use sessions.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use super::http::ApiError;
use crate::error::{NetError, Result};

/// The API token a request carries, as its index in [`ApiTokens`]; `None` on a server
/// without tokens.
pub(crate) type Client = Option<usize>;

/// Shortest accepted token: 128 bits of hex or base64 are 22 characters or more.
const MIN_TOKEN_CHARS: usize = 22;

/// The API tokens a server accepts (`Authorization: Bearer TOKEN`); only their SHA-256
/// digests are kept. Without tokens a server is open to anyone who reaches it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.digests.len())
    }
}

impl ApiTokens {
    /// The tokens given; each must be at least 22 visible ASCII characters without spaces.
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Result<Self> {
        let mut digests = Vec::new();
        for (i, t) in tokens.into_iter().enumerate() {
            let t = t.as_ref();
            if t.len() < MIN_TOKEN_CHARS || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(NetError::Config(format!(
                    "API token {} must be at least {MIN_TOKEN_CHARS} visible ASCII characters \
                     without spaces (for example `openssl rand -hex 16`)",
                    i + 1
                )));
            }
            let d: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            if !digests.contains(&d) {
                digests.push(d);
            }
        }
        if digests.is_empty() {
            return Err(NetError::Config("no API token given".into()));
        }
        Ok(Self { digests })
    }

    /// Reads a token file: one token per line; blank lines and lines starting with `#` are
    /// skipped.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NetError::io(path, e))?;
        Self::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
        .map_err(|e| match e {
            NetError::Config(m) => NetError::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Number of distinct tokens.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Always false: a token set has at least one token.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The index of the token `headers` carry. Every digest is compared in full, so the time
    /// taken does not depend on which token matched.
    fn identify(&self, headers: &HeaderMap) -> Option<usize> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.digests.iter().enumerate().fold(None, |found, (i, x)| {
            let diff = x.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 { Some(i) } else { found }
        })
    }
}

/// The client of a request: on a server with tokens, a request without a valid one gets
/// `401`.
pub(crate) fn authorize(
    tokens: Option<&ApiTokens>,
    headers: &HeaderMap,
) -> std::result::Result<Client, ApiError> {
    let Some(tokens) = tokens else {
        return Ok(None);
    };
    match tokens.identify(headers) {
        Some(i) => Ok(Some(i)),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            if headers.contains_key(header::AUTHORIZATION) {
                "the API token is not valid for this server"
            } else {
                "this server needs an API token (Authorization: Bearer TOKEN; thex infer --token)"
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    #[test]
    fn tokens_identify_their_client_and_refuse_others() {
        let a = "0123456789abcdef0123456789abcdef";
        let b = "fedcba9876543210fedcba9876543210";
        let tokens = ApiTokens::new([a, b, a]).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(authorize(Some(&tokens), &bearer(a)).unwrap(), Some(0));
        assert_eq!(authorize(Some(&tokens), &bearer(b)).unwrap(), Some(1));
        for h in [bearer("0123456789abcdef0123456789abcdee"), HeaderMap::new()] {
            let e = authorize(Some(&tokens), &h).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(authorize(None, &HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn weak_or_missing_tokens_are_refused() {
        assert!(ApiTokens::new(["short"]).is_err());
        assert!(ApiTokens::new(["has a space in it 0123456789"]).is_err());
        assert!(ApiTokens::new(Vec::<String>::new()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# clients\n\n0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(ApiTokens::from_file(&path).unwrap().len(), 1);
        std::fs::write(&path, "# none\n").unwrap();
        let e = ApiTokens::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("no API token"), "{e}");
    }
}
