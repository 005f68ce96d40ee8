//! `thex attack extract` against a real `thex serve` on a small synthetic model: the paper's
//! rounds give the client layer 1's weights (the model from `thex model synthetic`).

mod common;

use std::process::Command;

use thex_model::synthetic::SMALL;

#[test]
fn extraction_recovers_layer_one_from_the_thex_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let out = Command::new(env!("CARGO_BIN_EXE_thex"))
        .args([
            "model",
            "synthetic",
            "--shape",
            "small",
            "--seed",
            "5",
            "--dir",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_server, url, _) =
        common::serve(&model, &tmp.path().join("serve.log"), &["--buckets", "16"]);
    let out = Command::new(env!("CARGO_BIN_EXE_thex"))
        .args([
            "attack",
            "extract",
            "--server",
            &url,
            "--queries",
            "6",
            "--seed",
            "7",
            "--json",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thex attack extract failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rounds"], "thex");
    assert_eq!(v["queries"], 6);
    // LayerNorm outputs and a bias input span one dimension less than hidden + 1.
    assert_eq!(v["input_rank"], SMALL.hidden);
    let matrices = v["matrices"].as_array().unwrap();
    let names: Vec<&str> = matrices
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for name in ["W1", "b1", "Tw1", "Tb1"] {
        assert_eq!(
            names.iter().filter(|n| **n == name).count(),
            1,
            "{name}: {names:?}"
        );
    }
    assert_eq!(names.iter().filter(|n| **n == "WqWkT").count(), SMALL.heads);
    for m in matrices {
        let err = m["relative_error"].as_f64().unwrap();
        assert!(
            err < 1e-3,
            "{m}: the rounds should reveal it almost exactly"
        );
    }
}
