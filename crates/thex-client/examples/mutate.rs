//! Randomized mutation run over every deserializer a client or server uses (`ckks` objects,
//! protocol messages, the client bundle): a panic, or a call holding more memory than the
//! bound derived from its format (see `tests/common/mutation.rs`), is a failure; the input is
//! saved and the run exits with status 1.
//!
//! ```sh
//! cargo run --release -p thex-client --example mutate -- --inputs 10000000 --threads 2
//! ```
//!
//! Options: `--inputs N` (default 20000), `--seed S` (default 1), `--threads T` (default: the
//! cores), `--corpus DIR` (write the generated seeds there, then mutate every file in it),
//! `--replay I` (run and save input `I` of the seed only), `--json`. A fixed finding goes into
//! `tests/corpus/` as `regression-<what>.bin`: the default test suite reads it.

#[path = "../tests/common/bundle.rs"]
mod bundle;
#[path = "../tests/common/mutation.rs"]
mod mutation;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mutation::{
    Config, Counting, Failure, Fixture, HARD_CAP, Mutator, Report, SLACK, Stats, feed, load_dir,
    run, targets,
};

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug)]
struct Args {
    config: Config,
    corpus: Option<PathBuf>,
    replay: Option<u64>,
    json: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        config: Config {
            inputs: 20_000,
            seed: 1,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        corpus: None,
        replay: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--inputs" => a.config.inputs = number(value()?)?,
            "--seed" => a.config.seed = number(value()?)?,
            "--threads" => a.config.threads = number(value()?)?.max(1) as usize,
            "--replay" => a.replay = Some(number(value()?)?),
            "--corpus" => a.corpus = Some(value()?.into()),
            "--json" => a.json = true,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// The seeds: the generated ones, written to `dir` (replacing files of the same name) and
/// joined by every other file there.
fn seeds(f: &Fixture, dir: Option<&Path>) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let Some(dir) = dir else {
        return Ok(f.seeds.clone());
    };
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in &f.seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    load_dir(dir)
}

/// Saves an input as `name` in the corpus directory (or the current one).
fn save(input: &[u8], name: &str, dir: Option<&Path>) -> PathBuf {
    let path = dir.unwrap_or(Path::new(".")).join(name);
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("mutate: cannot write {}: {e}", path.display());
    }
    path
}

fn report_failure(e: &Failure, seed: u64, dir: Option<&Path>) {
    let name = format!("failure-seed{seed}-input{}.bin", e.index);
    eprintln!(
        "mutate: FAILED at input {} of seed {seed}, {}: {} (input saved to {})",
        e.index,
        e.target,
        e.problem,
        save(&e.input, &name, dir).display()
    );
}

fn print_summary(r: &Report) {
    println!(
        "mutate: seed {}, {} seeds, {} inputs on {} threads in {:.1} s ({:.0} inputs/s)",
        r.seed, r.seeds, r.inputs, r.threads, r.seconds, r.inputs_per_second
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>11} {:>6} {:>10} {:>10}",
        "deserializer",
        "inputs",
        "accepted",
        "rejected",
        "peak bytes",
        "E",
        "excess/len",
        "peak/bound"
    );
    for s in &r.targets {
        let e = s
            .bound_per_input_byte
            .map_or("-".into(), |e| format!("{e:.1}"));
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>11} {e:>6} {:>10.2} {:>10.3}",
            s.name,
            s.inputs,
            s.accepted,
            s.rejected,
            s.peak_bytes,
            s.excess_per_input_byte,
            s.peak_of_bound
        );
    }
    println!(
        "bound per call: E·len + {} KiB (E per format, see tests/common/mutation.rs), for \
         bundles plus the parameter context they name; excess/len = (peak − that fixed part) \
         / len; one allocation above {} GiB aborts",
        SLACK >> 10,
        HARD_CAP >> 30
    );
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mutate: {e}");
            return ExitCode::from(2);
        }
    };
    let f = Fixture::new();
    let dir = args.corpus.as_deref();
    let seeds = match seeds(&f, dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "mutate: corpus {}: {e}",
                dir.unwrap_or(Path::new("")).display()
            );
            return ExitCode::from(2);
        }
    };
    let m = Mutator::new(&seeds);
    let seed = args.config.seed;
    if let Some(index) = args.replay {
        let input = m.mutant(seed, index);
        let name = format!("replay-seed{seed}-input{index}.bin");
        let path = save(&input, &name, dir);
        let targets = targets();
        let mut stats: Vec<Stats> = targets.iter().map(|t| Stats::new(t.name)).collect();
        return match feed(&f, &targets, (index, &input), &mut stats) {
            Ok(()) => {
                println!(
                    "mutate: input {index} of seed {seed} passes (saved to {})",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_failure(&e, seed, dir);
                ExitCode::FAILURE
            }
        };
    }
    let report = run(&f, &m, &args.config);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print_summary(&report);
    }
    match &report.failure {
        Some(e) => {
            report_failure(e, seed, dir);
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
