//! End-to-end tests of `thex model` through the real binary.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn thex(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thex"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("run thex")
}

fn fake_bert(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
    fs::write(dir.join("vocab.txt"), "[PAD]\n").unwrap();
    fs::write(dir.join("model.safetensors"), "w").unwrap();
}

#[test]
fn fetch_from_local_dir_then_noop() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny-bert");
    fake_bert(&src);
    let cache = tmp.path().join("cache");
    let first = thex(
        &["model", "fetch", "--from", src.to_str().unwrap(), "--json"],
        &cache,
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(v["downloaded"], true);
    assert_eq!(v["name"], "tiny-bert");
    let dir = cache.join("thex/models/tiny-bert");
    assert_eq!(Path::new(v["dir"].as_str().unwrap()), dir);
    assert!(dir.join("config.json").is_file());

    let second = thex(&["model", "fetch", "--from", src.to_str().unwrap()], &cache);
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        dir.to_str().unwrap()
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("already present"));
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = thex(&["model", "fetch", "--name", "nope"], tmp.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'nope'"));

    let src = tmp.path().join("broken");
    fake_bert(&src);
    fs::remove_file(src.join("config.json")).unwrap();
    let out = thex(
        &["model", "fetch", "--from", src.to_str().unwrap()],
        tmp.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no config.json"), "{err}");
}
