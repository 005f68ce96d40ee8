//! The mutation engine of `examples/mutate.rs` (in `tests/common/mutation.rs`) for a few
//! thousand inputs: no deserializer panics or holds more memory than its bound, the engine
//! catches both, and the committed corpus is what the generator writes plus earlier findings
//! (`regression-*.bin`), which pass.

#[path = "common/bundle.rs"]
mod bundle;
#[path = "common/mutation.rs"]
mod mutation;

use std::hint::black_box;
use std::path::Path;

use mutation::{
    Bound, Config, Counting, Fixture, Mutator, SLACK, Stats, Target, feed, load_dir, peak_of, run,
    targets,
};

#[global_allocator]
static ALLOC: Counting = Counting;

fn corpus_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"))
}

fn fresh(targets: &[Target]) -> Vec<Stats> {
    targets.iter().map(|t| Stats::new(t.name)).collect()
}

#[test]
fn the_allocator_counts_the_peak() {
    let ((), peak) = peak_of(|| {
        let a = black_box(vec![1u8; 1 << 20]);
        drop(a);
        drop(black_box(vec![1u8; 1 << 19]));
    });
    assert!((1 << 20..(1 << 20) + 4096).contains(&peak), "{peak}");
}

#[test]
fn every_seed_is_read_and_the_committed_corpus_passes() {
    let f = Fixture::new();
    let targets = targets();
    let mut total = fresh(&targets);
    for (i, (name, bytes)) in f.seeds.iter().enumerate() {
        let mut stats = fresh(&targets);
        feed(&f, &targets, (i as u64, bytes), &mut stats).unwrap();
        assert!(
            stats.iter().any(|s| s.accepted == 1),
            "{name} is read by no target"
        );
        for (t, s) in total.iter_mut().zip(&stats) {
            t.accepted += s.accepted;
        }
    }
    for s in &total[..total.len() - 1] {
        assert!(s.accepted > 0, "{} reads no seed", s.name);
    }
    // The committed corpus holds these seeds as generated, and earlier findings, which
    // every reader now reads without failing.
    let committed = load_dir(corpus_dir()).unwrap();
    for (name, bytes) in &f.seeds {
        let file = committed.iter().find(|(n, _)| n == name);
        assert!(
            file.is_some_and(|(_, b)| b == bytes),
            "tests/corpus/{name} is missing or stale: `cargo run --release -p thex-client \
             --example mutate -- --inputs 0 --corpus crates/thex-client/tests/corpus`"
        );
    }
    let findings: Vec<_> = committed
        .iter()
        .filter(|(n, _)| n.starts_with("regression-"))
        .collect();
    assert!(!findings.is_empty());
    for (i, (name, bytes)) in findings.into_iter().enumerate() {
        let r = feed(&f, &targets, (i as u64, bytes), &mut fresh(&targets));
        assert!(r.is_ok(), "{name}: {:?}", r.err().map(|e| e.problem));
    }
}

#[test]
fn the_engine_catches_panics_and_over_allocation() {
    let f = Fixture::new();
    let panics = Target {
        name: "panics",
        bound: Bound::Expansion(|_| 1.0),
        read: |_, b| Some(b[3] == 0),
    };
    let greedy = Target {
        name: "greedy",
        bound: Bound::Expansion(|_| 1.0),
        read: |_, b| Some(black_box(vec![0u8; 2 * b.len() + SLACK]).len() > b.len()),
    };
    let mut stats = fresh(&[panics]);
    feed(&f, &[panics], (1, &[0; 4]), &mut stats).unwrap();
    assert_eq!((stats[0].inputs, stats[0].accepted), (1, 1));
    let e = feed(&f, &[panics], (7, &[0; 2]), &mut stats).unwrap_err();
    assert_eq!(
        (e.index, e.target, e.input.as_slice()),
        (7, "panics", &[0u8; 2][..])
    );
    assert!(
        e.problem.contains("panic: index out of bounds"),
        "{}",
        e.problem
    );
    let e = feed(&f, &[greedy], (0, &[0; 100]), &mut fresh(&[greedy])).unwrap_err();
    assert!(e.problem.contains("bound"), "{}", e.problem);
}

#[test]
fn a_short_run_finds_no_panic_and_no_over_allocation() {
    let f = Fixture::new();
    let mut seeds = f.seeds.clone();
    // Inputs saved in the corpus beyond the generated seeds (earlier findings) are seeds too.
    seeds.extend(
        load_dir(corpus_dir())
            .unwrap()
            .into_iter()
            .filter(|(n, _)| !f.seeds.iter().any(|(g, _)| g == n)),
    );
    let cfg = Config {
        inputs: 4000,
        seed: 0x7e57,
        threads: 2,
    };
    let r = run(&f, &Mutator::new(&seeds), &cfg);
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.inputs, cfg.inputs);
    let (accepted, rejected): (u64, u64) = r
        .targets
        .iter()
        .fold((0, 0), |(a, b), s| (a + s.accepted, b + s.rejected));
    // The mutants get past the headers: a fair share is still accepted somewhere.
    assert!(
        accepted > cfg.inputs / 20,
        "{accepted} accepted of {}",
        cfg.inputs
    );
    for s in &r.targets[..r.targets.len() - 1] {
        assert_eq!(s.inputs, cfg.inputs, "{}", s.name);
        assert!(s.rejected > 0, "{} rejects nothing", s.name);
        assert!(s.peak_of_bound <= 1.0, "{}", s.name);
    }
    assert!(rejected > accepted);
}
