//! Reading tokenizer files from a model directory, with a size limit.

use std::io::Read;
use std::path::Path;

use crate::error::{Result, TokenizerError};

/// Largest tokenizer input accepted (a file, or bytes received): 64 MiB. BERT's
/// `tokenizer.json` is under 1 MiB.
pub const MAX_INPUT_BYTES: usize = 64 << 20;

/// Tokenizer file names inside a model directory.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "tokenizer_config.json"];

/// Fails with [`TokenizerError::TooLarge`] above [`MAX_INPUT_BYTES`].
pub(crate) fn check_size(what: impl FnOnce() -> String, size: u64) -> Result<()> {
    if size > MAX_INPUT_BYTES as u64 {
        return Err(TokenizerError::TooLarge {
            what: what(),
            size,
            limit: MAX_INPUT_BYTES as u64,
        });
    }
    Ok(())
}

/// The bytes of a file of at most [`MAX_INPUT_BYTES`].
pub(crate) fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TokenizerError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let what = || path.display().to_string();
    check_size(what, len)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte past the limit tells a file that grew meanwhile.
    file.take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    check_size(what, bytes.len() as u64)?;
    Ok(bytes)
}

/// `do_lower_case` from a model directory's `tokenizer_config.json` (default: true, as
/// uncased BERT; also when the file is absent).
pub fn lowercase_setting(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let bytes = read_limited(&path)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
            what: path.display().to_string(),
            source,
        })?;
    Ok(v.get("do_lower_case")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true))
}
