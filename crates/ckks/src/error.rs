//! The crate's error type.

/// Everything that can go wrong in `ckks`. Variants carry the offending numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ring degree is outside the supported range.
    #[error("log2(N) = {log_n} is unsupported (allowed {min}..={max})")]
    UnsupportedRingDegree {
        /// Requested log2(N).
        log_n: u32,
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
    },
    /// A prime bit size is outside the supported range.
    #[error("prime bit size {bits} is unsupported (allowed {min}..={max})")]
    UnsupportedPrimeSize {
        /// Requested bit size.
        bits: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The modulus chain or the special primes are empty.
    #[error("the modulus chain needs at least one q prime and one special prime (got {q} and {p})")]
    EmptyModulusChain {
        /// Number of q primes.
        q: usize,
        /// Number of special primes.
        p: usize,
    },
    /// Not enough NTT-friendly primes of a size exist.
    #[error("could not find {wanted} distinct NTT-friendly primes of {bits} bits for N = {n}")]
    NotEnoughPrimes {
        /// Bit size.
        bits: u32,
        /// How many were needed.
        wanted: usize,
        /// Ring degree.
        n: usize,
    },
    /// log2(QP) exceeds the 128-bit security bound of the HE Standard.
    #[error("log2(QP) = {log_qp:.1} exceeds the 128-bit security bound {max} for N = 2^{log_n}")]
    Insecure {
        /// log2 of the full modulus.
        log_qp: f64,
        /// Bound from the HE Standard table.
        max: u32,
        /// log2(N).
        log_n: u32,
    },
    /// A parameter is outside what the 128-bit security claim assumes.
    #[error("insecure parameter {name} = {value}: must be {requirement}")]
    InsecureParameter {
        /// Which parameter (a field of [`crate::ParametersLiteral`]).
        name: &'static str,
        /// Its value.
        value: String,
        /// What security requires.
        requirement: &'static str,
    },
    /// A parameter value is invalid.
    #[error("invalid parameter {name}: {value}")]
    InvalidParameter {
        /// Which parameter.
        name: &'static str,
        /// Its value, printed.
        value: String,
    },
    /// Too many values for the number of slots.
    #[error("{len} values do not fit into {max} slots")]
    TooManyValues {
        /// Number of values given.
        len: usize,
        /// Maximum number of slots.
        max: usize,
    },
    /// A scale is not finite and positive, or too large to encode.
    #[error("invalid scale 2^{log2_scale:.2}")]
    InvalidScale {
        /// log2 of the scale.
        log2_scale: f64,
    },
    /// A value times the scale does not fit in the encodable range.
    #[error("value {value} at scale 2^{log2_scale:.2} overflows the encodable range")]
    EncodingOverflow {
        /// The offending value (real or imaginary part).
        value: f64,
        /// log2 of the scale.
        log2_scale: f64,
    },
    /// A level is higher than the maximum level.
    #[error("level {level} is above the maximum {max}")]
    LevelOutOfRange {
        /// Requested level.
        level: usize,
        /// Maximum level available.
        max: usize,
    },
    /// Two operands have different levels.
    #[error("level mismatch: left {left}, right {right}")]
    LevelMismatch {
        /// Level of the left operand.
        left: usize,
        /// Level of the right operand.
        right: usize,
    },
    /// Two operands have different scales.
    #[error("scale mismatch: left 2^{left:.6}, right 2^{right:.6}")]
    ScaleMismatch {
        /// log2 of the left scale.
        left: f64,
        /// log2 of the right scale.
        right: f64,
    },
    /// A sum of products was asked for with no products.
    #[error("a sum of products needs at least one product")]
    EmptySum,
    /// Two operands have different slot counts.
    #[error("slot count mismatch: left {left}, right {right}")]
    SlotsMismatch {
        /// Slots of the left operand.
        left: usize,
        /// Slots of the right operand.
        right: usize,
    },
    /// A ciphertext has the wrong degree for an operation.
    #[error("ciphertext degree {degree} is not supported here (expected {expected})")]
    DegreeMismatch {
        /// Actual degree (number of polynomials minus one).
        degree: usize,
        /// Expected degree.
        expected: usize,
    },
    /// Rescaling or dropping a level at level 0.
    #[error("cannot go below level 0 (at level {level}, asked to drop {drop})")]
    LevelExhausted {
        /// Current level.
        level: usize,
        /// Levels requested to drop.
        drop: usize,
    },
    /// No Galois key can realize a rotation.
    #[error("no Galois key for rotation step {step} (nor a power-of-two decomposition)")]
    MissingRotationKey {
        /// Requested rotation step.
        step: i64,
    },
    /// The conjugation key is missing.
    #[error("no Galois key for conjugation")]
    MissingConjugationKey,
    /// An object was created under other parameters.
    #[error("object belongs to other parameters (id {found:016x}, expected {expected:016x})")]
    ParametersMismatch {
        /// Parameter id found.
        found: u64,
        /// Parameter id expected.
        expected: u64,
    },
    /// Rotate-and-sum span is not a power of two within the slot count.
    #[error("rotate-and-sum span {span} must be a power of two <= {slots}")]
    InvalidSpan {
        /// Requested span.
        span: usize,
        /// Slot count.
        slots: usize,
    },
    /// Serialized data is malformed.
    #[error("deserialization failed: {0}")]
    Deserialize(#[from] DeserializeError),
}

/// Why a byte string could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeserializeError {
    /// The input ended early.
    #[error("input truncated: needed {needed} bytes at offset {offset}, {available} available")]
    Truncated {
        /// Offset of the read.
        offset: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Wrong magic number.
    #[error("bad magic {found:08x}")]
    BadMagic {
        /// Magic found.
        found: u32,
    },
    /// Unsupported format version.
    #[error("unsupported version {found} (supported {supported})")]
    BadVersion {
        /// Version found.
        found: u16,
        /// Version supported.
        supported: u16,
    },
    /// The object has another type than expected.
    #[error("object type {found} where {expected} was expected")]
    WrongType {
        /// Type tag found.
        found: u8,
        /// Type tag expected.
        expected: u8,
    },
    /// The object was made under other parameters.
    #[error("parameter id {found:016x} does not match {expected:016x}")]
    ParametersMismatch {
        /// Id found.
        found: u64,
        /// Id expected.
        expected: u64,
    },
    /// A length or count field exceeds what these parameters allow.
    #[error("field {field} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// Which field.
        field: &'static str,
        /// Value read.
        value: u64,
        /// Allowed maximum.
        limit: u64,
    },
    /// A field has an invalid value.
    #[error("invalid value {value} for field {field}")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// Value read.
        value: u64,
    },
    /// A residue is not reduced modulo its prime.
    #[error("coefficient {value} is not reduced modulo {modulus}")]
    Unreduced {
        /// Value read.
        value: u64,
        /// Its modulus.
        modulus: u64,
    },
    /// Bytes remain after the object.
    #[error("{0} trailing bytes after the object")]
    TrailingBytes(usize),
    /// A field differs from the one value the reader was told to accept.
    #[error("field {field} = {found}, expected {expected}")]
    Unexpected {
        /// Which field.
        field: &'static str,
        /// Value read.
        found: u64,
        /// The value required.
        expected: u64,
    },
}

/// Result alias for this crate.
pub type Result<T> = core::result::Result<T, Error>;
