//! Element-wise operations on packed matrices (residual adds, masks, products, constants).

use crate::backend::SlotBackend;
use crate::error::{Error, Result};
use crate::layout::{PackedMatrix, PlainMatrix, check_slots};
use crate::matrix::Matrix;

/// Level of a packed matrix (of its first ciphertext; all are kept equal by every operation).
pub fn level<B: SlotBackend>(b: &B, x: &PackedMatrix<B::Ct>) -> usize {
    x.cts().iter().map(|c| b.level(c)).min().unwrap_or(0)
}

/// Scale of a packed matrix.
pub fn scale<B: SlotBackend>(b: &B, x: &PackedMatrix<B::Ct>) -> f64 {
    x.cts().first().map(|c| b.scale(c)).unwrap_or(1.0)
}

/// Drops every ciphertext of `x` to `level`.
pub fn drop_to_level<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    level: usize,
) -> Result<PackedMatrix<B::Ct>> {
    map_cts(b, x, |c| b.drop_to_level(c, level))
}

fn map_cts<B: SlotBackend>(
    _b: &B,
    x: &PackedMatrix<B::Ct>,
    f: impl Fn(&B::Ct) -> Result<B::Ct>,
) -> Result<PackedMatrix<B::Ct>> {
    let cts = x.cts().iter().map(f).collect::<Result<Vec<_>>>()?;
    PackedMatrix::new(x.layout().clone(), cts)
}

fn zip_cts<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    y: &PackedMatrix<B::Ct>,
    f: impl Fn(&B::Ct, &B::Ct) -> Result<B::Ct>,
) -> Result<PackedMatrix<B::Ct>> {
    if x.layout() != y.layout() {
        return Err(Error::LayoutMismatch {
            what: "element-wise operands",
        });
    }
    let l = level(b, x).min(level(b, y));
    let cts = x
        .cts()
        .iter()
        .zip(y.cts())
        .map(|(p, q)| f(&b.drop_to_level(p, l)?, &b.drop_to_level(q, l)?))
        .collect::<Result<Vec<_>>>()?;
    PackedMatrix::new(x.layout().clone(), cts)
}

/// `x + y` (the higher operand is dropped to the lower level; scales must match).
pub fn add<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    y: &PackedMatrix<B::Ct>,
) -> Result<PackedMatrix<B::Ct>> {
    zip_cts(b, x, y, |p, q| b.add(p, q))
}

/// `x - y`.
pub fn sub<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    y: &PackedMatrix<B::Ct>,
) -> Result<PackedMatrix<B::Ct>> {
    zip_cts(b, x, y, |p, q| b.sub(p, q))
}

/// Element-wise product `x ⊙ y`, relinearized and rescaled (one level; the scales multiply and
/// are divided by the dropped prime).
pub fn mul<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    y: &PackedMatrix<B::Ct>,
) -> Result<PackedMatrix<B::Ct>> {
    zip_cts(b, x, y, |p, q| b.rescale(b.relinearize(b.mul(p, q)?)?))
}

/// `x + p` for an encoded plaintext matrix at `x`'s level and scale.
pub fn add_plain<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    p: &PlainMatrix<B::Pt>,
) -> Result<PackedMatrix<B::Ct>> {
    if x.layout() != p.layout() {
        return Err(Error::LayoutMismatch {
            what: "plaintext addend",
        });
    }
    let cts = x
        .cts()
        .iter()
        .zip(p.pts())
        .map(|(c, q)| b.add_plain(&b.drop_to_level(c, p.level())?, q))
        .collect::<Result<Vec<_>>>()?;
    PackedMatrix::new(x.layout().clone(), cts)
}

/// `x ⊙ p` for an encoded plaintext matrix, rescaled (one level).
pub fn mul_plain<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    p: &PlainMatrix<B::Pt>,
) -> Result<PackedMatrix<B::Ct>> {
    if x.layout() != p.layout() {
        return Err(Error::LayoutMismatch {
            what: "plaintext factor",
        });
    }
    let cts = x
        .cts()
        .iter()
        .zip(p.pts())
        .map(|(c, q)| b.rescale(b.mul_plain(&b.drop_to_level(c, p.level())?, q)?))
        .collect::<Result<Vec<_>>>()?;
    PackedMatrix::new(x.layout().clone(), cts)
}

/// Encodes `m` (e.g. a 0/1 mask or LayerNorm-distill weights) so that [`mul_plain`] by it keeps
/// `x`'s scale exactly: the plaintext scale is the prime dropped by the rescale.
pub fn encode_multiplier<B: SlotBackend>(
    b: &B,
    m: &Matrix,
    x: &PackedMatrix<B::Ct>,
) -> Result<PlainMatrix<B::Pt>> {
    check_slots(b, x.layout())?;
    let l = level(b, x);
    PlainMatrix::encode(b, m, x.layout(), l, b.rescale_factor(l))
}

/// Encodes `m` as an addend for `x` (at `x`'s level and scale).
pub fn encode_addend<B: SlotBackend>(
    b: &B,
    m: &Matrix,
    x: &PackedMatrix<B::Ct>,
) -> Result<PlainMatrix<B::Pt>> {
    PlainMatrix::encode(b, m, x.layout(), level(b, x), scale(b, x))
}

/// `c · x`, rescaled (one level), keeping `x`'s scale.
pub fn mul_const<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    c: f64,
) -> Result<PackedMatrix<B::Ct>> {
    map_cts(b, x, |ct| {
        let q = b.rescale_factor(b.level(ct));
        b.rescale(b.mul_const(ct, c, q)?)
    })
}

/// `x + c` in every slot (padding slots included).
pub fn add_const<B: SlotBackend>(
    b: &B,
    x: &PackedMatrix<B::Ct>,
    c: f64,
) -> Result<PackedMatrix<B::Ct>> {
    map_cts(b, x, |ct| b.add_const(ct, c))
}
