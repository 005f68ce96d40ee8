//! The default THE-X model (`sst2-thex`), built into the binary as the compact package committed
//! under `models/` (what fine-tuning changed; no embedding table) and installed on top of the
//! fetched base model, so that a fresh clone needs no training.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use thex_model::fetch::{self, ModelSource};
use thex_train::install::{MANIFEST_FILE, Manifest, install_model, sha256_file};

use crate::progress::FetchProgress;

/// Name under which `thex model fetch` knows the default model.
pub const NAME: &str = "sst2-thex";

macro_rules! package_file {
    ($file:literal) => {
        (
            $file,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/sst2-thex-k3/",
                $file
            ))
            .as_slice(),
        )
    };
}

/// The package files, byte for byte as committed.
const PACKAGE: [(&str, &[u8]); 4] = [
    package_file!("manifest.json"),
    package_file!("model.safetensors"),
    package_file!("config.json"),
    package_file!("thex.json"),
];

/// What `thex model fetch --name sst2-thex` did.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// Model name.
    pub name: String,
    /// The ready model directory.
    pub dir: PathBuf,
    /// The base model directory it builds on.
    pub base_dir: PathBuf,
    /// sha256 of the installed `model.safetensors`.
    pub sha256: String,
    /// False when the model was already installed and verified.
    pub installed: bool,
}

fn manifest() -> anyhow::Result<Manifest> {
    serde_json::from_slice(PACKAGE[0].1).context("built-in manifest")
}

/// Checks an installed directory against the built-in manifest (weights and config hashes,
/// base weights present). Returns the weights' hash.
fn verify(dir: &Path, manifest: &Manifest) -> anyhow::Result<String> {
    let mut weights_hash = String::new();
    for file in ["model.safetensors", "config.json"] {
        let actual = sha256_file(&dir.join(file))?;
        let expected = manifest
            .files
            .get(file)
            .with_context(|| format!("built-in manifest lacks {file}"))?;
        anyhow::ensure!(
            &actual == expected,
            "{} does not match the built-in model (sha256 {actual}, expected {expected})",
            dir.join(file).display()
        );
        if file == "model.safetensors" {
            weights_hash = actual;
        }
    }
    thex_model::load_model_dir(dir, &Default::default())
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok(weights_hash)
}

/// Installs the default model into `dest` (default: the model cache's `sst2-thex`), fetching
/// the base model `minilm-l6` into the cache first if needed. Idempotent: an installed and
/// verified directory is left as it is.
pub fn install(dest: Option<&Path>, quiet: bool) -> anyhow::Result<Installed> {
    let manifest = manifest()?;
    let models = fetch::default_models_dir()?;
    let dest = dest.map_or_else(|| models.join(NAME), Path::to_path_buf);
    let mut progress = FetchProgress::new(quiet);
    let base = fetch::fetch(
        &ModelSource::known(&manifest.base_model)?,
        Some(&manifest.base_model),
        None,
        &mut |e| progress.on_event(e),
    );
    progress.finish();
    let base = base.context("fetching the base model")?;
    if dest.join(MANIFEST_FILE).is_file()
        && let Ok(sha256) = verify(&dest, &manifest)
    {
        return Ok(Installed {
            name: NAME.into(),
            dir: dest,
            base_dir: base.dir,
            sha256,
            installed: false,
        });
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let package = tempfile::Builder::new()
        .prefix(".sst2-thex-package-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    for (file, bytes) in PACKAGE {
        std::fs::write(package.path().join(file), bytes)?;
    }
    // Built next to `dest` (same parent, so the relative link to the base stays valid), then
    // renamed into place.
    let built = parent.join(format!(".{NAME}-{}", std::process::id()));
    let sha256 = install_model(&base.dir, package.path(), &built)
        .context("installing the default model")
        .and_then(|_| verify(&built, &manifest));
    let sha256 = match sha256 {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&built);
            return Err(e);
        }
    };
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("replacing the invalid {}", dest.display()))?;
    }
    std::fs::rename(&built, &dest).with_context(|| format!("moving into {}", dest.display()))?;
    Ok(Installed {
        name: NAME.into(),
        dir: dest,
        base_dir: base.dir,
        sha256,
        installed: true,
    })
}

/// The default model's directory, installed (and the base fetched) if needed.
pub fn ensure(quiet: bool) -> anyhow::Result<PathBuf> {
    Ok(install(None, quiet)?.dir)
}
