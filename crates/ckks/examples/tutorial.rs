//! A guided tour of the `ckks` crate: `cargo run --release -p ckks --example tutorial`.
//!
//! Client: key generation, encoding, (seeded) encryption, decryption.
//! Server: an evaluator holding only evaluation keys computes `rotate(x * y, 1) + 0.5 * x`.

use ckks::precision::precision_stats;
use ckks::{
    Ciphertext, Decryptor, Encoder, Evaluator, GaloisKeys, KeyGenerator, Parameters, Preset,
    RelinKey, SeededCiphertext,
};

fn main() -> Result<(), ckks::Error> {
    // 1. Parameters: N = 2^14, 7 levels at scale 2^40, 128-bit secure (log QP = 430 <= 438).
    let params = Parameters::preset(Preset::N14L7);
    println!(
        "N = {}, slots = {}, levels = {}, log QP = {:.1}",
        params.n(),
        params.max_slots(),
        params.max_level(),
        params.log_qp()
    );

    // 2. Client: keys. The secret key never leaves the client; evaluation keys are serialized.
    let mut keygen = KeyGenerator::new(&params);
    let sk = keygen.secret_key();
    let rlk_bytes = keygen.relin_key(&sk)?.to_bytes();
    let gk_bytes = keygen.galois_keys(&sk, &[1], false)?.to_bytes();

    // 3. Client: encode and encrypt (seeded symmetric encryption: half-size uploads).
    let encoder = Encoder::new(&params);
    let x: Vec<f64> = (0..8).map(|i| i as f64 / 8.0).collect();
    let y: Vec<f64> = (0..8).map(|i| 1.0 - i as f64 / 16.0).collect();
    let mut client = Decryptor::new(&sk);
    let top = params.max_level();
    let scale = params.default_scale();
    let up_x = client
        .encrypt_seeded(&encoder.encode(&x, top, scale)?)?
        .to_bytes(&params);
    let up_y = client
        .encrypt_seeded(&encoder.encode(&y, top, scale)?)?
        .to_bytes(&params);
    println!("upload: {} bytes per seeded ciphertext", up_x.len());

    // 4. Server: deserialize (checks header, parameter id and sizes), then compute.
    let rlk = RelinKey::from_bytes(&params, &rlk_bytes)?;
    let gks = GaloisKeys::from_bytes(&params, &gk_bytes)?;
    let cx = SeededCiphertext::from_bytes(&params, &up_x)?.expand(&params);
    let cy = SeededCiphertext::from_bytes(&params, &up_y)?.expand(&params);
    let ev = Evaluator::new(&params);
    let mut prod = ev.multiply_relin(&cx, &cy, &rlk)?; // scale 2^80, level 7
    ev.rescale_assign(&mut prod)?; // scale ~2^40, level 6
    ev.rotate_assign(&mut prod, 1, &gks)?;
    // 0.5 * x must land on exactly prod's scale after its rescale: encode the constant at
    // const_scale = target * q_7 / scale(x).
    let q_top = params.q_moduli()[top] as f64;
    let const_scale = prod.scale() * q_top / cx.scale();
    let mut half_x = ev.multiply_const_with_scale(&cx, 0.5, const_scale)?;
    ev.rescale_assign(&mut half_x)?; // level 6, scale == prod.scale() (up to f64 rounding)
    let result: Ciphertext = ev.add(&prod, &half_x)?;
    println!(
        "result: level {}, scale 2^{:.4}",
        result.level(),
        result.scale().log2()
    );
    let download = result.to_bytes(&params);

    // 5. Client: decrypt and decode.
    let result = Ciphertext::from_bytes(&params, &download)?;
    let got = encoder.decode(&client.decrypt(&result)?);
    let want: Vec<f64> = (0..8)
        .map(|i| x[(i + 1) % 8] * y[(i + 1) % 8] + 0.5 * x[i])
        .collect();
    let stats = precision_stats(&want, &got[..8]);
    for (w, g) in want.iter().zip(&got) {
        println!("  want {w:+.6}  got {g:+.6}");
    }
    println!(
        "precision: min {:.1} bits, mean {:.1} bits",
        stats.min_bits, stats.mean_bits
    );
    assert!(stats.min_bits > 15.0);
    Ok(())
}
