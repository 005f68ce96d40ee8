//! The wire format: protocol messages as plain Rust types, with a versioned binary form, and
//! the bounds-checked byte cursor every reader of the crate (messages and the client bundle)
//! uses.
//!
//! Every message starts with magic `THXE`, a format version, a message type and the CKKS
//! parameter id; ciphertexts and keys inside use the `ckks` crate's own versioned format (which
//! checks the parameter id again, bounds every length by the parameters before allocating and
//! rejects unreduced residues). Counts are bounded by [`MessageLimits`] before anything is
//! allocated from them.

use ckks::{Ciphertext, GaloisKeys, Parameters, RelinKey, SeededCiphertext};

use crate::error::{Error, Result};
use crate::schedule::{ItemKind, Round, Schedule};

/// Magic of protocol messages.
const MAGIC: [u8; 4] = *b"THXE";
/// Bytes of a message header: magic, version, type, parameter id.
const HEADER_BYTES: usize = 4 + 2 + 1 + 8;
/// Current message format version.
const VERSION: u16 = 2;

/// Message type tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum MsgType {
    Input = 1,
    ReluRequest = 2,
    ReluReply = 3,
    Logits = 4,
    EvaluationKeys = 5,
}

/// Bounds checked while reading a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest accepted message in bytes.
    pub max_bytes: usize,
    /// Most ciphertexts in one message.
    pub max_ciphertexts: usize,
    /// Most Galois keys in an evaluation-key message.
    pub max_galois_keys: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_ciphertexts: 4096,
            max_galois_keys: 1024,
        }
    }
}

/// The client's encrypted input: the embedded sequence padded to `bucket` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct EncryptedInput {
    /// Length bucket (padded rows).
    pub bucket: usize,
    /// Hidden states in the bucket's hidden layout (seeded: half the size).
    pub cts: Vec<SeededCiphertext>,
}

/// One group of ciphertexts of a ReLU round and what the client must do with them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluItem {
    /// What the ciphertexts are.
    pub kind: ItemKind,
    /// Encoder layer.
    pub layer: usize,
    /// The ciphertexts, in the layout of `kind` (see [`ItemKind::layout`]).
    pub cts: Vec<Ciphertext>,
}

/// Bytes of a round nonce.
pub const NONCE_BYTES: usize = 16;

/// The server asks the client for one ReLU round.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluRequest {
    /// Round number, from 1.
    pub round: u32,
    /// Fresh server randomness binding the reply to this request (the reply echoes it).
    pub nonce: [u8; NONCE_BYTES],
    /// Everything ready at this moment.
    pub items: Vec<ReluItem>,
}

/// The client's answer: fresh ciphertexts, item by item in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluReply {
    /// The round answered.
    pub round: u32,
    /// The nonce of the request answered.
    pub nonce: [u8; NONCE_BYTES],
    /// Per request item, its fresh ciphertexts (seeded).
    pub items: Vec<Vec<SeededCiphertext>>,
}

/// The encrypted logits: label `c` sits in slot `c · bucket`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncryptedLogits {
    /// Length bucket (gives the slot positions).
    pub bucket: usize,
    /// The ciphertext.
    pub ct: Ciphertext,
}

/// The evaluation keys a client uploads once per session.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationKeys {
    /// Relinearization key.
    pub relin: RelinKey,
    /// Exactly the rotation keys of the program's plan.
    pub galois: GaloisKeys,
}

/// What the server answers after the input or a reply: the next round, or the logits.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// The client must answer a ReLU round.
    NeedRelu(ReluRequest),
    /// The inference is finished.
    Done(EncryptedLogits),
}

/// A bounds-checked reader over a byte slice: every read checks the bytes are there first.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads and checks a format's magic and version; `what` names the format in errors.
    pub fn header(&mut self, magic: [u8; 4], version: u16, what: &str) -> Result<()> {
        if self.take(4)? != magic {
            return Err(Error::Malformed(format!("not a {what} (bad magic)")));
        }
        let found = self.u16()?;
        if found != version {
            return Err(Error::Malformed(format!(
                "{what} version {found}, this build reads {version}"
            )));
        }
        Ok(())
    }
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Error::Malformed(format!(
                "truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A `u64` length, saturated to `usize` (a later [`Cursor::take`] refuses it).
    pub(crate) fn len64(&mut self) -> Result<usize> {
        Ok(usize::try_from(self.u64()?).unwrap_or(usize::MAX))
    }
    /// Refuses trailing bytes.
    pub(crate) fn finish(self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            r => Err(Error::Malformed(format!("{r} trailing bytes"))),
        }
    }
}

/// A message writer (see [`Message`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Writer(Vec<u8>);

impl Writer {
    fn new(params: &Parameters, ty: u8) -> Self {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(&MAGIC);
        w.0.extend_from_slice(&VERSION.to_le_bytes());
        w.0.push(ty);
        w.0.extend_from_slice(&params.id().to_le_bytes());
        w
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn cts(&mut self, params: &Parameters, cts: &[Ciphertext]) {
        self.u32(cts.len() as u32);
        for c in cts {
            self.blob(&c.to_bytes(params));
        }
    }
    fn seeded(&mut self, params: &Parameters, cts: &[SeededCiphertext]) {
        self.u32(cts.len() as u32);
        for c in cts {
            self.blob(&c.to_bytes(params));
        }
    }
}

/// A message reader: the header checked, counts bounded by the limits (see [`Message`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Reader<'a> {
    cur: Cursor<'a>,
    limits: MessageLimits,
    cts_seen: usize,
}

impl<'a> Reader<'a> {
    /// Checks the size, header and parameter id; returns the reader and the message type.
    fn new(params: &Parameters, bytes: &'a [u8], limits: MessageLimits) -> Result<(Self, u8)> {
        if bytes.len() > limits.max_bytes {
            return Err(Error::LimitExceeded {
                what: "message bytes",
                value: bytes.len() as u64,
                limit: limits.max_bytes as u64,
            });
        }
        let mut cur = Cursor::new(bytes);
        cur.header(MAGIC, VERSION, "thex-engine message")?;
        let t = cur.u8()?;
        let id = cur.u64()?;
        if id != params.id() {
            return Err(Error::Malformed(format!(
                "message for parameters {id:016x}, this session uses {:016x}",
                params.id()
            )));
        }
        let reader = Reader {
            cur,
            limits,
            cts_seen: 0,
        };
        Ok((reader, t))
    }
    /// [`Reader::new`], refusing any message type but `ty`.
    fn of_type(
        params: &Parameters,
        bytes: &'a [u8],
        limits: MessageLimits,
        ty: u8,
    ) -> Result<Self> {
        let (r, t) = Self::new(params, bytes, limits)?;
        if t != ty {
            return Err(Error::Malformed(format!("message type {t}, expected {ty}")));
        }
        Ok(r)
    }
    fn u32(&mut self) -> Result<u32> {
        self.cur.u32()
    }
    fn u8(&mut self) -> Result<u8> {
        self.cur.u8()
    }
    fn nonce(&mut self) -> Result<[u8; NONCE_BYTES]> {
        self.cur.array()
    }
    fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.cur.take(n)
    }
    fn count(&mut self) -> Result<usize> {
        let n = self.u32()? as usize;
        self.cts_seen += n;
        if self.cts_seen > self.limits.max_ciphertexts {
            return Err(Error::LimitExceeded {
                what: "ciphertexts in a message",
                value: self.cts_seen as u64,
                limit: self.limits.max_ciphertexts as u64,
            });
        }
        Ok(n)
    }
    fn cts(&mut self, params: &Parameters) -> Result<Vec<Ciphertext>> {
        let n = self.count()?;
        (0..n)
            .map(|_| Ok(Ciphertext::from_bytes(params, self.blob()?)?))
            .collect()
    }
    fn seeded(&mut self, params: &Parameters) -> Result<Vec<SeededCiphertext>> {
        let n = self.count()?;
        (0..n)
            .map(|_| Ok(SeededCiphertext::from_bytes(params, self.blob()?)?))
            .collect()
    }
    fn finish(self) -> Result<()> {
        self.cur.finish()
    }
}

/// A protocol message with its binary form: header (magic, version, type, parameter id),
/// then the body, every count bounded by [`MessageLimits`] before anything is allocated.
pub trait Message: Sized {
    /// Its type tag.
    #[doc(hidden)]
    const TYPE: u8;
    /// Writes the body.
    #[doc(hidden)]
    fn write_body(&self, w: &mut Writer, params: &Parameters);
    /// Reads the body.
    #[doc(hidden)]
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self>;

    /// Serializes under `params`.
    fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, Self::TYPE);
        self.write_body(&mut w, params);
        w.0
    }
    /// Reads and checks a message of this type.
    fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::of_type(params, bytes, limits, Self::TYPE)?;
        let m = Self::read_body(&mut r, params)?;
        r.finish()?;
        Ok(m)
    }
}

/// Checks that `got` is one of the `expected` exact sizes of a message.
pub fn check_size(what: &'static str, got: usize, expected: &[usize]) -> Result<()> {
    if expected.contains(&got) {
        return Ok(());
    }
    Err(Error::WrongSize {
        what,
        got,
        expected: expected.to_vec(),
    })
}

/// Bytes of `n` seeded ciphertexts at `level` written as a counted list.
fn seeded_list_len(params: &Parameters, n: usize, level: usize) -> usize {
    4 + n * (4 + SeededCiphertext::serialized_len(params, level))
}

impl EncryptedInput {
    /// The exact size of the input of `sched`'s bucket as [`Message::to_bytes`] writes it: a
    /// server refuses a body of any other size before reading it.
    pub fn serialized_len(params: &Parameters, sched: &Schedule) -> usize {
        let n = sched.layouts().hidden.n_cts();
        HEADER_BYTES + 4 + seeded_list_len(params, n, sched.input().level)
    }
}

impl ReluReply {
    /// The exact size of the reply to `round` as [`Message::to_bytes`] writes it.
    pub fn serialized_len(params: &Parameters, round: &Round) -> usize {
        let items: usize = round
            .items
            .iter()
            .map(|it| seeded_list_len(params, it.reply_ciphertexts, it.reply.level))
            .sum();
        HEADER_BYTES + 4 + NONCE_BYTES + 4 + items
    }
}

impl EvaluationKeys {
    /// The exact size of a relinearization key and `galois` Galois keys as
    /// [`Message::to_bytes`] writes them.
    pub fn serialized_len(params: &Parameters, galois: usize) -> usize {
        HEADER_BYTES
            + 4
            + RelinKey::serialized_len(params)
            + 4
            + GaloisKeys::serialized_len(params, galois)
    }

    /// Memory the keys take once read and expanded (what a server holds per session).
    pub fn expanded_len(params: &Parameters, galois: usize) -> usize {
        RelinKey::expanded_len(params) + GaloisKeys::expanded_len(params, galois)
    }

    /// Reads keys that must be a relinearization key and Galois keys for exactly `elements`
    /// (ascending): the total size, the key count and every Galois element are checked before
    /// a key is expanded.
    pub fn from_bytes_exact(
        params: &Parameters,
        bytes: &[u8],
        limits: MessageLimits,
        elements: &[u64],
    ) -> Result<Self> {
        check_size(
            "evaluation keys",
            bytes.len(),
            &[Self::serialized_len(params, elements.len())],
        )?;
        let mut r = Reader::of_type(params, bytes, limits, Self::TYPE)?;
        let relin = RelinKey::from_bytes(params, r.blob()?)?;
        let galois = GaloisKeys::from_bytes_exact(params, r.blob()?, elements)?;
        r.finish()?;
        Ok(Self { relin, galois })
    }
}

fn small(v: u32, what: &'static str, limit: usize) -> Result<usize> {
    if v as usize > limit {
        return Err(Error::LimitExceeded {
            what,
            value: v as u64,
            limit: limit as u64,
        });
    }
    Ok(v as usize)
}

impl Message for EncryptedInput {
    const TYPE: u8 = MsgType::Input as u8;
    fn write_body(&self, w: &mut Writer, params: &Parameters) {
        w.u32(self.bucket as u32);
        w.seeded(params, &self.cts);
    }
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self> {
        let bucket = small(r.u32()?, "bucket", params.max_slots())?;
        let cts = r.seeded(params)?;
        Ok(Self { bucket, cts })
    }
}

impl Message for ReluRequest {
    const TYPE: u8 = MsgType::ReluRequest as u8;
    fn write_body(&self, w: &mut Writer, params: &Parameters) {
        w.u32(self.round);
        w.bytes(&self.nonce);
        w.u32(self.items.len() as u32);
        for it in &self.items {
            w.0.push(it.kind.tag());
            w.u32(it.layer as u32);
            w.cts(params, &it.cts);
        }
    }
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self> {
        let round = r.u32()?;
        let nonce = r.nonce()?;
        let n = small(r.u32()?, "request items", r.limits.max_ciphertexts)?;
        let mut items = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let tag = r.u8()?;
            let kind = ItemKind::from_tag(tag)
                .ok_or_else(|| Error::Malformed(format!("unknown item kind {tag}")))?;
            let layer = small(r.u32()?, "layer", crate::MAX_LAYERS)?;
            let cts = r.cts(params)?;
            items.push(ReluItem { kind, layer, cts });
        }
        Ok(Self {
            round,
            nonce,
            items,
        })
    }
}

impl Message for ReluReply {
    const TYPE: u8 = MsgType::ReluReply as u8;
    fn write_body(&self, w: &mut Writer, params: &Parameters) {
        w.u32(self.round);
        w.bytes(&self.nonce);
        w.u32(self.items.len() as u32);
        for it in &self.items {
            w.seeded(params, it);
        }
    }
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self> {
        let round = r.u32()?;
        let nonce = r.nonce()?;
        let n = small(r.u32()?, "reply items", r.limits.max_ciphertexts)?;
        let items = (0..n)
            .map(|_| r.seeded(params))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            round,
            nonce,
            items,
        })
    }
}

impl Message for EncryptedLogits {
    const TYPE: u8 = MsgType::Logits as u8;
    fn write_body(&self, w: &mut Writer, params: &Parameters) {
        w.u32(self.bucket as u32);
        w.cts(params, std::slice::from_ref(&self.ct));
    }
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self> {
        let bucket = small(r.u32()?, "bucket", params.max_slots())?;
        let mut cts = r.cts(params)?;
        if cts.len() != 1 {
            return Err(Error::WrongCount {
                what: "logits ciphertexts".into(),
                expected: 1,
                got: cts.len(),
            });
        }
        Ok(Self {
            bucket,
            ct: cts.remove(0),
        })
    }
}

impl Message for EvaluationKeys {
    const TYPE: u8 = MsgType::EvaluationKeys as u8;
    fn write_body(&self, w: &mut Writer, _: &Parameters) {
        w.blob(&self.relin.to_bytes());
        w.blob(&self.galois.to_bytes());
    }
    fn read_body(r: &mut Reader<'_>, params: &Parameters) -> Result<Self> {
        let relin = RelinKey::from_bytes(params, r.blob()?)?;
        let blob = r.blob()?;
        // The key count (after the 15-byte object header) is bounded before any key is
        // expanded; the ckks reader checks it against the remaining bytes.
        if let Some(count) = blob.get(15..19) {
            let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
            small(count, "Galois keys", r.limits.max_galois_keys)?;
        }
        let galois = GaloisKeys::from_bytes(params, blob)?;
        Ok(Self { relin, galois })
    }
}

impl Step {
    /// Serializes under `params` (the request's or the logits' own message).
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        match self {
            Step::NeedRelu(r) => r.to_bytes(params),
            Step::Done(l) => l.to_bytes(params),
        }
    }
    /// Reads a request or logits message, whichever the type tag says.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let (_, t) = Reader::new(params, bytes, limits)?;
        match t {
            t if t == ReluRequest::TYPE => {
                ReluRequest::from_bytes(params, bytes, limits).map(Step::NeedRelu)
            }
            t if t == EncryptedLogits::TYPE => {
                EncryptedLogits::from_bytes(params, bytes, limits).map(Step::Done)
            }
            t => Err(Error::Malformed(format!(
                "message type {t}, expected a round request or the logits"
            ))),
        }
    }
}
