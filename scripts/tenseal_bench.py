#!/usr/bin/env python3
"""Times SEAL (as shipped in TenSEAL 0.3.18, via `tenseal.sealapi`) on CKKS operations and prints JSON.

Parameters match the `ckks` presets: N=2^14 with coeff_mod_bit_sizes [60, 40 x 7, 60] (log QP = 400)
and N=2^15 with [60, 40 x 18, 60] (log QP = 840); scale 2^40; the last prime is SEAL's special prime.

Ops (medians over --repeats runs, single-threaded as SEAL is):
  mul_relin_rescale: multiply + relinearize_inplace + rescale_to_next_inplace (fresh top-level inputs)
  rotate:            rotate_vector by one slot (top level)
Precision: -log2(max |error|) over all slots against the cleartext f64 result.

Usage: tenseal_bench.py [--log-n 14 15] [--repeats 10]
Install: pip install tenseal==0.3.18
"""

import argparse
import json
import math
import statistics
import sys
import time

try:
    import tenseal
    import tenseal.sealapi as sealapi
except ImportError as exc:  # pragma: no cover
    print(json.dumps({"error": f"tenseal not importable: {exc}; pip install tenseal==0.3.18"}))
    sys.exit(2)

BIT_SIZES = {
    14: [60] + [40] * 7 + [60],
    15: [60] + [40] * 18 + [60],
}


def test_vector(length, seed):
    """Values in [-1, 1): the same formula as `ckks_bench::test_vector`, so both sides see the same data."""
    m32 = (1 << 32) - 1
    mult = (2654435761 + 2 * seed * 1013904223) & m32
    out = []
    for i in range(length):
        h = (i + 1) * mult & m32
        h ^= h >> 15
        h = h * 0x2C1B3C6D & m32
        h ^= h >> 12
        out.append(h / float(1 << 31) - 1.0)
    return out


def bits(want, got):
    err = max(abs(a - b) for a, b in zip(want, got))
    return 64.0 if err == 0 else -math.log2(err)


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(log_n, repeats):
    n = 1 << log_n
    sizes = BIT_SIZES[log_n]
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, sizes))
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    keygen = sealapi.KeyGenerator(ctx)
    sk = keygen.secret_key()
    pk = sealapi.PublicKey()
    keygen.create_public_key(pk)
    rlk = sealapi.RelinKeys()
    keygen.create_relin_keys(rlk)
    gk = sealapi.GaloisKeys()
    # The list overload takes Galois elements; SEAL rotates left by one with generator 3.
    keygen.create_galois_keys([3], gk)
    encoder = sealapi.CKKSEncoder(ctx)
    encryptor = sealapi.Encryptor(ctx, pk)
    decryptor = sealapi.Decryptor(ctx, sk)
    evaluator = sealapi.Evaluator(ctx)
    scale = 2.0 ** 40
    slots = n // 2
    a = test_vector(slots, 1)
    b = test_vector(slots, 2)

    def enc(v):
        pt = sealapi.Plaintext()
        encoder.encode(v, scale, pt)
        ct = sealapi.Ciphertext(ctx)
        encryptor.encrypt(pt, ct)
        return ct

    def dec(ct):
        pt = sealapi.Plaintext()
        decryptor.decrypt(ct, pt)
        return encoder.decode_double(pt)

    ca, cb = enc(a), enc(b)
    out = sealapi.Ciphertext(ctx)

    def mul():
        evaluator.multiply(ca, cb, out)
        evaluator.relinearize_inplace(out, rlk)
        evaluator.rescale_to_next_inplace(out)

    mul()
    mul_bits = bits([x * y for x, y in zip(a, b)], dec(out))
    mul_ms = median_ms(mul, repeats)

    rot = sealapi.Ciphertext(ctx)

    def rotate():
        evaluator.rotate_vector(ca, 1, gk, rot)

    rotate()
    rot_bits = bits(a[1:] + a[:1], dec(rot))
    rot_ms = median_ms(rotate, repeats)
    log_q = sum(sizes)
    return [
        {"name": "mul_relin_rescale", "n": n, "log_q": log_q, "ms": mul_ms, "bits": mul_bits},
        {"name": "rotate", "n": n, "log_q": log_q, "ms": rot_ms, "bits": rot_bits},
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-n", type=int, nargs="+", default=[14, 15], choices=sorted(BIT_SIZES))
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    ops = []
    for log_n in args.log_n:
        ops.extend(bench(log_n, max(1, args.repeats)))
    print(json.dumps({"tenseal_version": tenseal.__version__, "ops": ops}))


if __name__ == "__main__":
    main()
