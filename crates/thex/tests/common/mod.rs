//! Helpers shared by the integration tests.

use std::path::Path;
use std::process::Command;

/// Installs the default model (`sst2-thex`) from the cached base model into `dir`
/// (`thex model fetch`, run by CI before the tests, fills the cache) and loads it.
pub fn default_model(dir: &Path) -> thex_model::LoadedModel {
    let out = Command::new(env!("CARGO_BIN_EXE_thex"))
        .args(["model", "fetch", "--name", "sst2-thex", "--quiet", "--dir"])
        .arg(dir)
        .output()
        .expect("run thex model fetch");
    assert!(
        out.status.success(),
        "thex model fetch --name sst2-thex failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    thex_model::load_model_dir(dir, &Default::default()).unwrap()
}
