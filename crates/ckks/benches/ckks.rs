//! Criterion benchmarks at N = 2^14 (log QP = 430) and N = 2^15 (log QP = 870), on the current
//! rayon thread pool (set RAYON_NUM_THREADS=1 for single-threaded numbers); at N = 2^14 also
//! sums of many tensor products sharing their operands, chained against `multiply_sums`.

use ckks::poly::{Coeff, Poly};
use ckks::*;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn data(len: usize, seed: u64) -> Vec<f64> {
    (0..len as u64)
        .map(|i| ((i * 2_654_435_761 + seed * 977) % 1_000_003) as f64 / 500_001.5 - 1.0)
        .collect()
}

fn bench(c: &mut Criterion) {
    for preset in [Preset::N14L7, Preset::N15L18] {
        let params = Parameters::preset(preset);
        let n = params.n();
        let mut kg = KeyGenerator::from_seed(&params, [7; 32]);
        let sk = kg.secret_key();
        let pk = kg.public_key(&sk).unwrap();
        let rlk = kg.relin_key(&sk).unwrap();
        let steps: Vec<i64> = (1..=8).collect();
        let gks = kg.galois_keys(&sk, &steps, false).unwrap();
        let enc = Encoder::new(&params);
        let ev = Evaluator::new(&params);
        let (top, scale) = (params.max_level(), params.default_scale());
        let a = data(params.max_slots(), 1);
        let pt = enc.encode(&a, top, scale).unwrap();
        let mut encryptor = Encryptor::from_seed(&pk, [1; 32]);
        let ct = encryptor.encrypt(&pt).unwrap();
        let ct2 = encryptor
            .encrypt(
                &enc.encode(&data(params.max_slots(), 2), top, scale)
                    .unwrap(),
            )
            .unwrap();
        let dec = Decryptor::from_seed(&sk, [2; 32]);

        let mut g = c.benchmark_group(format!("ckks/N={n}"));
        g.sample_size(10);
        let coeffs: Vec<i64> = (0..n as i64).map(|i| i % 7 - 3).collect();
        let one_limb = Poly::<Coeff>::from_signed(&params, &coeffs, 1, false);
        g.bench_function("ntt_forward_one_limb", |b| {
            b.iter(|| one_limb.clone().into_ntt(&params))
        });
        g.bench_function("mul_relin_rescale", |b| {
            b.iter(|| {
                let mut out = ev.multiply_relin(&ct, &ct2, &rlk).unwrap();
                ev.rescale_assign(&mut out).unwrap();
                out
            })
        });
        g.bench_function("rotate_1", |b| b.iter(|| ev.rotate(&ct, 1, &gks).unwrap()));
        g.bench_with_input(
            BenchmarkId::new("rotate_hoisted", steps.len()),
            &steps,
            |b, s| b.iter(|| ev.rotate_hoisted(&ct, s, &gks).unwrap()),
        );
        g.bench_function("encode", |b| b.iter(|| enc.encode(&a, top, scale).unwrap()));
        g.bench_function("encrypt_pk", |b| b.iter(|| encryptor.encrypt(&pt).unwrap()));
        g.bench_function("decrypt", |b| b.iter(|| dec.decrypt(&ct).unwrap()));
        g.bench_function("decrypt_decode", |b| {
            b.iter(|| enc.decode(&dec.decrypt(&ct).unwrap()))
        });
        if preset == Preset::N14L7 {
            // Q·Kᵀ-like sums at 4 limbs: 32 sums of 64 tensor products over 64 + 64 shared
            // ciphertexts, chained multiply_acc against the lazily reduced multiply_sums.
            let cts: Vec<Ciphertext> = (0..128)
                .map(|i| {
                    let p = enc.encode(&data(params.max_slots(), i), 3, scale).unwrap();
                    encryptor.encrypt(&p).unwrap()
                })
                .collect();
            let sums: Vec<Vec<(&Ciphertext, &Ciphertext)>> = (0..32)
                .map(|m| {
                    (0..64)
                        .map(|i| (&cts[i], &cts[64 + (i + m) % 64]))
                        .collect()
                })
                .collect();
            g.bench_function("tensor_sums_32x64_chained", |b| {
                b.iter(|| {
                    for pairs in &sums {
                        let mut acc = ev.multiply(pairs[0].0, pairs[0].1).unwrap();
                        for (x, y) in &pairs[1..] {
                            ev.multiply_acc(&mut acc, x, y).unwrap();
                        }
                    }
                })
            });
            let refs: Vec<&[(&Ciphertext, &Ciphertext)]> = sums.iter().map(Vec::as_slice).collect();
            g.bench_function("tensor_sums_32x64_multiply_sums", |b| {
                b.iter(|| ev.multiply_sums(&refs).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
