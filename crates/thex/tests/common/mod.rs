//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

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

/// A `thex serve` process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `thex serve --model MODEL --addr 127.0.0.1:0 ARGS` with its log in `log`; returns
/// the process, its URL and the bundle hash it announces.
pub fn serve(model: &Path, log: &Path, args: &[&str]) -> (Server, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_thex"))
        .args(["serve", "--model", model.to_str().unwrap()])
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start thex serve");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (mut url, mut hash) = (None, String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(h) = line.strip_prefix("bundle sha256 ") {
            hash = h.to_string();
        }
        if let Some(u) = line.strip_prefix("listening ") {
            url = Some(u.to_string());
            break;
        }
    }
    let url = url.unwrap_or_else(|| {
        panic!(
            "thex serve did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (server, url, hash)
}
