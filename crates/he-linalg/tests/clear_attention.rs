//! Attention products on the cleartext backend against dense f64 arithmetic.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use he_linalg::attention::{
    AttentionValues, AvMasking, QkScores, RowSplit, heads_to_scores, key_mask, row_sums,
    row_sums_plan, scores_layout, scores_to_heads,
};
use he_linalg::{
    ClearBackend, ColumnOrder, Layout, Matrix, SlotBackend, decrypt_matrix, encrypt_matrix, ops,
    precision_bits,
};

struct Case {
    slots: usize,
    n: usize,
    heads: usize,
    dh: usize,
    valid: usize,
}

fn run(c: &Case, seed: u64) {
    let b = ClearBackend::like_ckks(c.slots, 7).unwrap();
    let d = c.heads * c.dh;
    let mut r = rng(seed);
    let q = random_matrix(&mut r, c.n, d, 4.0);
    let k = random_matrix(&mut r, c.n, d, 4.0);
    let v = random_matrix(&mut r, c.n, d, 4.0);
    let order = ColumnOrder::HeadInterleaved {
        heads: c.heads,
        head_dim: c.dh,
    };
    let l = Layout::new(c.slots, c.n, d, order).unwrap();
    let (eq, ek, ev) = (
        encrypt_matrix(&b, &q, &l, 7).unwrap(),
        encrypt_matrix(&b, &k, &l, 7).unwrap(),
        encrypt_matrix(&b, &v, &l, 4).unwrap(),
    );
    let s = b.default_scale();
    let factor = 1.0 / (c.dh as f64).sqrt();

    // Q·Kᵀ per head.
    let qk = QkScores::new(&b, &l, 7, s, s, factor).unwrap();
    b.stats().reset();
    let es = qk.apply(&b, &eq, &ek).unwrap();
    let plan = qk.plan();
    assert!(plan.matches(&b.stats().snapshot()), "{plan:?}");
    assert_eq!(plan.rotation_steps, b.stats().used_steps());
    assert_eq!(ops::level(&b, &es), 4);
    assert!((ops::scale(&b, &es) / s - 1.0).abs() < 1e-12);
    let sl = scores_layout(&l).unwrap();
    let got = scores_to_heads(&sl, &decrypt_matrix(&b, &es).unwrap()).unwrap();
    let mut want_heads = Vec::new();
    for h in 0..c.heads {
        let qh = q.columns(h * c.dh, c.dh);
        let kh = k.columns(h * c.dh, c.dh);
        let want = qh.matmul(&kh.transpose()).unwrap().map(|x| x * factor);
        let bits = precision_bits(&got[h], &want).unwrap();
        assert!(bits > 40.0, "head {h}: {bits} bits");
        want_heads.push(want);
    }

    // Mask padded keys, then row sums and A·V.
    let mask = key_mask(&sl, c.valid).unwrap();
    let mp = ops::encode_multiplier(&b, &mask, &es).unwrap();
    let masked = ops::mul_plain(&b, &es, &mp).unwrap();
    let masked_heads: Vec<Matrix> = want_heads
        .iter()
        .map(|m| {
            Matrix::from_fn(c.n, c.n, |t, u| {
                if t < c.valid && u < c.valid {
                    m.get(t, u)
                } else {
                    0.0
                }
            })
        })
        .collect();
    let dm = decrypt_matrix(&b, &masked).unwrap();
    assert!(precision_bits(&dm, &heads_to_scores(&sl, &masked_heads).unwrap()).unwrap() > 40.0);

    b.stats().reset();
    let sums = row_sums(&b, &masked).unwrap();
    let plan = row_sums_plan(&sl).unwrap();
    assert!(plan.matches(&b.stats().snapshot()));
    assert_eq!(plan.rotation_steps, b.stats().used_steps());
    let sums_heads = scores_to_heads(&sl, &decrypt_matrix(&b, &sums).unwrap()).unwrap();
    for h in 0..c.heads {
        for t in 0..c.valid {
            let want: f64 = (0..c.n).map(|u| masked_heads[h].get(t, u)).sum();
            for u in 0..c.n {
                assert!((sums_heads[h].get(t, u) - want).abs() < 1e-9 * (1.0 + want.abs()));
            }
        }
    }

    // Split by rows (one level): the parts add up to the scores.
    let lvl_m = ops::level(&b, &masked);
    let split = RowSplit::new(&b, &sl, lvl_m, ops::scale(&b, &masked)).unwrap();
    let [lo, hi] = split.apply(&b, &masked).unwrap();
    assert_eq!(ops::level(&b, &lo), lvl_m - 1);
    let parts = decrypt_matrix(&b, &ops::add(&b, &lo, &hi).unwrap()).unwrap();
    assert!(precision_bits(&parts, &dm).unwrap() > 40.0);
    let lo_heads = scores_to_heads(&sl, &decrypt_matrix(&b, &lo).unwrap()).unwrap();
    for (h, m) in lo_heads.iter().enumerate() {
        for t in 0..c.n {
            for u in 0..c.n {
                // Keys at or after the row stay in lo; the wrapped ones (u < t) go to hi.
                let want = if u >= t {
                    masked_heads[h].get(t, u)
                } else {
                    0.0
                };
                assert!((m.get(t, u) - want).abs() < 1e-9, "lo part ({t}, {u})");
            }
        }
    }

    let mut want = Matrix::zeros(c.n, d);
    for h in 0..c.heads {
        let o = masked_heads[h].matmul(&v.columns(h * c.dh, c.dh)).unwrap();
        for t in 0..c.n {
            for i in 0..c.dh {
                want.set(t, h * c.dh + i, o.get(t, i));
            }
        }
    }
    // A·V from the row parts (V one level below them), and from the whole weights (V at
    // their level); the same product either way.
    let (whole, parts) = (std::slice::from_ref(&masked), [lo, hi]);
    let forms: [(AvMasking, &[_], usize); 2] = [
        (AvMasking::WeightRows, &parts, lvl_m - 1),
        (AvMasking::ValueTokens, whole, lvl_m),
    ];
    for (masking, weights, lvl_s) in forms {
        let scale_s = ops::scale(&b, &weights[0]);
        let av = AttentionValues::new(&b, (&sl, &l), masking, (lvl_s, scale_s), (4, s)).unwrap();
        assert_eq!(av.parts(), weights.len());
        b.stats().reset();
        let eo = av.apply(&b, weights, &ev).unwrap();
        let plan = av.plan();
        assert!(plan.matches(&b.stats().snapshot()), "{masking:?} {plan:?}");
        assert_eq!(plan.rotation_steps, b.stats().used_steps());
        assert_eq!(ops::level(&b, &eo), lvl_s - plan.depth, "{masking:?}");
        assert!((ops::scale(&b, &eo) / s - 1.0).abs() < 1e-12);
        let bits = precision_bits(&decrypt_matrix(&b, &eo).unwrap(), &want).unwrap();
        assert!(bits > 40.0, "AV {masking:?}: {bits} bits");
        // The other form's number of weight parts is refused.
        let other = if weights.len() == 1 {
            &parts[..]
        } else {
            whole
        };
        assert!(av.apply(&b, other, &ev).is_err());
    }
}

#[test]
fn attention_small_shapes() {
    let cases = [
        Case {
            slots: 256,
            n: 8,
            heads: 2,
            dh: 4,
            valid: 8,
        },
        Case {
            slots: 512,
            n: 5,
            heads: 3,
            dh: 6,
            valid: 4,
        },
        Case {
            slots: 1024,
            n: 16,
            heads: 4,
            dh: 16,
            valid: 13,
        },
        Case {
            slots: 128,
            n: 16,
            heads: 1,
            dh: 8,
            valid: 16,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run(c, i as u64);
    }
}

#[test]
fn attention_minilm_shape() {
    run(
        &Case {
            slots: 8192,
            n: 64,
            heads: 12,
            dh: 32,
            valid: 50,
        },
        7,
    );
}

#[test]
fn attention_rejects_contiguous_layout() {
    let b = ClearBackend::like_ckks(256, 4).unwrap();
    let l = Layout::new(256, 8, 8, ColumnOrder::Contiguous).unwrap();
    assert!(QkScores::new(&b, &l, 4, 1.0, 1.0, 1.0).is_err());
    let l = Layout::new(
        256,
        8,
        8,
        ColumnOrder::HeadInterleaved {
            heads: 2,
            head_dim: 4,
        },
    )
    .unwrap();
    assert!(QkScores::new(&b, &l, 2, 1.0, 1.0, 1.0).is_err());
}

#[test]
fn row_split_rejects_bad_input() {
    let b = ClearBackend::like_ckks(256, 4).unwrap();
    let s = b.default_scale();
    let hi = ColumnOrder::HeadInterleaved {
        heads: 2,
        head_dim: 4,
    };
    let l = Layout::new(256, 8, 8, hi).unwrap();
    let sl = scores_layout(&l).unwrap();
    // Not a scores layout, no level to consume, a level above the top.
    let contiguous = Layout::new(256, 8, 16, ColumnOrder::Contiguous).unwrap();
    assert!(RowSplit::new(&b, &contiguous, 3, s).is_err());
    assert!(RowSplit::new(&b, &sl, 0, s).is_err());
    assert!(RowSplit::new(&b, &sl, 5, s).is_err());
    let split = RowSplit::new(&b, &sl, 3, s).unwrap();
    let m = Matrix::from_fn(8, sl.cols(), |t, c| (t * 31 + c) as f64 / 100.0);
    // Another layout, another scale, a level too low.
    let other = encrypt_matrix(&b, &Matrix::zeros(8, 8), &l, 3).unwrap();
    assert!(split.apply(&b, &other).is_err());
    let ok = encrypt_matrix(&b, &m, &sl, 3).unwrap();
    let rescaled: Vec<_> = ok
        .cts()
        .iter()
        .map(|c| b.set_scale(c, s * 2.0).unwrap())
        .collect();
    let wrong_scale = he_linalg::PackedMatrix::new(sl.clone(), rescaled).unwrap();
    assert!(split.apply(&b, &wrong_scale).is_err());
    assert!(
        split
            .apply(&b, &encrypt_matrix(&b, &m, &sl, 2).unwrap())
            .is_err()
    );
    // From a higher level the input is dropped first; the parts add up to it.
    let [lo, hi] = split
        .apply(&b, &encrypt_matrix(&b, &m, &sl, 4).unwrap())
        .unwrap();
    let sum = decrypt_matrix(&b, &ops::add(&b, &lo, &hi).unwrap()).unwrap();
    assert!(precision_bits(&sum, &m).unwrap() > 40.0);
}

#[test]
fn bert_shaped_attention_plans() {
    // Exact key-switch counts documented in docs/packing.md.
    for (n, d, heads, qk_ks, av_ks) in [
        (64, 384, 12, 215, [246, 183]),
        (128, 128, 2, 387, [394, 267]),
    ] {
        let b = ClearBackend::like_ckks(8192, 3).unwrap();
        let s = b.default_scale();
        let hi = ColumnOrder::HeadInterleaved {
            heads,
            head_dim: d / heads,
        };
        let l = Layout::new(8192, n, d, hi).unwrap();
        let sl = scores_layout(&l).unwrap();
        let qk = QkScores::new(&b, &l, 3, s, s, 1.0).unwrap().plan();
        let av = [(AvMasking::WeightRows, 1), (AvMasking::ValueTokens, 2)].map(|(m, lv)| {
            AttentionValues::new(&b, (&sl, &l), m, (2, s), (lv, s))
                .unwrap()
                .plan()
                .key_switches()
        });
        assert_eq!((qk.key_switches(), av), (qk_ks, av_ks));
    }
}
