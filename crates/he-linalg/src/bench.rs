//! BERT-shaped benchmark of every operation on real CKKS ciphertexts, with the plain diagonal
//! method as an in-process baseline for the plaintext matmuls. Wired to `thex bench linalg`.

use std::time::Instant;

use serde::Serialize;

use crate::attention::{self, AttentionValues, AvMasking, QkScores, RowSplit};
use crate::backend::SlotBackend;
use crate::ckks_backend::CkksBackend;
use crate::error::Result;
use crate::layout::{ColumnOrder, Layout, PackedMatrix, decrypt_matrix, encrypt_matrix};
use crate::linear::{EncodedLinear, LinearMethod};
use crate::matrix::{Matrix, precision_bits};
use crate::poly::{self, Polynomial};

/// Level at which the plaintext matmuls run: THE-X's client round trips hand the server fresh
/// ciphertexts, and a projection typically runs a few levels below the top (not at the cheapest
/// last level, where key switching is unrepresentatively cheap).
pub const LINEAR_LEVEL: usize = 2;

/// Shape of a BERT-like encoder layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    /// Name used in the report.
    pub name: String,
    /// Tokens.
    pub tokens: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN inner size.
    pub ffn: usize,
}

impl ModelShape {
    /// all-MiniLM-L6-v2: 64 tokens, hidden 384, 12 heads of 32, FFN 1536.
    pub fn minilm() -> Self {
        Self {
            name: "MiniLM".into(),
            tokens: 64,
            hidden: 384,
            heads: 12,
            ffn: 1536,
        }
    }
    /// BERT-tiny: 128 tokens, hidden 128, 2 heads of 64, FFN 512.
    pub fn bert_tiny() -> Self {
        Self {
            name: "BERT-tiny".into(),
            tokens: 128,
            hidden: 128,
            heads: 2,
            ffn: 512,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// CKKS parameter set (128-bit secure presets).
    pub preset: ckks::Preset,
    /// Shapes to benchmark.
    pub models: Vec<ModelShape>,
    /// Timed repetitions per operation (the median is reported).
    pub repeats: usize,
    /// Seed of the random inputs and weights.
    pub seed: u64,
    /// Also run the attention operations (Q·Kᵀ, row sums, attention·V, polynomial).
    pub attention: bool,
}

impl Default for BenchConfig {
    /// N = 2^14 (7 levels), MiniLM and BERT-tiny shapes, 3 repetitions.
    fn default() -> Self {
        Self {
            preset: ckks::Preset::N14L7,
            models: vec![ModelShape::minilm(), ModelShape::bert_tiny()],
            repeats: 3,
            seed: 1,
            attention: true,
        }
    }
}

/// One benchmarked operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation name (prefixed by the model).
    pub name: String,
    /// Shape, e.g. `64x384 · 384x384`.
    pub shape: String,
    /// Median wall time in milliseconds.
    pub ms: f64,
    /// Key switches (rotations + relinearizations) of one run.
    pub key_switches: u64,
    /// Levels consumed.
    pub levels: usize,
    /// Bits of precision against f64, relative to the output's magnitude.
    pub precision_bits: f64,
    /// Median time of the plain diagonal baseline, where one applies.
    pub baseline_ms: Option<f64>,
    /// Key switches of the baseline.
    pub baseline_key_switches: Option<u64>,
}

/// The benchmark report: `{"ops": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per-operation results.
    pub ops: Vec<OpReport>,
}

impl Report {
    /// JSON in the documented schema.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<36} {:<22} {:>10} {:>6} {:>4} {:>6} {:>11} {:>7} {:>7} {:>7}\n",
            "op", "shape", "ms", "KS", "lvl", "bits", "base ms", "base KS", "x time", "x KS"
        );
        for o in &self.ops {
            let (bm, bk, rt, rk) = match (o.baseline_ms, o.baseline_key_switches) {
                (Some(bm), Some(bk)) => (
                    format!("{bm:.1}"),
                    bk.to_string(),
                    format!("{:.2}", bm / o.ms),
                    format!("{:.2}", bk as f64 / o.key_switches.max(1) as f64),
                ),
                _ => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            s.push_str(&format!(
                "{:<36} {:<22} {:>10.1} {:>6} {:>4} {:>6.1} {:>11} {:>7} {:>7} {:>7}\n",
                o.name, o.shape, o.ms, o.key_switches, o.levels, o.precision_bits, bm, bk, rt, rk
            ));
        }
        s
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` `repeats` times; returns the median ms, the key switches of one run and the output.
fn timed<T>(
    b: &CkksBackend,
    repeats: usize,
    mut f: impl FnMut() -> Result<T>,
) -> Result<(f64, u64, T)> {
    let mut times = Vec::with_capacity(repeats);
    let mut ks = 0;
    let mut out = None;
    for _ in 0..repeats.max(1) {
        let before = b.stats().snapshot();
        let t = Instant::now();
        let o = f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        ks = b.stats().snapshot().since(&before).key_switches;
        out = Some(o);
    }
    let out = out.ok_or_else(|| crate::Error::Unsupported("no repetition ran".into()))?;
    Ok((median(times), ks, out))
}

/// Deterministic uniform values from a splitmix64 stream (no `rand` dependency at runtime).
struct Stream(u64);

impl Stream {
    fn next(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * (z >> 11) as f64 / (1u64 << 53) as f64
    }
    fn matrix(&mut self, rows: usize, cols: usize, lo: f64, hi: f64) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| self.next(lo, hi))
    }
}

struct Ctx<'a> {
    b: &'a mut CkksBackend,
    repeats: usize,
    rng: Stream,
    ops: Vec<OpReport>,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        name: String,
        n: usize,
        d_in: usize,
        d_out: usize,
        in_order: ColumnOrder,
        out_order: ColumnOrder,
    ) -> Result<()> {
        let slots = self.b.slots();
        let level = LINEAR_LEVEL;
        let x = self.rng.matrix(n, d_in, -4.0, 4.0);
        let bound = 1.0 / (d_in as f64).sqrt();
        let w = self.rng.matrix(d_in, d_out, -bound, bound);
        let bias: Vec<f64> = (0..d_out).map(|_| self.rng.next(-1.0, 1.0)).collect();
        let want = x.matmul(&w)?;
        let want = Matrix::from_fn(n, d_out, |i, j| want.get(i, j) + bias[j]);
        let layout = Layout::new(slots, n, d_in, in_order)?;
        let scale = self.b.default_scale();
        let encs = [LinearMethod::Bsgs, LinearMethod::Diagonal]
            .map(|method| {
                EncodedLinear::new(
                    &*self.b,
                    &w,
                    Some(&bias),
                    &layout,
                    out_order,
                    level,
                    scale,
                    method,
                )
            })
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let mut steps = encs[0].plan().rotation_steps;
        steps.extend(encs[1].plan().rotation_steps);
        self.b.generate_rotation_keys(&steps)?;
        let b = &*self.b;
        let ex = encrypt_matrix(b, &x, &layout, level)?;
        // Alternate the two methods so that both see the same machine load.
        let mut times = [Vec::new(), Vec::new()];
        let mut results = Vec::new();
        for rep in 0..self.repeats {
            for (i, enc) in encs.iter().enumerate() {
                let (ms, ks, y) = timed(b, 1, || enc.apply(b, &ex))?;
                times[i].push(ms);
                if rep == 0 {
                    let bits = precision_bits(&decrypt_matrix(b, &y)?, &want)?;
                    results.push((ks, bits));
                }
            }
        }
        let [t0, t1] = times;
        let results = [
            (median(t0), results[0].0, results[0].1),
            (median(t1), results[1].0, results[1].1),
        ];
        self.ops.push(OpReport {
            name,
            shape: format!("{n}x{d_in} · {d_in}x{d_out}"),
            ms: results[0].0,
            key_switches: results[0].1,
            levels: 1,
            precision_bits: results[0].2,
            baseline_ms: Some(results[1].0),
            baseline_key_switches: Some(results[1].1),
        });
        Ok(())
    }

    fn attention(&mut self, m: &ModelShape) -> Result<()> {
        let slots = self.b.slots();
        let (n, d, heads) = (m.tokens, m.hidden, m.heads);
        let dh = d / heads;
        let order = ColumnOrder::HeadInterleaved {
            heads,
            head_dim: dh,
        };
        let l = Layout::new(slots, n, d, order)?;
        let sl = attention::scores_layout(&l)?;
        let s = self.b.default_scale();
        let factor = 1.0 / (dh as f64).sqrt();
        let q = self.rng.matrix(n, d, -4.0, 4.0);
        let k = self.rng.matrix(n, d, -4.0, 4.0);
        let v = self.rng.matrix(n, d, -4.0, 4.0);
        // Attention weights as the softmax approximation produces them (non-negative, rows ~1).
        let a: Vec<Matrix> = (0..heads)
            .map(|_| self.rng.matrix(n, n, 0.0, 2.0 / n as f64))
            .collect();

        let qk = QkScores::new(&*self.b, &l, 3, s, s, factor)?;
        // A·V on weights split by rows (one level, as the engine does on the fresh `e`), and
        // on whole weights with V cut by token masks.
        let split = RowSplit::new(&*self.b, &sl, 3, s)?;
        let av_rows =
            AttentionValues::new(&*self.b, (&sl, &l), AvMasking::WeightRows, (2, s), (1, s))?;
        let av_tokens =
            AttentionValues::new(&*self.b, (&sl, &l), AvMasking::ValueTokens, (2, s), (2, s))?;
        let mut steps = qk.plan().rotation_steps;
        steps.extend(av_rows.plan().rotation_steps);
        steps.extend(av_tokens.plan().rotation_steps);
        steps.extend(attention::row_sums_plan(&sl)?.rotation_steps);
        self.b.generate_rotation_keys(&steps)?;
        let b = &*self.b;

        // Q·Kᵀ.
        let (eq, ek) = (encrypt_matrix(b, &q, &l, 3)?, encrypt_matrix(b, &k, &l, 3)?);
        let (ms, ks, es) = timed(b, self.repeats, || qk.apply(b, &eq, &ek))?;
        let got = attention::scores_to_heads(&sl, &decrypt_matrix(b, &es)?)?;
        let mut bits = f64::INFINITY;
        for (h, g) in got.iter().enumerate() {
            let want = q
                .columns(h * dh, dh)
                .matmul(&k.columns(h * dh, dh).transpose())?
                .map(|x| x * factor);
            bits = bits.min(precision_bits(g, &want)?);
        }
        push(
            &mut self.ops,
            m,
            "QK^T all heads",
            format!("{heads}x({n}x{dh} · {dh}x{n})"),
            (ms, ks),
            2,
            bits,
        );

        // Row sums and A·V on attention-like weights.
        let dense = attention::heads_to_scores(&sl, &a)?;
        let ea: PackedMatrix<_> = encrypt_matrix(b, &dense, &sl, 3)?;
        let (ms, ks, sums) = timed(b, self.repeats, || attention::row_sums(b, &ea))?;
        let sums = attention::scores_to_heads(&sl, &decrypt_matrix(b, &sums)?)?;
        let mut bits = f64::INFINITY;
        for (h, g) in sums.iter().enumerate() {
            let want = Matrix::from_fn(n, 1, |t, _| (0..n).map(|u| a[h].get(t, u)).sum());
            bits = bits.min(precision_bits(&g.columns(0, 1), &want)?);
        }
        push(
            &mut self.ops,
            m,
            "row sums (softmax denominators)",
            format!("{heads}x{n}x{n}"),
            (ms, ks),
            0,
            bits,
        );

        let mut want = Matrix::zeros(n, d);
        for (h, ah) in a.iter().enumerate() {
            let o = ah.matmul(&v.columns(h * dh, dh))?;
            for t in 0..n {
                for i in 0..dh {
                    want.set(t, h * dh + i, o.get(t, i));
                }
            }
        }
        let ev = encrypt_matrix(b, &v, &l, 1)?;
        let (ms, ks, eo) = timed(b, self.repeats, || {
            av_rows.apply(b, &split.apply(b, &ea)?, &ev)
        })?;
        let bits = precision_bits(&decrypt_matrix(b, &eo)?, &want)?;
        push(
            &mut self.ops,
            m,
            "attention·V all heads (with row split)",
            format!("{heads}x({n}x{n} · {n}x{dh})"),
            (ms, ks),
            3,
            bits,
        );
        let ev = encrypt_matrix(b, &v, &l, 2)?;
        let (ms, ks, eo) = timed(b, self.repeats, || {
            av_tokens.apply(b, std::slice::from_ref(&ea), &ev)
        })?;
        let bits = precision_bits(&decrypt_matrix(b, &eo)?, &want)?;
        push(
            &mut self.ops,
            m,
            "attention·V all heads (token-masked V)",
            format!("{heads}x({n}x{n} · {n}x{dh})"),
            (ms, ks),
            2,
            bits,
        );

        // THE-X softmax numerator (x/2 + 1)^3 on the scores ciphertexts.
        let p = Polynomial::power(vec![1.0, 1.5, 0.75, 0.125])?;
        let scores = self.rng.matrix(n, heads * sl.row_stride(), -4.0, 4.0);
        let es = encrypt_matrix(b, &scores, &sl, 2)?;
        let (ms, ks, out) = timed(b, self.repeats, || {
            es.cts()
                .iter()
                .map(|c| poly::eval(b, c, &p))
                .collect::<Result<Vec<_>>>()
        })?;
        let got = decrypt_matrix(b, &PackedMatrix::new(sl.clone(), out)?)?;
        let bits = precision_bits(&got, &scores.map(|x| p.eval_f64(x)))?;
        push(
            &mut self.ops,
            m,
            "poly (x/2+1)^3 on scores",
            format!("{n}x{}", heads * n),
            (ms, ks),
            2,
            bits,
        );
        Ok(())
    }
}

fn push(
    ops: &mut Vec<OpReport>,
    m: &ModelShape,
    op: &str,
    shape: String,
    (ms, ks): (f64, u64),
    levels: usize,
    bits: f64,
) {
    ops.push(OpReport {
        name: format!("{} {op}", m.name),
        shape,
        ms,
        key_switches: ks,
        levels,
        precision_bits: bits,
        baseline_ms: None,
        baseline_key_switches: None,
    });
}

/// Runs the benchmark: for each model shape, the plaintext matmuls (BSGS and the plain
/// diagonal baseline), Q·Kᵀ, row sums, attention·V and a degree-3 polynomial, on fresh keys
/// of `cfg.preset`. Rotation keys are generated per operation from its plan.
pub fn run(cfg: &BenchConfig) -> Result<Report> {
    let params = ckks::Parameters::preset(cfg.preset);
    let mut b = CkksBackend::keygen(&params)?;
    let mut ctx = Ctx {
        b: &mut b,
        repeats: cfg.repeats.max(1),
        rng: Stream(cfg.seed),
        ops: Vec::new(),
    };
    for m in &cfg.models {
        let c = ColumnOrder::Contiguous;
        let hi = ColumnOrder::HeadInterleaved {
            heads: m.heads,
            head_dim: m.hidden / m.heads.max(1),
        };
        let (n, d, f) = (m.tokens, m.hidden, m.ffn);
        ctx.linear(format!("{} linear d->d", m.name), n, d, d, c, c)?;
        ctx.linear(
            format!("{} linear d->d (Q/K/V heads)", m.name),
            n,
            d,
            d,
            c,
            hi,
        )?;
        ctx.linear(format!("{} linear FFN up", m.name), n, d, f, c, c)?;
        ctx.linear(format!("{} linear FFN down", m.name), n, f, d, c, c)?;
        if cfg.attention {
            ctx.attention(m)?;
        }
    }
    Ok(Report { ops: ctx.ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_benchmark_runs_and_serializes() {
        let cfg = BenchConfig {
            preset: ckks::Preset::N14L7,
            models: vec![ModelShape {
                name: "tiny".into(),
                tokens: 8,
                hidden: 16,
                heads: 2,
                ffn: 40,
            }],
            repeats: 1,
            seed: 3,
            attention: true,
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.ops.len(), 9);
        for o in &r.ops {
            assert!(o.precision_bits >= 16.0, "{o:?}");
            if let Some(bk) = o.baseline_key_switches {
                assert!(bk >= o.key_switches, "{o:?}");
            }
        }
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let first = &v["ops"][0];
        for key in [
            "name",
            "shape",
            "ms",
            "key_switches",
            "levels",
            "precision_bits",
            "baseline_ms",
            "baseline_key_switches",
        ] {
            assert!(first.get(key).is_some(), "missing {key}");
        }
        assert_eq!(r.to_table().lines().count(), 1 + r.ops.len());
    }
}
