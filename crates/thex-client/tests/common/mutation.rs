//! The mutation engine of `examples/mutate.rs` and `tests/mutation.rs`: a seed corpus of every
//! serialized object a client or server reads, a seeded mutator, and a runner that feeds every
//! mutant to every deserializer, turning a panic into a failure and measuring the peak memory
//! each call holds (with [`Counting`] as the global allocator).
//!
//! # The allocation bound
//!
//! A reader may allocate what the bytes it read can expand to, and a constant [`SLACK`]:
//! `bound = E · len + SLACK` for an input of `len` bytes, with `E` per format
//! ([`Expansion`]), `b` the smallest prime's bit length and `L` the prime count of the set:
//!
//! - ciphertexts, seeded ciphertexts, plaintexts: `E = 64 / b` (each residue takes at least
//!   `b` bits and becomes a `u64`);
//! - public, relinearization and Galois keys: `E = 2 · 64 / b + 1` (`b` read, `a` regenerated
//!   from its seed, and a Galois key's 4-byte-per-coefficient permutation, less than one byte
//!   per input byte);
//! - the secret key: `E = 8 · (L + 2)` (one byte per coefficient becomes an `i64` and an NTT
//!   form of `L` limbs, with a limb of scratch);
//! - protocol messages: `E = max(keys, 24)` (the objects inside, and a 24-byte vector per
//!   4-byte count, at most 3 times that while growing);
//! - the client bundle: `E = 32` (a 3-byte JSON `""` becomes a 24-byte `String`, 8 bytes per
//!   input byte, at most 3 times that while its vector grows with the old and the doubled
//!   buffer live; the tables are read exactly), plus the memory of building the CKKS
//!   parameters its header names, measured the same way ([`Fixture::context_bytes`]): a
//!   bundle of any length may name the largest secure ring.
//!
//! A single allocation above [`HARD_CAP`] aborts the run after naming the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ckks::{
    Ciphertext, Decryptor, Encoder, Encryptor, Evaluator, GaloisKeys, KeyGenerator, Parameters,
    ParametersLiteral, Plaintext, PublicKey, RelinKey, SecretDistribution, SecretKey,
    SeededCiphertext,
};
use he_linalg::attention::AvMasking;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use thex_client::{
    ClientBundle, ClientSession, EncryptedInput, EncryptedLogits, EvaluationKeys, ItemKind,
    Message, MessageLimits, ReluItem, ReluReply, ReluRequest, Step,
};

use crate::bundle::small_bundle;

/// Bytes any reader may hold beyond its expansion bound (error messages, small vectors).
pub const SLACK: usize = 4 << 10;
/// One allocation above this while an input is read aborts the run.
pub const HARD_CAP: usize = 2 << 30;
/// The message limits of every message reader: a real round carries tens of ciphertexts and
/// a session a few hundred Galois keys.
pub const LIMITS: MessageLimits = MessageLimits {
    max_bytes: 64 << 20,
    max_ciphertexts: 256,
    max_galois_keys: 512,
};

/// `System`, counting the bytes live on each thread and their peak.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// The input being read, or `u64::MAX`.
    static INPUT: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The run's seed, for the hard-cap message.
static SEED: AtomicU64 = AtomicU64::new(0);

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

/// Whether `size` is above [`HARD_CAP`] while an input is read; then names the input on
/// unbuffered stderr (formatting integers does not allocate).
fn over_cap(size: usize) -> bool {
    let input = INPUT.try_with(Cell::get).unwrap_or(u64::MAX);
    if size <= HARD_CAP || input == u64::MAX {
        return false;
    }
    let seed = SEED.load(Ordering::Relaxed);
    let _ = writeln!(
        std::io::stderr(),
        "mutate: input {input} of seed {seed} asked for one allocation of {size} bytes; \
         the same options and `--replay {input}` save it"
    );
    true
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters are
// thread-local cells that never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_cap(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks may be live during the copy.
            track(new_size as isize);
            track(-(layout.size() as isize));
        }
        p
    }
}

/// Runs `f` and returns its result and the most bytes it held live at once on this thread.
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

/// Bytes per input byte a set's readers may allocate (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Expansion {
    /// Ciphertexts, seeded ciphertexts and plaintexts.
    pub ciphertext: f64,
    /// Public, relinearization and Galois keys.
    pub key: f64,
    /// The secret key.
    pub secret_key: f64,
}

impl Expansion {
    fn of(p: &Parameters) -> Self {
        let primes: Vec<u64> = p.q_moduli().into_iter().chain(p.p_moduli()).collect();
        let bits = primes.iter().map(|&q| 64 - (q - 1).leading_zeros()).min();
        let ciphertext = 64.0 / f64::from(bits.expect("a prime"));
        Self {
            ciphertext,
            key: 2.0 * ciphertext + 1.0,
            secret_key: 8.0 * (primes.len() + 2) as f64,
        }
    }
    /// Protocol messages.
    fn message(&self) -> f64 {
        self.key.max(24.0)
    }
}

/// One parameter set of the corpus, with what its readers need.
#[derive(Debug)]
pub struct Set {
    /// The parameters.
    pub params: Parameters,
    /// Galois elements of the corpus's Galois keys (for the exact readers).
    pub elements: Vec<u64>,
    /// Its expansion bounds.
    pub expansion: Expansion,
}

/// Parameter sets, the seed corpus and the bundle-context cache.
#[derive(Debug)]
pub struct Fixture {
    /// N = 2^11, q = [30], p = [24]: the smallest ring the 128-bit check accepts
    /// (log QP ≤ 54 holds one ciphertext prime and one special prime).
    pub n11: Set,
    /// N = 2^12, q = [30, 20, 20], p = [30]: three levels and three key-switching digits
    /// (log QP ≤ 109).
    pub n12: Set,
    /// `(file name, bytes)` of every generated seed.
    pub seeds: Vec<(String, Vec<u8>)>,
    /// The corpus bundles' headers (tables cleared).
    bundle_headers: Vec<ClientBundle>,
    /// Peak bytes of building each parameter literal a bundle named, by its JSON.
    contexts: Mutex<HashMap<String, usize>>,
}

fn literal(log_n: u32, log_q: &[u32], log_p: &[u32]) -> ParametersLiteral {
    ParametersLiteral {
        log_n,
        log_q: log_q.to_vec(),
        log_p: log_p.to_vec(),
        log_scale: 20,
        dnum: 0,
        secret: SecretDistribution::Ternary,
        error_std: 3.2,
    }
}

/// Version-1 bytes of a ciphertext (residues as little-endian `u64`), still read by `ckks`.
fn version1_bytes(p: &Parameters, ct: &Ciphertext) -> Vec<u8> {
    let mut v = ckks::serialize::MAGIC.to_le_bytes().to_vec();
    v.extend(1u16.to_le_bytes());
    v.push(1);
    v.extend(p.id().to_le_bytes());
    v.push(ct.polys().len() as u8);
    v.extend(ct.scale().to_bits().to_le_bytes());
    v.extend((ct.slots() as u32).to_le_bytes());
    for poly in ct.polys() {
        v.extend([poly.q_limbs() as u8, poly.p_limbs() as u8]);
        for k in 0..poly.q_limbs() {
            v.extend(poly.limb(k).iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    v
}

/// The objects of one set, from fixed seeds.
struct Objects {
    rlk: RelinKey,
    gks: GaloisKeys,
    ct: Ciphertext,
    seeded: Vec<SeededCiphertext>,
}

/// The set's seeds (`{tag}-{object}.bin`) and objects.
fn objects(
    params: &Parameters,
    tag: &str,
    seeds: &mut Vec<(String, Vec<u8>)>,
) -> ckks::Result<Objects> {
    let mut kg = KeyGenerator::from_seed(params, [1; 32]);
    let sk = kg.secret_key();
    let pk = kg.public_key(&sk)?;
    let rlk = kg.relin_key(&sk)?;
    let gks = kg.galois_keys(&sk, &[1, -1], false)?;
    let values: Vec<f64> = (0..8).map(|i| f64::from(i) / 8.0 - 0.5).collect();
    let enc = Encoder::new(params);
    let scale = params.default_scale();
    let pt = enc.encode(&values, params.max_level(), scale)?;
    let ct = Encryptor::from_seed(&pk, [2; 32]).encrypt(&pt)?;
    let low = Encryptor::from_seed(&pk, [3; 32]).encrypt(&enc.encode(&values, 0, scale)?)?;
    let ct3 = Evaluator::new(params).multiply(&ct, &ct)?;
    let seeded = (4..6)
        .map(|s| Decryptor::from_seed(&sk, [s; 32]).encrypt_seeded(&pt))
        .collect::<ckks::Result<Vec<_>>>()?;
    for (name, bytes) in [
        ("ciphertext", ct.to_bytes(params)),
        ("ciphertext-level0", low.to_bytes(params)),
        ("ciphertext-degree2", ct3.to_bytes(params)),
        ("ciphertext-v1", version1_bytes(params, &low)),
        ("seeded-ciphertext", seeded[0].to_bytes(params)),
        ("plaintext", pt.to_bytes(params)),
        ("public-key", pk.to_bytes()),
        ("relin-key", rlk.to_bytes()),
        ("galois-keys", gks.to_bytes()),
        ("secret-key", sk.to_bytes_secret()),
    ] {
        seeds.push((format!("{tag}-{name}.bin"), bytes));
    }
    Ok(Objects {
        rlk,
        gks,
        ct,
        seeded,
    })
}

/// A bundle with its tables cleared.
fn header_of(b: &ClientBundle) -> ClientBundle {
    let mut h = b.clone();
    let e = &mut h.embeddings;
    for t in [
        &mut e.word,
        &mut e.position,
        &mut e.token_type,
        &mut e.ln_gamma,
        &mut e.ln_beta,
    ] {
        t.clear();
    }
    h
}

/// The JSON header of bytes that start like a client bundle.
fn bundle_json(b: &[u8]) -> Option<&[u8]> {
    if b.get(..4)? != b"THXB" {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(b.get(6..14)?.try_into().ok()?)).ok()?;
    b.get(14..14usize.checked_add(len)?)
}

impl Fixture {
    /// Builds the parameter sets and the seeds (deterministic: fixed key and encryption
    /// seeds).
    pub fn new() -> Self {
        let n11 = Parameters::new(&literal(11, &[30], &[24])).expect("secure N = 2^11");
        let n12 = Parameters::new(&literal(12, &[30, 20, 20], &[30])).expect("secure N = 2^12");
        let mut seeds = Vec::new();
        let o11 = objects(&n11, "n11", &mut seeds).expect("n11 objects");
        let o12 = objects(&n12, "n12", &mut seeds).expect("n12 objects");
        let p = &n11;
        let messages: [(&str, Vec<u8>); 5] = [
            (
                "input",
                EncryptedInput {
                    bucket: 4,
                    cts: o11.seeded.clone(),
                }
                .to_bytes(p),
            ),
            (
                "relu-request",
                ReluRequest {
                    round: 4,
                    nonce: [0x5a; 16],
                    items: [(ItemKind::Ffn, 1), (ItemKind::Residual, 2)]
                        .into_iter()
                        .map(|(kind, n)| ReluItem {
                            kind,
                            layer: 0,
                            cts: vec![o11.ct.clone(); n],
                        })
                        .collect(),
                }
                .to_bytes(p),
            ),
            (
                "relu-reply",
                ReluReply {
                    round: 4,
                    nonce: [0x5a; 16],
                    items: vec![o11.seeded[..1].to_vec(), o11.seeded.clone()],
                }
                .to_bytes(p),
            ),
            (
                "logits",
                EncryptedLogits {
                    bucket: 4,
                    ct: o11.ct.clone(),
                }
                .to_bytes(p),
            ),
            (
                "evaluation-keys",
                EvaluationKeys {
                    relin: o11.rlk.clone(),
                    galois: o11.gks.clone(),
                }
                .to_bytes(p),
            ),
        ];
        for (name, bytes) in messages {
            seeds.push((format!("message-{name}.bin"), bytes));
        }
        let bundle = small_bundle();
        seeds.push(("bundle.bin".into(), bundle.to_bytes()));
        // The other masking of attention · V, and a third label.
        let mut other = bundle.clone();
        other.plans[1].attention_values = AvMasking::ValueTokens;
        other.dims.labels.push("neutral".into());
        seeds.push(("bundle-value-tokens.bin".into(), other.to_bytes()));
        let set = |params: Parameters, o: &Objects| Set {
            elements: o.gks.galois_elements(),
            expansion: Expansion::of(&params),
            params,
        };
        Self {
            n11: set(n11, &o11),
            n12: set(n12, &o12),
            seeds,
            bundle_headers: vec![header_of(&bundle), header_of(&other)],
            contexts: Mutex::new(HashMap::new()),
        }
    }

    /// Peak bytes of building the CKKS parameters a bundle's header names (0 when it names
    /// none): the part of a bundle reader's memory that its length does not bound. Cached by
    /// literal.
    pub fn context_bytes(&self, input: &[u8]) -> usize {
        let literal = bundle_json(input)
            .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
            .and_then(|v| {
                serde_json::from_value::<ParametersLiteral>(v.get("params")?.clone()).ok()
            });
        let Some(literal) = literal else {
            return 0;
        };
        let key = serde_json::to_string(&literal).expect("a literal serializes");
        let mut cache = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        *cache
            .entry(key)
            .or_insert_with(|| peak_of(|| Parameters::new(&literal).is_ok()).1)
    }
}

/// How much a target may allocate.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// `E · len + SLACK`, `E` from the fixture.
    Expansion(fn(&Fixture) -> f64),
    /// `32 · len + SLACK` and the parameter context the header names.
    Bundle,
    /// Not a reader: peak reported only.
    Unbounded,
}

/// A deserializer under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name in the summary.
    pub name: &'static str,
    /// Its allocation bound.
    pub bound: Bound,
    /// Reads the input: `Some(accepted)`, or `None` when the input is not for this target.
    pub read: fn(&Fixture, &[u8]) -> Option<bool>,
}

impl Target {
    /// `(E, fixed)` of the bound `E · len + fixed` on reading `input` (`E = None`:
    /// unbounded).
    fn bound_of(&self, f: &Fixture, input: &[u8]) -> (Option<f64>, usize) {
        match self.bound {
            Bound::Expansion(e) => (Some(e(f)), SLACK),
            Bound::Bundle => (Some(32.0), SLACK + f.context_bytes(input)),
            Bound::Unbounded => (None, SLACK),
        }
    }
}

fn accepted<T, E>(r: Result<T, E>) -> Option<bool> {
    Some(r.is_ok())
}

/// The `ckks` readers of set `$set`.
macro_rules! ckks_targets {
    ($set:ident, $tag:literal) => {
        [
            Target {
                name: concat!($tag, " Ciphertext"),
                bound: Bound::Expansion(|f| f.$set.expansion.ciphertext),
                read: |f, b| accepted(Ciphertext::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " SeededCiphertext"),
                bound: Bound::Expansion(|f| f.$set.expansion.ciphertext),
                read: |f, b| accepted(SeededCiphertext::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " Plaintext"),
                bound: Bound::Expansion(|f| f.$set.expansion.ciphertext),
                read: |f, b| accepted(Plaintext::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " PublicKey"),
                bound: Bound::Expansion(|f| f.$set.expansion.key),
                read: |f, b| accepted(PublicKey::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " RelinKey"),
                bound: Bound::Expansion(|f| f.$set.expansion.key),
                read: |f, b| accepted(RelinKey::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " GaloisKeys"),
                bound: Bound::Expansion(|f| f.$set.expansion.key),
                read: |f, b| accepted(GaloisKeys::from_bytes(&f.$set.params, b)),
            },
            Target {
                name: concat!($tag, " GaloisKeys exact"),
                bound: Bound::Expansion(|f| f.$set.expansion.key),
                read: |f, b| {
                    let s = &f.$set;
                    accepted(GaloisKeys::from_bytes_exact(&s.params, b, &s.elements))
                },
            },
            Target {
                name: concat!($tag, " SecretKey"),
                bound: Bound::Expansion(|f| f.$set.expansion.secret_key),
                read: |f, b| accepted(SecretKey::from_bytes_secret(&f.$set.params, b)),
            },
        ]
    };
}

/// Message readers (under the N = 2^11 set).
macro_rules! message_target {
    ($name:literal, $read:expr) => {
        Target {
            name: $name,
            bound: Bound::Expansion(|f| f.n11.expansion.message()),
            read: $read,
        }
    };
}

/// Every deserializer, and the client session opened from every accepted bundle whose header
/// differs from the corpus bundles' (with one encryption).
pub fn targets() -> Vec<Target> {
    let mut t: Vec<Target> = ckks_targets!(n11, "ckks n11")
        .into_iter()
        .chain(ckks_targets!(n12, "ckks n12"))
        .collect();
    t.extend([
        message_target!("EncryptedInput", |f, b| accepted(
            EncryptedInput::from_bytes(&f.n11.params, b, LIMITS)
        )),
        message_target!("ReluRequest", |f, b| accepted(ReluRequest::from_bytes(
            &f.n11.params,
            b,
            LIMITS
        ))),
        message_target!("ReluReply", |f, b| accepted(ReluReply::from_bytes(
            &f.n11.params,
            b,
            LIMITS
        ))),
        message_target!("EncryptedLogits", |f, b| accepted(
            EncryptedLogits::from_bytes(&f.n11.params, b, LIMITS)
        )),
        message_target!("Step", |f, b| accepted(Step::from_bytes(
            &f.n11.params,
            b,
            LIMITS
        ))),
        message_target!("EvaluationKeys", |f, b| accepted(
            EvaluationKeys::from_bytes(&f.n11.params, b, LIMITS)
        )),
        message_target!("EvaluationKeys exact", |f, b| {
            let s = &f.n11;
            accepted(EvaluationKeys::from_bytes_exact(
                &s.params,
                b,
                LIMITS,
                &s.elements,
            ))
        }),
        Target {
            name: "ClientBundle",
            bound: Bound::Bundle,
            read: |_, b| accepted(ClientBundle::from_bytes(b)),
        },
        Target {
            name: "ClientSession (changed bundles)",
            bound: Bound::Unbounded,
            read: |f, b| {
                let bundle = ClientBundle::from_bytes(b).ok()?;
                if f.bundle_headers.contains(&header_of(&bundle)) {
                    return None;
                }
                let session = ClientSession::from_seed(bundle, [9; 32]);
                accepted(session.and_then(|mut c| c.encrypt_ids(&[1, 2])))
            },
        },
    ]);
    t
}

/// Reads every file of `dir`, sorted by name.
pub fn load_dir(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            files.push((name.unwrap_or_default(), std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// A seed and the offsets and widths (4 or 8 bytes) of what look like its length fields.
#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    fields: Vec<(usize, usize)>,
}

/// Most length fields kept per seed.
const MAX_FIELDS: usize = 512;

/// Offsets of little-endian `u32`/`u64` values in `1..=` the bytes after them: lengths and
/// counts (and a few payload words that happen to look like them).
fn length_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for p in 0..b.len().saturating_sub(4) {
        let rest = (b.len() - p) as u64;
        let w = u32::from_le_bytes(b[p..p + 4].try_into().expect("4 bytes")) as u64;
        if w == 0 || w > rest - 4 {
            continue;
        }
        let wide = b.len() - p >= 8 && b[p + 4..p + 8] == [0; 4];
        out.push((p, if wide { 8 } else { 4 }));
        if out.len() == MAX_FIELDS {
            break;
        }
    }
    out
}

/// A uniform index below `n` (`n > 0`).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// Replaces `range` of `x` by `with`; inside a bundle's JSON header, the header length
/// follows, so the header still parses (a hostile server writes consistent lengths).
fn splice_json(x: &mut Vec<u8>, range: std::ops::Range<usize>, with: &[u8]) {
    let header = bundle_json(x).map(|j| j.len());
    let (start, removed) = (range.start, range.len());
    x.splice(range, with.iter().copied());
    if let Some(len) = header.filter(|&len| start >= 14 && start + removed <= 14 + len) {
        let new = (len - removed + with.len()) as u64;
        x[6..14].copy_from_slice(&new.to_le_bytes());
    }
}

/// Stacked random mutations of the seeds.
#[derive(Debug)]
pub struct Mutator {
    entries: Vec<Entry>,
}

/// JSON numbers at limits: zero, ±1, slot counts, 2^31, 2^32 ± 1, 2^63 ± 1, 2^64 ± 1, the
/// largest and the smallest floats.
const NUMBERS: [&[u8]; 16] = [
    b"0",
    b"1",
    b"-1",
    b"4096",
    b"8192",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1e308",
    b"-0.0",
    b"5e-324",
    b"0.5",
];

/// Interesting single bytes.
const BYTES: [u8; 10] = [0, 1, 2, 0x10, 0x20, 0x40, 0x7f, 0x80, 0xfe, 0xff];

impl Mutator {
    /// A mutator over `seeds` (at least one).
    pub fn new(seeds: &[(String, Vec<u8>)]) -> Self {
        assert!(!seeds.is_empty(), "no seed");
        Self {
            entries: seeds
                .iter()
                .map(|(_, b)| Entry {
                    fields: length_fields(b),
                    bytes: b.clone(),
                })
                .collect(),
        }
    }

    /// Input `index` of the run with `seed`: a function of both alone, so any input can be
    /// replayed. One to eight stacked mutations of one seed (half of them a single one).
    pub fn mutant(&self, seed: u64, index: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        let e = &self.entries[below(&mut rng, self.entries.len())];
        let mut x = e.bytes.clone();
        let rounds = 1 + rng.next_u32().trailing_zeros().min(7);
        for _ in 0..rounds {
            self.mutate(&mut rng, e, &mut x);
        }
        x
    }

    /// A position in `x`: a quarter in the first 96 bytes (headers), a quarter near a length
    /// field of the seed, the rest uniform. `x` must not be empty.
    fn pos(rng: &mut ChaCha8Rng, e: &Entry, x: &[u8]) -> usize {
        let len = x.len();
        match below(rng, 4) {
            0 => below(rng, len.min(96)),
            1 if !e.fields.is_empty() => {
                let (f, _) = e.fields[below(rng, e.fields.len())];
                (f + below(rng, 24)).saturating_sub(8).min(len - 1)
            }
            _ => below(rng, len),
        }
    }

    /// An interesting value for a field of `width` bytes holding `old` in an input of `len`.
    fn value(rng: &mut ChaCha8Rng, old: u64, len: usize, width: usize) -> u64 {
        let max = if width == 8 {
            u64::MAX
        } else {
            (1 << (8 * width)) - 1
        };
        let v = match below(rng, 14) {
            0 => 0,
            1 => 1,
            2 => max,
            3 => max >> 1,
            4 => (max >> 1) + 1,
            5 => old.wrapping_add(1),
            6 => old.wrapping_sub(1),
            7 => old.wrapping_mul(2),
            8 => old / 2,
            9 => len as u64,
            10 => (len as u64)
                .wrapping_add(below(rng, 3) as u64)
                .wrapping_sub(1),
            11 => 1 << below(rng, 8 * width),
            12 => u64::from(u32::MAX),
            _ => rng.next_u64(),
        };
        v & max
    }

    fn write(x: &mut [u8], at: usize, width: usize, v: u64) {
        let end = (at + width).min(x.len());
        x[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
    }

    fn read(x: &[u8], at: usize, width: usize) -> u64 {
        let mut w = [0u8; 8];
        let end = (at + width).min(x.len());
        w[..end - at].copy_from_slice(&x[at..end]);
        u64::from_le_bytes(w)
    }

    /// One mutation of `x` (a mutant of seed `e`).
    fn mutate(&self, rng: &mut ChaCha8Rng, e: &Entry, x: &mut Vec<u8>) {
        if x.is_empty() {
            x.extend((0..1 + below(rng, 64)).map(|_| rng.next_u32() as u8));
            return;
        }
        let at = Self::pos(rng, e, x);
        let len = x.len();
        // A third of a bundle's mutations go to the numbers of its JSON header.
        let op = if x.starts_with(b"THXB") && below(rng, 3) == 0 {
            11
        } else {
            below(rng, 13)
        };
        match op {
            // Bit flip.
            0 => x[at] ^= 1 << below(rng, 8),
            // An interesting or random byte.
            1 => {
                x[at] = match below(rng, 3) {
                    0 => rng.next_u32() as u8,
                    _ => BYTES[below(rng, BYTES.len())],
                }
            }
            // An interesting 2-, 4- or 8-byte word.
            2 => {
                let width = [2, 4, 8][below(rng, 3)];
                let v = Self::value(rng, Self::read(x, at, width), len, width);
                Self::write(x, at, width, v);
            }
            // A length field rewritten.
            3 if !e.fields.is_empty() => {
                let (f, width) = e.fields[below(rng, e.fields.len())];
                if f < len {
                    let v = Self::value(rng, Self::read(x, f, width), len - f, width);
                    Self::write(x, f, width, v);
                }
            }
            // Truncation.
            4 => x.truncate(at),
            // Extension: zeros, 0xff, random bytes or a copy of a chunk.
            5 => {
                let k = 1 + below(rng, 1024);
                match below(rng, 4) {
                    0 => x.resize(len + k, 0),
                    1 => x.resize(len + k, 0xff),
                    2 => x.extend((0..k).map(|_| rng.next_u32() as u8)),
                    _ => x.extend_from_within(at..(at + k).min(len)),
                }
            }
            // Insertion of interesting bytes.
            6 => {
                let k = 1 + below(rng, 16);
                let b = BYTES[below(rng, BYTES.len())];
                x.splice(at..at, std::iter::repeat_n(b, k));
            }
            // Deletion of a chunk.
            7 => {
                let k = 1 + below(rng, 256);
                x.drain(at..(at + k).min(len));
            }
            // Splice: this input's head, another seed's tail.
            8 => {
                let other = &self.entries[below(rng, self.entries.len())].bytes;
                let from = below(rng, other.len().max(1)).min(other.len());
                x.truncate(at);
                x.extend_from_slice(&other[from..]);
            }
            // A chunk duplicated elsewhere (or right after itself).
            9 => {
                let k = 1 + below(rng, 512);
                let chunk = x[at..(at + k).min(len)].to_vec();
                let to = if below(rng, 2) == 0 {
                    at
                } else {
                    below(rng, len + 1)
                };
                x.splice(to..to, chunk);
            }
            // Small arithmetic on a byte or a 4-byte word.
            10 => {
                let d = 1 + below(rng, 35) as u64;
                let width = [1, 4][below(rng, 2)];
                let old = Self::read(x, at, width);
                let v = if below(rng, 2) == 0 {
                    old.wrapping_add(d)
                } else {
                    old.wrapping_sub(d)
                };
                Self::write(x, at, width, v);
            }
            // JSON numbers (the bundle header, at the start): a digit among the first 4 KiB
            // chosen, its number replaced by a limit value, or the digit replaced, or digits,
            // a sign or an exponent inserted.
            11 => {
                let digits: Vec<usize> = (0..len.min(4096))
                    .filter(|&i| x[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let d = digits[below(rng, digits.len())];
                    let number = |c: &u8| c.is_ascii_digit() || b".eE+-".contains(c);
                    let (range, with): (_, Vec<u8>) = match below(rng, 5) {
                        0 => (d..d + 1, vec![b'0' + below(rng, 10) as u8]),
                        1 => (d..d, vec![b'9'; 1 + below(rng, 20)]),
                        2 => (d..d, b"-".to_vec()),
                        3 => (d + 1..d + 1, b"e99".to_vec()),
                        _ => {
                            let end = d + x[d..].iter().take_while(|c| number(c)).count();
                            let start = d - usize::from(d > 0 && x[d - 1] == b'-');
                            (start..end, NUMBERS[below(rng, NUMBERS.len())].to_vec())
                        }
                    };
                    splice_json(x, range, &with);
                }
            }
            // A random byte run.
            _ => {
                let k = 1 + below(rng, 32);
                for b in x.iter_mut().skip(at).take(k) {
                    *b = rng.next_u32() as u8;
                }
            }
        }
    }
}

/// What a run with one seed covers.
#[derive(Debug, Clone)]
pub struct Config {
    /// Inputs in all.
    pub inputs: u64,
    /// The mutation seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
}

/// One target's results.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Target name.
    pub name: &'static str,
    /// Inputs read (those meant for it, for the session target).
    pub inputs: u64,
    /// Inputs accepted.
    pub accepted: u64,
    /// Inputs refused with an error.
    pub rejected: u64,
    /// Largest peak of one call, in bytes.
    pub peak_bytes: usize,
    /// The bound's `E` (`None`: unbounded, or nothing read).
    pub bound_per_input_byte: Option<f64>,
    /// Largest `(peak − fixed part of the bound) / len`, to compare with `E`.
    pub excess_per_input_byte: f64,
    /// Largest peak as a fraction of its bound (0 for unbounded targets).
    pub peak_of_bound: f64,
}

impl Stats {
    /// Nothing counted yet.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            inputs: 0,
            accepted: 0,
            rejected: 0,
            peak_bytes: 0,
            bound_per_input_byte: None,
            excess_per_input_byte: 0.0,
            peak_of_bound: 0.0,
        }
    }
    fn merge(&mut self, o: &Stats) {
        self.inputs += o.inputs;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.peak_bytes = self.peak_bytes.max(o.peak_bytes);
        self.bound_per_input_byte = self.bound_per_input_byte.or(o.bound_per_input_byte);
        self.excess_per_input_byte = self.excess_per_input_byte.max(o.excess_per_input_byte);
        self.peak_of_bound = self.peak_of_bound.max(o.peak_of_bound);
    }
}

/// A panic or an allocation over the bound.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Input index (replayable with the run's seed).
    pub index: u64,
    /// The target.
    pub target: &'static str,
    /// What went wrong.
    pub problem: String,
    /// The input.
    #[serde(skip)]
    pub input: Vec<u8>,
}

/// Feeds `input` (number `index`) to every target, updating `stats` (one per target).
pub fn feed(
    f: &Fixture,
    targets: &[Target],
    (index, input): (u64, &[u8]),
    stats: &mut [Stats],
) -> Result<(), Failure> {
    let fail = |target, problem| Failure {
        index,
        target,
        problem,
        input: input.to_vec(),
    };
    for (t, s) in targets.iter().zip(stats.iter_mut()) {
        let (e, fixed) = t.bound_of(f, input);
        let len = input.len();
        INPUT.with(|i| i.set(index));
        let (out, peak) = peak_of(|| catch_unwind(AssertUnwindSafe(|| (t.read)(f, input))));
        INPUT.with(|i| i.set(u64::MAX));
        let ok = match out {
            Ok(Some(ok)) => ok,
            Ok(None) => continue,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(fail(t.name, format!("panic: {msg}")));
            }
        };
        s.inputs += 1;
        if ok {
            s.accepted += 1;
        } else {
            s.rejected += 1;
        }
        s.peak_bytes = s.peak_bytes.max(peak);
        s.excess_per_input_byte = s
            .excess_per_input_byte
            .max(peak.saturating_sub(fixed) as f64 / len.max(1) as f64);
        if let Some(e) = e {
            let limit = (e * len as f64) as usize + fixed;
            s.bound_per_input_byte = Some(e);
            s.peak_of_bound = s.peak_of_bound.max(peak as f64 / limit as f64);
            if peak > limit {
                return Err(fail(
                    t.name,
                    format!("{peak} bytes live at once for a {len}-byte input, bound {limit}"),
                ));
            }
        }
    }
    Ok(())
}

/// The results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The mutation seed.
    pub seed: u64,
    /// Seeds mutated.
    pub seeds: usize,
    /// Inputs run (fewer than asked after a failure).
    pub inputs: u64,
    /// Worker threads.
    pub threads: usize,
    /// Wall time.
    pub seconds: f64,
    /// Inputs per second, all threads.
    pub inputs_per_second: f64,
    /// Per target.
    pub targets: Vec<Stats>,
    /// The first failure found, if any.
    pub failure: Option<Failure>,
}

/// Runs `cfg.inputs` mutants of `m`'s seeds through every target on `cfg.threads` threads
/// (input `i` on thread `i mod threads`), stopping at the first failure.
pub fn run(f: &Fixture, m: &Mutator, cfg: &Config) -> Report {
    SEED.store(cfg.seed, Ordering::Relaxed);
    let targets = targets();
    let threads = cfg.threads.max(1);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<(u64, Vec<Stats>, Option<Failure>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (targets, stop) = (&targets, &stop);
                s.spawn(move || {
                    let mut stats: Vec<Stats> =
                        targets.iter().map(|t| Stats::new(t.name)).collect();
                    let mut done = 0;
                    let mut index = t as u64;
                    while index < cfg.inputs && !stop.load(Ordering::Relaxed) {
                        let input = m.mutant(cfg.seed, index);
                        done += 1;
                        if let Err(e) = feed(f, targets, (index, &input), &mut stats) {
                            stop.store(true, Ordering::Relaxed);
                            return (done, stats, Some(e));
                        }
                        index += threads as u64;
                    }
                    (done, stats, None)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("workers catch panics"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut total: Vec<Stats> = targets.iter().map(|t| Stats::new(t.name)).collect();
    let mut inputs = 0;
    let mut failure = None;
    for (done, stats, fail) in results {
        inputs += done;
        for (a, b) in total.iter_mut().zip(&stats) {
            a.merge(b);
        }
        failure = failure.or(fail);
    }
    Report {
        seed: cfg.seed,
        seeds: m.entries.len(),
        inputs,
        threads,
        seconds,
        inputs_per_second: inputs as f64 / seconds.max(1e-9),
        targets: total,
        failure,
    }
}
