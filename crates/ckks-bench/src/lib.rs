//! Runs `ckks` operations and TenSEAL's (SEAL 4 via `scripts/tenseal_bench.py`) on matched
//! parameters in one run, and reports medians, speed ratios and precision.
//!
//! ```no_run
//! let report = ckks_bench::compare_tenseal(&ckks_bench::CompareOptions::default()).unwrap();
//! println!("{}", report.table());
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ckks::precision::precision_stats;
use ckks::{Encoder, Encryptor, Evaluator, KeyGenerator, Parameters, Preset};
use serde::{Deserialize, Serialize};

/// Errors of the benchmark runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A `ckks` operation failed.
    #[error(transparent)]
    Ckks(#[from] ckks::Error),
    /// The Python script could not be started.
    #[error("could not run {python} {script}: {source}")]
    Spawn {
        /// Interpreter.
        python: String,
        /// Script path.
        script: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The Python script failed.
    #[error("TenSEAL script exited with {status}: {stderr}")]
    Script {
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// The script's output is not the expected JSON.
    #[error("bad TenSEAL script output: {0}")]
    Json(#[from] serde_json::Error),
    /// A requested ring degree has no matched preset.
    #[error("log2(N) = {0} has no matched preset (use 14 or 15)")]
    UnsupportedRing(u32),
    /// The rayon pool could not be built.
    #[error("thread pool: {0}")]
    Pool(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Threads for our operations (TenSEAL/SEAL is single-threaded).
    pub threads: usize,
    /// Timed repetitions per operation (the median is reported).
    pub repeats: usize,
    /// Ring degrees (log2 N): 14 (log Q ~ 400) and/or 15 (log Q ~ 840).
    pub log_n: Vec<u32>,
    /// Python interpreter with `tenseal==0.3.18` installed.
    pub python: String,
    /// Path of `scripts/tenseal_bench.py`.
    pub script: PathBuf,
    /// Skip TenSEAL (report only our numbers).
    pub ours_only: bool,
    /// Interleaved rounds (ours, then TenSEAL); medians and ratios are taken over rounds, so a
    /// load change on a shared machine affects both sides of a ratio alike.
    pub rounds: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            repeats: 10,
            log_n: vec![14, 15],
            python: "python3".into(),
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/tenseal_bench.py"),
            ours_only: false,
            rounds: 3,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRow {
    /// Operation: `mul_relin_rescale` or `rotate`.
    pub name: String,
    /// Ring degree.
    pub n: usize,
    /// log2 of the full modulus QP of our parameters (TenSEAL's is 400 / 840).
    pub log_q: u32,
    /// Our median time in milliseconds.
    pub ours_ms: f64,
    /// TenSEAL's median time in milliseconds.
    pub tenseal_ms: Option<f64>,
    /// `tenseal_ms / ours_ms` (speed-up; above 1 means we are faster).
    pub ratio: Option<f64>,
    /// Our precision: -log2(max abs error) over all slots.
    pub ours_bits: f64,
    /// TenSEAL's precision, same measure.
    pub tenseal_bits: Option<f64>,
}

/// The comparison report; serializes to `{"ops":[...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One row per operation and ring degree.
    pub ops: Vec<OpRow>,
}

#[derive(Deserialize)]
struct TensealOp {
    name: String,
    n: usize,
    ms: f64,
    bits: f64,
}

#[derive(Deserialize)]
struct TensealOut {
    ops: Vec<TensealOp>,
}

fn median_ms(
    repeats: usize,
    mut f: impl FnMut() -> Result<(), BenchError>,
) -> Result<f64, BenchError> {
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Our side of the benchmark at one ring degree: keys and inputs made once, timed per round.
struct Ours {
    params: Parameters,
    pool: rayon::ThreadPool,
    rlk: ckks::RelinKey,
    gks: ckks::GaloisKeys,
    ev: Evaluator,
    ca: ckks::Ciphertext,
    cb: ckks::Ciphertext,
    mul_bits: f64,
    rot_bits: f64,
}

impl Ours {
    fn new(log_n: u32, threads: usize) -> Result<Self, BenchError> {
        let preset = match log_n {
            14 => Preset::N14L7,
            15 => Preset::N15L18,
            other => return Err(BenchError::UnsupportedRing(other)),
        };
        let params = Parameters::preset(preset);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| BenchError::Pool(e.to_string()))?;
        let mut kg = KeyGenerator::new(&params);
        let sk = kg.secret_key();
        let pk = kg.public_key(&sk)?;
        let rlk = kg.relin_key(&sk)?;
        let gks = kg.galois_keys(&sk, &[1], false)?;
        let enc = Encoder::new(&params);
        let ev = Evaluator::new(&params);
        let slots = params.max_slots();
        let (a, b) = (test_vector(slots, 1), test_vector(slots, 2));
        let (top, scale) = (params.max_level(), params.default_scale());
        let mut encryptor = Encryptor::new(&pk);
        let ca = encryptor.encrypt(&enc.encode(&a, top, scale)?)?;
        let cb = encryptor.encrypt(&enc.encode(&b, top, scale)?)?;
        let dec = ckks::Decryptor::new(&sk);
        let prod = ev.rescale(&ev.multiply_relin(&ca, &cb, &rlk)?)?;
        let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let mul_bits = precision_stats(&want, &enc.decode(&dec.decrypt(&prod)?)).min_bits;
        let rot = ev.rotate(&ca, 1, &gks)?;
        let want: Vec<f64> = (0..slots).map(|i| a[(i + 1) % slots]).collect();
        let rot_bits = precision_stats(&want, &enc.decode(&dec.decrypt(&rot)?)).min_bits;
        Ok(Self {
            params,
            pool,
            rlk,
            gks,
            ev,
            ca,
            cb,
            mul_bits,
            rot_bits,
        })
    }

    /// Median milliseconds of (mul_relin_rescale, rotate) over `repeats`.
    fn measure(&self, repeats: usize) -> Result<(f64, f64), BenchError> {
        self.pool.install(|| {
            let (ev, ca, cb) = (&self.ev, &self.ca, &self.cb);
            let mul = median_ms(repeats, || {
                let mut out = ev.multiply_relin(ca, cb, &self.rlk)?;
                ev.rescale_assign(&mut out)?;
                Ok(())
            })?;
            let rot = median_ms(repeats, || {
                ev.rotate(ca, 1, &self.gks)?;
                Ok(())
            })?;
            Ok((mul, rot))
        })
    }
}

/// Deterministic test data in `[-1, 1)`, identical to `test_vector` in `scripts/tenseal_bench.py`.
pub fn test_vector(len: usize, seed: u64) -> Vec<f64> {
    const M32: u64 = (1 << 32) - 1;
    let mult = (2_654_435_761 + 2 * seed * 1_013_904_223) & M32;
    (0..len as u64)
        .map(|i| {
            // A Weyl sequence mixed by a 32-bit hash, exactly reproducible in Python.
            let mut h = ((i + 1) * mult) & M32;
            h ^= h >> 15;
            h = (h * 0x2c1b_3c6d) & M32;
            h ^= h >> 12;
            h as f64 / (1u64 << 31) as f64 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs our `mul_relin_rescale` and `rotate` (by one) at one ring degree (one round).
pub fn run_ours(log_n: u32, threads: usize, repeats: usize) -> Result<Vec<OpRow>, BenchError> {
    let ours = Ours::new(log_n, threads)?;
    let (mul, rot) = ours.measure(repeats)?;
    Ok(ours.rows(mul, rot))
}

impl Ours {
    fn rows(&self, mul_ms: f64, rot_ms: f64) -> Vec<OpRow> {
        let log_q = self.params.log_qp().round() as u32;
        let row = |name: &str, ms: f64, bits: f64| OpRow {
            name: name.into(),
            n: self.params.n(),
            log_q,
            ours_ms: ms,
            tenseal_ms: None,
            ratio: None,
            ours_bits: bits,
            tenseal_bits: None,
        };
        vec![
            row("mul_relin_rescale", mul_ms, self.mul_bits),
            row("rotate", rot_ms, self.rot_bits),
        ]
    }
}

/// Runs `scripts/tenseal_bench.py` and returns its rows as `(name, n, ms, bits)`.
fn run_tenseal(opts: &CompareOptions) -> Result<Vec<TensealOp>, BenchError> {
    let mut cmd = Command::new(&opts.python);
    cmd.arg(&opts.script)
        .arg("--repeats")
        .arg(opts.repeats.max(1).to_string())
        .arg("--log-n");
    for l in &opts.log_n {
        cmd.arg(l.to_string());
    }
    let out = cmd.output().map_err(|source| BenchError::Spawn {
        python: opts.python.clone(),
        script: opts.script.display().to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(BenchError::Script {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(serde_json::from_slice::<TensealOut>(&out.stdout)?.ops)
}

/// Runs our operations and TenSEAL's in `rounds` interleaved rounds and merges them into a
/// report: times are medians over rounds of per-round medians, the ratio is the median of the
/// per-round ratios.
pub fn compare_tenseal(opts: &CompareOptions) -> Result<Report, BenchError> {
    let ours: Vec<Ours> = opts
        .log_n
        .iter()
        .map(|&l| Ours::new(l, opts.threads))
        .collect::<Result<_, _>>()?;
    let rounds = opts.rounds.max(1);
    let mut rows: Vec<OpRow> = Vec::new();
    let mut ours_t: Vec<Vec<f64>> = Vec::new();
    let mut theirs_t: Vec<Vec<f64>> = Vec::new();
    let mut ratios: Vec<Vec<f64>> = Vec::new();
    for round in 0..rounds {
        let mut this_round = Vec::new();
        for o in &ours {
            let (mul, rot) = o.measure(opts.repeats)?;
            this_round.extend(o.rows(mul, rot));
        }
        if round == 0 {
            ours_t = vec![Vec::new(); this_round.len()];
            theirs_t = vec![Vec::new(); this_round.len()];
            ratios = vec![Vec::new(); this_round.len()];
            rows = this_round.clone();
        }
        for (i, r) in this_round.iter().enumerate() {
            ours_t[i].push(r.ours_ms);
        }
        if !opts.ours_only {
            for t in run_tenseal(opts)? {
                if let Some(i) = rows.iter().position(|r| r.name == t.name && r.n == t.n) {
                    theirs_t[i].push(t.ms);
                    ratios[i].push(t.ms / this_round[i].ours_ms);
                    rows[i].tenseal_bits = Some(t.bits);
                }
            }
        }
    }
    for (i, row) in rows.iter_mut().enumerate() {
        row.ours_ms = median(ours_t[i].clone());
        if !theirs_t[i].is_empty() {
            row.tenseal_ms = Some(median(theirs_t[i].clone()));
            row.ratio = Some(median(ratios[i].clone()));
        }
    }
    Ok(Report { ops: rows })
}

impl Report {
    /// The report as JSON: `{"ops":[{"name","n","log_q","ours_ms","tenseal_ms","ratio","ours_bits","tenseal_bits"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serializes")
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let opt =
            |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
        let mut s = format!(
            "{:<18} {:>6} {:>6} {:>10} {:>11} {:>7} {:>9} {:>12}\n",
            "op", "N", "logQP", "ours ms", "TenSEAL ms", "ratio", "ours bits", "TenSEAL bits"
        );
        for r in &self.ops {
            s += &format!(
                "{:<18} {:>6} {:>6} {:>10.2} {:>11} {:>7} {:>9.2} {:>12}\n",
                r.name,
                r.n,
                r.log_q,
                r.ours_ms,
                opt(r.tenseal_ms, 2),
                r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x")),
                r.ours_bits,
                opt(r.tenseal_bits, 2)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_table() {
        let report = Report {
            ops: vec![OpRow {
                name: "rotate".into(),
                n: 16384,
                log_q: 430,
                ours_ms: 2.0,
                tenseal_ms: Some(15.0),
                ratio: Some(7.5),
                ours_bits: 21.0,
                tenseal_bits: Some(19.0),
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let row = &v["ops"][0];
        for key in [
            "name",
            "n",
            "log_q",
            "ours_ms",
            "tenseal_ms",
            "ratio",
            "ours_bits",
            "tenseal_bits",
        ] {
            assert!(row.get(key).is_some(), "{key}");
        }
        assert!(report.table().contains("7.50x"));
        // Pinned against scripts/tenseal_bench.py's test_vector(4, 1).
        let want = [
            0.8730321479961276,
            -0.9102005008608103,
            0.9952321695163846,
            -0.4759669676423073,
        ];
        assert_eq!(test_vector(4, 1), want);
        let v = test_vector(1000, 3);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!((v.iter().sum::<f64>() / 1000.0).abs() < 0.1);
        assert!(matches!(
            run_ours(13, 1, 1),
            Err(BenchError::UnsupportedRing(13))
        ));
    }
}
