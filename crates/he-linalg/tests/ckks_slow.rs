//! BERT-sized operations on real CKKS (N = 2^14). Slow: run with `THEX_SLOW_TESTS=1`.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use he_linalg::attention::{
    AttentionValues, AvMasking, QkScores, RowSplit, heads_to_scores, scores_layout, scores_to_heads,
};
use he_linalg::{
    CkksBackend, ColumnOrder, EncodedLinear, Layout, LinearMethod, Matrix, SlotBackend,
    decrypt_matrix, encrypt_matrix, precision_bits,
};

fn slow() -> bool {
    let on = std::env::var("THEX_SLOW_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set THEX_SLOW_TESTS=1");
    }
    on
}

fn backend() -> CkksBackend {
    CkksBackend::keygen(&ckks::Parameters::preset(ckks::Preset::N14L7)).unwrap()
}

#[test]
fn bert_sized_linears() {
    if !slow() {
        return;
    }
    let mut b = backend();
    let mut r = rng(21);
    for (n, din, dout) in [
        (64, 384, 384),
        (64, 384, 1536),
        (64, 1536, 384),
        (128, 128, 512),
        (100, 333, 257),
    ] {
        let x = random_matrix(&mut r, n, din, 4.0);
        let w = random_matrix(&mut r, din, dout, 1.0 / (din as f64).sqrt());
        let bias = random_vec(&mut r, dout, 1.0);
        let l = Layout::new(b.slots(), n, din, ColumnOrder::Contiguous).unwrap();
        let e = EncodedLinear::new(
            &b,
            &w,
            Some(&bias),
            &l,
            ColumnOrder::Contiguous,
            2,
            b.default_scale(),
            LinearMethod::Bsgs,
        )
        .unwrap();
        b.generate_rotation_keys(&e.plan().rotation_steps).unwrap();
        let y = e
            .apply(&b, &encrypt_matrix(&b, &x, &l, 2).unwrap())
            .unwrap();
        let want = add_bias(&x.matmul(&w).unwrap(), &bias);
        let bits = precision_bits(&decrypt_matrix(&b, &y).unwrap(), &want).unwrap();
        println!("{n}x{din}·{din}x{dout}: {bits:.1} bits");
        assert!(bits >= 16.0, "{n}x{din}·{din}x{dout}: {bits:.1} bits");
    }
}

#[test]
fn bert_sized_attention() {
    if !slow() {
        return;
    }
    let mut b = backend();
    let mut r = rng(22);
    for (n, d, heads) in [(64, 384, 12), (128, 128, 2)] {
        let dh = d / heads;
        let hi = ColumnOrder::HeadInterleaved {
            heads,
            head_dim: dh,
        };
        let l = Layout::new(b.slots(), n, d, hi).unwrap();
        let sl = scores_layout(&l).unwrap();
        let s = b.default_scale();
        let qk = QkScores::new(&b, &l, 3, s, s, 1.0 / (dh as f64).sqrt()).unwrap();
        let av = [(AvMasking::WeightRows, 1), (AvMasking::ValueTokens, 2)]
            .map(|(m, lv)| AttentionValues::new(&b, (&sl, &l), m, (2, s), (lv, s)).unwrap());
        let mut steps = qk.plan().rotation_steps;
        for a in &av {
            steps.extend(a.plan().rotation_steps);
        }
        b.generate_rotation_keys(&steps).unwrap();
        let (q, k, v) = (
            random_matrix(&mut r, n, d, 4.0),
            random_matrix(&mut r, n, d, 4.0),
            random_matrix(&mut r, n, d, 4.0),
        );
        let es = qk
            .apply(
                &b,
                &encrypt_matrix(&b, &q, &l, 3).unwrap(),
                &encrypt_matrix(&b, &k, &l, 3).unwrap(),
            )
            .unwrap();
        let got = scores_to_heads(&sl, &decrypt_matrix(&b, &es).unwrap()).unwrap();
        for h in 0..heads {
            let want = q
                .columns(h * dh, dh)
                .matmul(&k.columns(h * dh, dh).transpose())
                .unwrap()
                .map(|x| x / (dh as f64).sqrt());
            let bits = precision_bits(&got[h], &want).unwrap();
            assert!(bits >= 16.0, "QK {n}x{d} head {h}: {bits:.1} bits");
        }
        // Attention-like weights (non-negative, rows summing to about 1).
        let a: Vec<Matrix> = (0..heads)
            .map(|_| random_matrix(&mut r, n, n, 1.0 / n as f64).map(|x| x + 1.0 / n as f64))
            .collect();
        let ea = encrypt_matrix(&b, &heads_to_scores(&sl, &a).unwrap(), &sl, 3).unwrap();
        let parts = RowSplit::new(&b, &sl, 3, s)
            .unwrap()
            .apply(&b, &ea)
            .unwrap();
        let mut want = Matrix::zeros(n, d);
        for h in 0..heads {
            let o = a[h].matmul(&v.columns(h * dh, dh)).unwrap();
            for t in 0..n {
                for i in 0..dh {
                    want.set(t, h * dh + i, o.get(t, i));
                }
            }
        }
        let [rows, tokens] = &av;
        for (a, weights, lv) in [
            (rows, &parts[..], 1),
            (tokens, std::slice::from_ref(&ea), 2),
        ] {
            let ev = encrypt_matrix(&b, &v, &l, lv).unwrap();
            let got = decrypt_matrix(&b, &a.apply(&b, weights, &ev).unwrap()).unwrap();
            let bits = precision_bits(&got, &want).unwrap();
            let m = a.masking();
            println!("AV {m:?} {n}x{d}: {bits:.1} bits");
            assert!(bits >= 16.0, "AV {m:?} {n}x{d}: {bits:.1} bits");
        }
    }
}
