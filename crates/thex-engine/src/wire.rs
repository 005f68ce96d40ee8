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

use crate::error::{EngineError, Result};
use crate::schedule::ItemKind;

/// Magic of engine messages.
pub const MAGIC: [u8; 4] = *b"THXE";
/// Current message format version.
pub const VERSION: u16 = 1;

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

/// The server asks the client for one ReLU round.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluRequest {
    /// Round number, from 1.
    pub round: u32,
    /// Everything ready at this moment.
    pub items: Vec<ReluItem>,
}

/// The client's answer: fresh ciphertexts, item by item in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluReply {
    /// The round answered.
    pub round: u32,
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

/// What the server answers after `start` or `resume`.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// The client must answer a ReLU round.
    NeedRelu(ReluRequest),
    /// The inference is finished.
    Done(EncryptedLogits),
}

/// A bounds-checked reader over a byte slice: every read checks the bytes are there first.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads and checks a format's magic and version; `what` names the format in errors.
    pub fn header(&mut self, magic: [u8; 4], version: u16, what: &str) -> Result<()> {
        if self.take(4)? != magic {
            return Err(EngineError::Malformed(format!("not a {what} (bad magic)")));
        }
        let found = self.u16()?;
        if found != version {
            return Err(EngineError::Malformed(format!(
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
            return Err(EngineError::Malformed(format!(
                "truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
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
            r => Err(EngineError::Malformed(format!("{r} trailing bytes"))),
        }
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(params: &Parameters, ty: MsgType) -> Self {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(&MAGIC);
        w.0.extend_from_slice(&VERSION.to_le_bytes());
        w.0.push(ty as u8);
        w.0.extend_from_slice(&params.id().to_le_bytes());
        w
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
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

/// A message reader: the header checked, counts bounded by the limits.
struct Reader<'a> {
    cur: Cursor<'a>,
    limits: MessageLimits,
    cts_seen: usize,
}

impl<'a> Reader<'a> {
    fn new(
        params: &Parameters,
        bytes: &'a [u8],
        ty: MsgType,
        limits: MessageLimits,
    ) -> Result<Self> {
        if bytes.len() > limits.max_bytes {
            return Err(EngineError::LimitExceeded {
                what: "message bytes",
                value: bytes.len() as u64,
                limit: limits.max_bytes as u64,
            });
        }
        let mut cur = Cursor::new(bytes);
        cur.header(MAGIC, VERSION, "thex-engine message")?;
        let t = cur.u8()?;
        if t != ty as u8 {
            return Err(EngineError::Malformed(format!(
                "message type {t}, expected {}",
                ty as u8
            )));
        }
        let id = cur.u64()?;
        if id != params.id() {
            return Err(EngineError::Malformed(format!(
                "message for parameters {id:016x}, this session uses {:016x}",
                params.id()
            )));
        }
        Ok(Reader {
            cur,
            limits,
            cts_seen: 0,
        })
    }
    fn u32(&mut self) -> Result<u32> {
        self.cur.u32()
    }
    fn u8(&mut self) -> Result<u8> {
        self.cur.u8()
    }
    fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.cur.take(n)
    }
    fn count(&mut self) -> Result<usize> {
        let n = self.u32()? as usize;
        self.cts_seen += n;
        if self.cts_seen > self.limits.max_ciphertexts {
            return Err(EngineError::LimitExceeded {
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

fn small(v: u32, what: &'static str, limit: usize) -> Result<usize> {
    if v as usize > limit {
        return Err(EngineError::LimitExceeded {
            what,
            value: v as u64,
            limit: limit as u64,
        });
    }
    Ok(v as usize)
}

impl EncryptedInput {
    /// Serializes under `params`.
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, MsgType::Input);
        w.u32(self.bucket as u32);
        w.seeded(params, &self.cts);
        w.0
    }
    /// Reads and checks an input message.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::new(params, bytes, MsgType::Input, limits)?;
        let bucket = small(r.u32()?, "bucket", params.max_slots())?;
        let cts = r.seeded(params)?;
        r.finish()?;
        Ok(Self { bucket, cts })
    }
}

impl ReluRequest {
    /// Serializes under `params`.
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, MsgType::ReluRequest);
        w.u32(self.round);
        w.u32(self.items.len() as u32);
        for it in &self.items {
            w.0.push(it.kind.tag());
            w.u32(it.layer as u32);
            w.cts(params, &it.cts);
        }
        w.0
    }
    /// Reads and checks a request message.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::new(params, bytes, MsgType::ReluRequest, limits)?;
        let round = r.u32()?;
        let n = small(r.u32()?, "request items", limits.max_ciphertexts)?;
        let mut items = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let tag = r.u8()?;
            let kind = ItemKind::from_tag(tag)
                .ok_or_else(|| EngineError::Malformed(format!("unknown item kind {tag}")))?;
            let layer = small(r.u32()?, "layer", 4096)?;
            let cts = r.cts(params)?;
            items.push(ReluItem { kind, layer, cts });
        }
        r.finish()?;
        Ok(Self { round, items })
    }
}

impl ReluReply {
    /// Serializes under `params`.
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, MsgType::ReluReply);
        w.u32(self.round);
        w.u32(self.items.len() as u32);
        for it in &self.items {
            w.seeded(params, it);
        }
        w.0
    }
    /// Reads and checks a reply message.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::new(params, bytes, MsgType::ReluReply, limits)?;
        let round = r.u32()?;
        let n = small(r.u32()?, "reply items", limits.max_ciphertexts)?;
        let items = (0..n)
            .map(|_| r.seeded(params))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(Self { round, items })
    }
}

impl EncryptedLogits {
    /// Serializes under `params`.
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, MsgType::Logits);
        w.u32(self.bucket as u32);
        w.cts(params, std::slice::from_ref(&self.ct));
        w.0
    }
    /// Reads and checks a logits message.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::new(params, bytes, MsgType::Logits, limits)?;
        let bucket = small(r.u32()?, "bucket", params.max_slots())?;
        let mut cts = r.cts(params)?;
        r.finish()?;
        if cts.len() != 1 {
            return Err(EngineError::WrongCount {
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

impl EvaluationKeys {
    /// Serializes (seeded keys).
    pub fn to_bytes(&self, params: &Parameters) -> Vec<u8> {
        let mut w = Writer::new(params, MsgType::EvaluationKeys);
        w.blob(&self.relin.to_bytes());
        w.blob(&self.galois.to_bytes());
        w.0
    }
    /// Reads and checks an evaluation-key message.
    pub fn from_bytes(params: &Parameters, bytes: &[u8], limits: MessageLimits) -> Result<Self> {
        let mut r = Reader::new(params, bytes, MsgType::EvaluationKeys, limits)?;
        let relin = RelinKey::from_bytes(params, r.blob()?)?;
        // The ckks reader checks the key count against the remaining bytes before allocating;
        // the message size limit bounds the rest.
        let galois = GaloisKeys::from_bytes(params, r.blob()?)?;
        small(
            galois.galois_elements().len() as u32,
            "Galois keys",
            limits.max_galois_keys,
        )?;
        r.finish()?;
        Ok(Self { relin, galois })
    }
}
