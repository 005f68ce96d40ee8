//! `thex model fetch --name sst2-thex`, `thex eval [--encrypted]` and `thex train` through the
//! real binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn thex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thex"))
        .args(args)
        .output()
        .expect("run thex")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The GLUE files next to the repository (`THEX_SHARED_DATA` overrides), when present.
fn shared_data(rel: &str) -> Option<PathBuf> {
    let root = std::env::var_os("THEX_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let p = root.join(rel);
    p.is_file().then_some(p)
}

#[test]
fn default_model_installs_repairs_and_meets_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("sst2-thex");
    let d = dest.to_str().unwrap();
    let first = ok_json(&thex(&[
        "model",
        "fetch",
        "--name",
        "sst2-thex",
        "--dir",
        d,
        "--json",
    ]));
    assert_eq!(first["installed"], true);
    assert_eq!(Path::new(first["dir"].as_str().unwrap()), dest);
    let again = ok_json(&thex(&[
        "model",
        "fetch",
        "--name",
        "sst2-thex",
        "--dir",
        d,
        "--json",
    ]));
    assert_eq!(again["installed"], false);
    assert_eq!(again["sha256"], first["sha256"]);
    // A damaged install is detected and replaced.
    fs::write(dest.join("model.safetensors"), b"garbage").unwrap();
    let repaired = ok_json(&thex(&[
        "model",
        "fetch",
        "--name",
        "sst2-thex",
        "--dir",
        d,
        "--json",
    ]));
    assert_eq!(repaired["installed"], true);
    assert_eq!(repaired["sha256"], first["sha256"]);

    let Some(dev) = shared_data("sst2/dev.tsv") else {
        eprintln!("SST-2 dev.tsv not found next to the repository: accuracy not checked");
        return;
    };
    let r = ok_json(&thex(&[
        "eval",
        "--model",
        d,
        "--data",
        dev.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r["n"], 872);
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.84, "default model accuracy {acc}");
    let per = &r["per_label"];
    assert_eq!(
        per["0"]["n"].as_u64().unwrap() + per["1"]["n"].as_u64().unwrap(),
        872
    );
}

#[test]
fn encrypted_eval_agrees_with_the_plaintext_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("small");
    thex_model::synthetic::write_dir(thex_model::synthetic::SMALL, 3, &model).unwrap();
    let data = tmp.path().join("data.tsv");
    fs::write(
        &data,
        "sentence\tlabel\na good film\t1\nthe plot was dull and slow\t0\n\
         very funny , smart and fresh\t1\nthe worst movie\t0\nit is not great\t0\n",
    )
    .unwrap();
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let eval = |extra: &[&str]| thex(&[&["eval", "--model", m, "--data", d], extra].concat());
    let plain = ok_json(&eval(&["--json"]));
    let enc = ok_json(&eval(&["--encrypted", "--json"]));
    assert_eq!(enc["n"], 5);
    assert_eq!(enc["agreement"], 1.0, "{enc}");
    assert_eq!(enc["accuracy"], plain["accuracy"]);
    assert_eq!(enc["plaintext_accuracy"], plain["accuracy"]);
    let max_err = enc["max_logit_error"].as_f64().unwrap();
    assert!(max_err < 1e-3, "{enc}");
    assert!(enc["mean_logit_error"].as_f64().unwrap() <= max_err);
    assert_eq!(enc["rounds"], 8, "4 client rounds per layer, 2 layers");
    assert!(enc["mean_bytes_up"].as_f64().unwrap() > 0.0);

    // --limit evaluates a prefix.
    let two = ok_json(&eval(&["--limit", "2", "--json"]));
    assert_eq!(two["n"], 2);

    // --records: a run stopped after two sentences resumes with the other three; the result
    // equals the one-go run's; a third call computes nothing new.
    let records = tmp.path().join("records.jsonl");
    let rec = records.to_str().unwrap();
    let eval_records =
        |extra: &[&str]| eval(&[&["--encrypted", "--records", rec, "--json"], extra].concat());
    let first = ok_json(&eval_records(&["--limit", "2"]));
    assert_eq!(first["n"], 2);
    assert_eq!(fs::read_to_string(&records).unwrap().lines().count(), 2);
    // --summary reports on what is recorded and runs nothing.
    let summary = ok_json(&eval_records(&["--summary"]));
    assert_eq!(summary["n"], 2);
    assert_eq!(summary["agreement"], first["agreement"]);
    assert_eq!(fs::read_to_string(&records).unwrap().lines().count(), 2);
    // A run killed while writing leaves a partial line: it is dropped.
    let mut text = fs::read_to_string(&records).unwrap();
    text.push_str("{\"index\":4,\"lab");
    fs::write(&records, text).unwrap();
    let resumed = ok_json(&eval_records(&[]));
    for key in ["n", "accuracy", "agreement", "plaintext_accuracy", "rounds"] {
        assert_eq!(resumed[key], enc[key], "{key}: {resumed} vs {enc}");
    }
    let lines = fs::read_to_string(&records).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    let again = ok_json(&eval_records(&[]));
    assert_eq!(again["max_logit_error"], resumed["max_logit_error"]);
    assert_eq!(fs::read_to_string(&records).unwrap(), lines);
    // Records of other sentences are refused.
    let out = eval(&["--encrypted", "--records", rec, "--limit", "3"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match the data"),
        "{}",
        stderr(&out)
    );
    // --records needs --encrypted.
    let out = eval(&["--records", rec]);
    assert!(!out.status.success());
}

#[test]
fn eval_and_train_reject_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("small");
    thex_model::synthetic::write_dir(thex_model::synthetic::SMALL, 3, &model).unwrap();
    let bad = tmp.path().join("bad.tsv");
    fs::write(&bad, "text\tlabel\nfine\t0\n").unwrap();
    let out = thex(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sentence"), "{}", stderr(&out));

    let out = thex(&["eval", "--model", "/nonexistent/model", "--data", "x.tsv"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/model"),
        "{}",
        stderr(&out)
    );

    let out = thex(&["train", "--out", tmp.path().join("run").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--train"), "{}", stderr(&out));

    let out = thex(&[
        "train",
        "--base",
        "/nonexistent/base",
        "--train",
        "a.tsv",
        "--dev",
        "b.tsv",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/base"),
        "{}",
        stderr(&out)
    );

    let out = thex(&["train", "--from-stage", "bogus"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));

    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../thex-train/configs/sst2-k3.json");
    let printed = ok_json(&thex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--layers",
        "4",
        "--print-config",
    ]));
    assert_eq!(printed["layers"], 4);
    assert_eq!(printed["distill"]["fine_tune"]["max_examples"], 20000);
}

#[test]
fn bench_e2e_reports_every_run_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("small");
    thex_model::synthetic::write_dir(thex_model::synthetic::SMALL, 5, &model).unwrap();
    let out = ok_json(&thex(&[
        "bench",
        "e2e",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "8",
        "--tiny-tokens",
        "4",
        "--json",
    ]));
    let runs = out["runs"].as_array().unwrap();
    let got: Vec<(String, u64, String)> = runs
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["tokens"].as_u64().unwrap(),
                r["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let run = |m: &str, t, p: &str| (m.to_string(), t, p.to_string());
    // Both round protocols by default, on every configuration.
    assert_eq!(
        got,
        [
            run("small", 8, "blinded"),
            run("small", 8, "thex"),
            run("bert-tiny-shape", 4, "blinded"),
            run("bert-tiny-shape", 4, "thex"),
        ]
    );
    // Blinded against THE-X's rounds on each: replies of the ReLU items are doubled.
    let costs = out["blinding"].as_array().unwrap();
    assert_eq!(costs.len(), 2);
    for c in costs {
        let bytes = c["bytes_ratio"].as_f64().unwrap();
        assert!(bytes > 1.0 && bytes < 3.0, "{c}");
        assert!(c["time_ratio"].as_f64().unwrap() > 0.0, "{c}");
    }
    for r in runs {
        assert_eq!(r["rounds"], 8, "{r}");
        for k in ["total_s", "bytes_up", "bytes_down", "key_bytes"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
        // The encrypted logits are those of the plaintext model (random weights: logits of
        // tens to hundreds; a wrapped or wrong result would be off by far more).
        assert!(r["max_logit_error"].as_f64().unwrap() < 0.5, "{r}");
        let scale = r["log_scale"].as_f64().unwrap();
        assert!((20.0..=36.0).contains(&scale), "{r}");
        let request = r["request_log_scale"].as_f64().unwrap();
        assert!((20.0..=scale).contains(&request), "{r}");
        assert!(r["calibrated_max"].as_f64().unwrap() > 0.0, "{r}");
        // The BERT-tiny shape's attention outweighs its linear maps: V is token-masked.
        let av = r["attention_values"].as_str().unwrap();
        assert!(["weight_rows", "value_tokens"].contains(&av), "{r}");
        if r["model"] == "bert-tiny-shape" {
            assert_eq!(av, "value_tokens", "{r}");
        }
        let phases = r["phases"].as_object().unwrap();
        assert!(
            phases.keys().any(|k| k.starts_with("server.layer1.")),
            "{r}"
        );
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        let server: f64 = layers.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!(server > 0.0 && server < r["total_s"].as_f64().unwrap());
    }
    // A length that is not a bucket is refused.
    let out = thex(&[
        "bench",
        "e2e",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "12",
        "--tiny-tokens",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("power of two"), "{}", stderr(&out));
}
