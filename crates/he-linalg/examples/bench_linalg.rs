//! Runs the BERT-shaped benchmark: `cargo run --release -p he-linalg --example bench_linalg
//! [-- --json] [--minilm|--bert-tiny] [--linear-only] [--repeats N]`.

use he_linalg::bench::{self, BenchConfig, ModelShape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = BenchConfig::default();
    if args.iter().any(|a| a == "--minilm") {
        cfg.models = vec![ModelShape::minilm()];
    }
    if args.iter().any(|a| a == "--bert-tiny") {
        cfg.models = vec![ModelShape::bert_tiny()];
    }
    if args.iter().any(|a| a == "--linear-only") {
        cfg.attention = false;
    }
    if let Some(i) = args.iter().position(|a| a == "--repeats") {
        cfg.repeats = args.get(i + 1).ok_or("--repeats needs a value")?.parse()?;
    }
    let report = bench::run(&cfg)?;
    if args.iter().any(|a| a == "--json") {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
