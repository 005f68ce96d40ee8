//! `cargo run --release -p ckks-bench --example compare -- [THREADS] [--json] [--ours-only] [--repeats R] [--rounds K] [--log-n 14|15]`
fn main() {
    let mut opts = ckks_bench::CompareOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--ours-only" => opts.ours_only = true,
            "--repeats" => opts.repeats = args.next().and_then(|v| v.parse().ok()).unwrap_or(10),
            "--rounds" => opts.rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--log-n" => opts.log_n = vec![args.next().and_then(|v| v.parse().ok()).unwrap_or(14)],
            t => opts.threads = t.parse().unwrap_or(1),
        }
    }
    match ckks_bench::compare_tenseal(&opts) {
        Ok(r) if json => println!("{}", r.to_json()),
        Ok(r) => print!("{}", r.table()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
