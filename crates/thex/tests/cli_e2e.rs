//! `thex serve` and `thex infer --json` through the real binary, over loopback HTTP, on a
//! small synthetic THE-X model (128-bit secure parameters, one length bucket).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Server;
use thex_model::synthetic::{SMALL, write_dir};

fn thex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thex"))
        .args(args)
        .output()
        .expect("run thex")
}

/// Starts `thex serve` on a free port with `extra` options (default: `--buckets 16`).
fn serve(model: &Path, log: &Path, extra: &[&str]) -> (Server, String, String) {
    let extra = if extra.is_empty() {
        &["--buckets", "16"][..]
    } else {
        extra
    };
    common::serve(model, log, extra)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn serve_and_infer_json_match_the_plaintext_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_dir(SMALL, 5, &model).unwrap();
    let log = tmp.path().join("serve.log");
    let plan = tmp.path().join("plan.json");
    let (_server, url, hash) = serve(
        &model,
        &log,
        &["--buckets", "16", "--save-plan", plan.to_str().unwrap()],
    );
    assert_eq!(hash.len(), 64);

    let text = "a good film with a dull plot";
    let key = tmp.path().join("client/secret.key");
    let cache = tmp.path().join("cache");
    let args = [
        "infer",
        "--server",
        &url,
        "--text",
        text,
        "--key",
        key.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ];
    let out = thex(&args);
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rounds"], 4 * SMALL.layers);
    assert_eq!(v["bucket"], 16);
    assert!(v["bytes_up"].as_u64().unwrap() > 0 && v["bytes_down"].as_u64().unwrap() > 0);
    assert!(v["key_bytes"].as_u64().unwrap() > 0);
    for phase in [
        "client.encrypt",
        "client.rounds",
        "client.decrypt",
        "server.compute",
    ] {
        assert!(v["phases"][phase].as_f64().unwrap() >= 0.0, "{phase}");
    }
    let probs = floats(&v["probabilities"]);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!(v["setup"]["key_loaded"], false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Against `thex predict` on the same model directory (plaintext).
    let plain = thex(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ]);
    assert!(plain.status.success());
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(v["label"], p["label"]);
    let (enc, pl) = (floats(&v["logits"]), floats(&p["logits"]));
    let scale = pl.iter().fold(1f64, |m, x| m.max(x.abs()));
    let diff = enc
        .iter()
        .zip(&pl)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-3 * scale,
        "encrypted {enc:?} vs plaintext {pl:?}"
    );

    // Again: the cached bundle and the stored key are reused.
    let out = thex(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v2["setup"]["key_loaded"], true);
    assert_eq!(v2["setup"]["bundle_cached"], true);
    assert_eq!(v2["label"], v["label"]);

    // The saved plan compiles the same program: the same bundle, byte for byte.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(saved["config"]["buckets"], serde_json::json!([16]));
    assert!(saved["calibration"]["max_decrypted"].as_f64().unwrap() > 0.0);
    let log2 = tmp.path().join("serve2.log");
    let (_again, _, hash2) = serve(&model, &log2, &["--plan", plan.to_str().unwrap()]);
    assert_eq!(hash2, hash);
    let both = thex(&[
        "serve",
        "--model",
        model.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--buckets",
        "32",
    ]);
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );

    // One log line per request, with the session and byte counts.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("route=\"POST round\""), "{logs}");
    assert!(logs.contains("bytes_in="), "{logs}");
}

#[test]
fn infer_without_a_server_fails_clearly() {
    let out = thex(&[
        "infer",
        "--server",
        "http://127.0.0.1:9",
        "--text",
        "a film",
        "--no-cache",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to http://127.0.0.1:9"), "{err}");
}
