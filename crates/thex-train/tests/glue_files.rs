//! Reads the real GLUE files from `../shared/data` when they are present.

use std::path::PathBuf;

use thex_train::data::Dataset;

fn shared_data(rel: &str) -> Option<PathBuf> {
    let root = std::env::var_os("THEX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let path = root.join(rel);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: {} not found (set THEX_DATA_DIR)", path.display());
        None
    }
}

#[test]
fn sst2_dev_has_872_rows_444_positive() {
    let Some(path) = shared_data("sst2/dev.tsv") else {
        return;
    };
    let d = Dataset::read_tsv(path).unwrap();
    assert_eq!(d.len(), 872);
    let counts = d.label_counts();
    assert_eq!(counts.get(&1), Some(&444));
    assert_eq!(counts.get(&0), Some(&428));
    assert_eq!(
        d.examples[0].text,
        "it 's a charming and often affecting journey . "
    );
    assert!(d.examples.iter().all(|e| !e.text.is_empty()));
}

#[test]
fn sst2_train_and_cola_files_parse() {
    if let Some(path) = shared_data("sst2/train.tsv") {
        assert_eq!(Dataset::read_tsv(path).unwrap().len(), 67_349);
    }
    if let Some(path) = shared_data("cola/train.tsv") {
        assert_eq!(Dataset::read_tsv(path).unwrap().len(), 8_551);
    }
    if let Some(path) = shared_data("cola/dev_out_of_domain.tsv") {
        assert_eq!(Dataset::read_tsv(path).unwrap().len(), 516);
    }
}
