//! The plan of a whole encoder layer equals what the cleartext run actually uses.

mod common;

use common::*;
use he_linalg::attention::{
    AttentionValues, AvMasking, QkScores, RowSplit, key_mask, row_sums, row_sums_plan,
    scores_layout,
};
use he_linalg::poly::{self, Polynomial};
use he_linalg::{
    ClearBackend, ColumnOrder, EncodedLinear, Layout, LinearMethod, OpPlan, PackedMatrix, Plan,
    SlotBackend, encrypt_matrix, ops,
};

fn poly_all(
    b: &ClearBackend,
    x: &PackedMatrix<he_linalg::ClearCt>,
    p: &Polynomial,
) -> PackedMatrix<he_linalg::ClearCt> {
    let cts = x
        .cts()
        .iter()
        .map(|c| poly::eval(b, c, p).unwrap())
        .collect();
    PackedMatrix::new(x.layout().clone(), cts).unwrap()
}

#[test]
fn encoder_layer_plan_matches_run() {
    let (slots, n, d, heads, ffn, top) = (512, 10, 16, 2, 24, 15);
    let b = ClearBackend::like_ckks(slots, top).unwrap();
    let s = b.default_scale();
    let mut r = rng(5);
    let c = ColumnOrder::Contiguous;
    let hi = ColumnOrder::HeadInterleaved {
        heads,
        head_dim: d / heads,
    };
    let lx = Layout::new(slots, n, d, c).unwrap();
    let lin = |din: usize, dout: usize, l: &Layout, out: ColumnOrder, level: usize| {
        let w = random_matrix(&mut rng(din as u64 * 31 + dout as u64), din, dout, 0.3);
        EncodedLinear::new(&b, &w, None, l, out, level, s, LinearMethod::Bsgs).unwrap()
    };
    let wq = lin(d, d, &lx, hi, top);
    let wk = lin(d, d, &lx, hi, top);
    let wv = lin(d, d, &lx, hi, top);
    let lh = wq.out_layout().clone();
    let sl = scores_layout(&lh).unwrap();
    let qk = QkScores::new(&b, &lh, top - 1, s, s, 0.5).unwrap();
    let cube = Polynomial::power(vec![1.0, 1.5, 0.75, 0.125]).unwrap();
    let level_e = top - 1 - qk.plan().depth - 1 - cube.depth();
    let split = RowSplit::new(&b, &sl, level_e, s).unwrap();
    let av = AttentionValues::new(
        &b,
        (&sl, &lh),
        AvMasking::WeightRows,
        (level_e - 1, s),
        (top - 1, s),
    )
    .unwrap();
    let level_o = level_e - 1 - av.plan().depth;
    let wo = lin(d, d, &lh, c, level_o);
    let w1 = lin(d, ffn, &lx, c, level_o - 1);
    let sq = Polynomial::power(vec![0.0, 0.5, 0.25]).unwrap();
    let lf = w1.out_layout().clone();
    let w2 = lin(ffn, d, &lf, c, level_o - 2 - sq.depth());

    let mut plan = Plan::new();
    plan.alongside(vec![wq.plan(), wk.plan(), wv.plan()])
        .then(qk.plan())
        .then(OpPlan::plaintext("key mask", 1))
        .then(cube.plan().repeated(sl.n_cts()))
        .then(row_sums_plan(&sl).unwrap())
        .then(split.plan())
        .then(av.plan())
        .then(wo.plan())
        .then(w1.plan())
        .then(sq.plan().repeated(lf.n_cts()))
        .then(w2.plan());

    let x = encrypt_matrix(&b, &random_matrix(&mut r, n, d, 4.0), &lx, top).unwrap();
    b.stats().reset();
    let (q, k, v) = (
        wq.apply(&b, &x).unwrap(),
        wk.apply(&b, &x).unwrap(),
        wv.apply(&b, &x).unwrap(),
    );
    let sc = qk.apply(&b, &q, &k).unwrap();
    let m = ops::encode_multiplier(&b, &key_mask(&sl, n).unwrap(), &sc).unwrap();
    let e = poly_all(&b, &ops::mul_plain(&b, &sc, &m).unwrap(), &cube);
    let _denominators = row_sums(&b, &e).unwrap();
    let o = av.apply(&b, &split.apply(&b, &e).unwrap(), &v).unwrap();
    let h = wo.apply(&b, &o).unwrap();
    let f = poly_all(&b, &w1.apply(&b, &h).unwrap(), &sq);
    let y = w2.apply(&b, &f).unwrap();

    let used = b.stats().snapshot();
    assert_eq!(plan.galois_steps(), b.stats().used_steps());
    assert_eq!(plan.rotations(), used.rotations);
    assert_eq!(plan.relinearizations(), used.relinearizations);
    assert_eq!(plan.key_switches(), used.key_switches);
    assert_eq!(ops::level(&b, &y), top - plan.levels());
    assert_eq!(plan.levels(), 15);
}
