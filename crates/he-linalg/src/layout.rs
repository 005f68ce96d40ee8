//! The packed layout of a `rows × cols` activation matrix over one or more ciphertexts.
//!
//! Rows (tokens) are padded to `row_stride = rows.next_power_of_two()`; each ciphertext holds
//! `chunks = slots / row_stride` *physical columns*, each a contiguous chunk of `row_stride`
//! slots. Entry `(t, c)` of the matrix lives in ciphertext `p / chunks`, slot
//! `(p % chunks) * row_stride + t`, where `p` is the physical column of logical column `c`
//! given by the [`ColumnOrder`]. See `docs/packing.md` for pictures.

use crate::backend::{PlaintextSize, SlotBackend, SlotClient};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// How logical columns map to physical columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnOrder {
    /// Column `c` is physical column `c`.
    Contiguous,
    /// Columns are `heads` blocks of `head_dim`; column `h*head_dim + i` goes to ciphertext
    /// `i / g`, physical chunk `(i % g) * H + h` with `H = heads.next_power_of_two()` and
    /// `g = chunks / H`: every ciphertext holds the same feature positions of all heads, so
    /// per-head sums are cyclic rotate-and-sums. Used for Q, K, V and attention scores.
    HeadInterleaved {
        /// Number of heads.
        heads: usize,
        /// Columns per head.
        head_dim: usize,
    },
}

/// Packed layout of a `rows × cols` matrix. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    slots: usize,
    rows: usize,
    row_stride: usize,
    cols: usize,
    chunks: usize,
    n_cts: usize,
    order: ColumnOrder,
}

impl Layout {
    /// Layout of a `rows × cols` matrix in ciphertexts of `slots` slots.
    pub fn new(slots: usize, rows: usize, cols: usize, order: ColumnOrder) -> Result<Self> {
        if !slots.is_power_of_two() {
            return Err(Error::InvalidParameter {
                name: "slots (power of two)",
                value: slots.to_string(),
            });
        }
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidParameter {
                name: "matrix shape",
                value: format!("{rows}x{cols}"),
            });
        }
        // Checked before rounding up: `next_power_of_two` wraps for rows above 2^63.
        if rows > slots {
            return Err(Error::Unsupported(format!(
                "{rows} rows do not fit in {slots} slots"
            )));
        }
        let row_stride = rows.next_power_of_two();
        if row_stride > slots {
            return Err(Error::Unsupported(format!(
                "{rows} rows do not fit in {slots} slots"
            )));
        }
        let chunks = slots / row_stride;
        let n_cts = match order {
            ColumnOrder::Contiguous => cols.div_ceil(chunks),
            ColumnOrder::HeadInterleaved { heads, head_dim } => {
                if heads == 0 || heads.checked_mul(head_dim) != Some(cols) {
                    return Err(Error::DimensionMismatch {
                        what: "heads * head_dim vs columns",
                        expected: cols,
                        got: heads.saturating_mul(head_dim),
                    });
                }
                if heads > chunks {
                    return Err(Error::Unsupported(format!(
                        "{heads} heads do not fit in {chunks} chunks per ciphertext with {rows} rows"
                    )));
                }
                let hp = heads.next_power_of_two();
                if hp > chunks {
                    return Err(Error::Unsupported(format!(
                        "{heads} heads need {hp} chunks per ciphertext, only {chunks} available \
                         with {rows} rows"
                    )));
                }
                head_dim.div_ceil(chunks / hp)
            }
        };
        Ok(Self {
            slots,
            rows,
            row_stride,
            cols,
            chunks,
            n_cts,
            order,
        })
    }

    /// Slots per ciphertext.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Logical rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Rows padded to a power of two: the slot distance between neighbouring columns.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Logical columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Physical columns per ciphertext.
    pub fn chunks(&self) -> usize {
        self.chunks
    }
    /// Number of ciphertexts.
    pub fn n_cts(&self) -> usize {
        self.n_cts
    }
    /// Column order.
    pub fn order(&self) -> ColumnOrder {
        self.order
    }
    /// Number of physical columns (`n_cts * chunks`).
    pub fn phys_cols(&self) -> usize {
        self.n_cts * self.chunks
    }
    /// Padded head count and column groups per ciphertext `(H, g)` of a head-interleaved layout.
    pub fn head_groups(&self) -> Option<(usize, usize)> {
        match self.order {
            ColumnOrder::HeadInterleaved { heads, .. } => {
                let hp = heads.next_power_of_two();
                Some((hp, self.chunks / hp))
            }
            ColumnOrder::Contiguous => None,
        }
    }
    /// Physical column of logical column `c`.
    pub fn phys_col(&self, c: usize) -> usize {
        match self.order {
            ColumnOrder::Contiguous => c,
            ColumnOrder::HeadInterleaved { heads, head_dim } => {
                let hp = heads.next_power_of_two();
                let g = self.chunks / hp;
                let (h, i) = (c / head_dim, c % head_dim);
                (i / g) * self.chunks + (i % g) * hp + h
            }
        }
    }
    /// `(ciphertext, slot)` of entry `(row, col)`.
    pub fn position(&self, row: usize, col: usize) -> (usize, usize) {
        let p = self.phys_col(col);
        (p / self.chunks, (p % self.chunks) * self.row_stride + row)
    }
    /// Same shape, another column count and order (the row geometry is kept).
    pub fn with_cols(&self, cols: usize, order: ColumnOrder) -> Result<Self> {
        Self::new(self.slots, self.rows, cols, order)
    }

    /// Slot vectors (one per ciphertext) holding `m`; padding slots are zero.
    pub fn pack(&self, m: &Matrix) -> Result<Vec<Vec<f64>>> {
        if m.rows() != self.rows || m.cols() != self.cols {
            return Err(Error::DimensionMismatch {
                what: "matrix vs layout (rows*cols)",
                expected: self.rows * self.cols,
                got: m.rows() * m.cols(),
            });
        }
        let mut out = vec![vec![0.0; self.slots]; self.n_cts];
        for c in 0..self.cols {
            for t in 0..self.rows {
                let (ct, s) = self.position(t, c);
                out[ct][s] = m.get(t, c);
            }
        }
        Ok(out)
    }

    /// The matrix held by slot vectors laid out by `self` (padding slots are ignored).
    pub fn unpack(&self, slots: &[Vec<f64>]) -> Result<Matrix> {
        if slots.len() != self.n_cts {
            return Err(Error::DimensionMismatch {
                what: "ciphertext count",
                expected: self.n_cts,
                got: slots.len(),
            });
        }
        if let Some(v) = slots.iter().find(|v| v.len() < self.slots) {
            return Err(Error::DimensionMismatch {
                what: "slot vector length",
                expected: self.slots,
                got: v.len(),
            });
        }
        Ok(Matrix::from_fn(self.rows, self.cols, |t, c| {
            let (ct, s) = self.position(t, c);
            slots[ct][s]
        }))
    }
}

/// A matrix packed into ciphertexts by a [`Layout`].
#[derive(Debug, Clone)]
pub struct PackedMatrix<C> {
    layout: Layout,
    cts: Vec<C>,
}

impl<C> PackedMatrix<C> {
    /// Wraps ciphertexts that follow `layout`.
    pub fn new(layout: Layout, cts: Vec<C>) -> Result<Self> {
        if cts.len() != layout.n_cts() {
            return Err(Error::DimensionMismatch {
                what: "ciphertexts for layout",
                expected: layout.n_cts(),
                got: cts.len(),
            });
        }
        Ok(Self { layout, cts })
    }
    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The ciphertexts.
    pub fn cts(&self) -> &[C] {
        &self.cts
    }
    /// Consumes into the ciphertexts.
    pub fn into_cts(self) -> Vec<C> {
        self.cts
    }
}

/// Encrypts `m` by `layout` at `level` and the backend's default scale.
pub fn encrypt_matrix<B: SlotClient>(
    b: &B,
    m: &Matrix,
    layout: &Layout,
    level: usize,
) -> Result<PackedMatrix<B::Ct>> {
    check_slots(b, layout)?;
    let cts = layout
        .pack(m)?
        .iter()
        .map(|v| b.encrypt(v, level, b.default_scale()))
        .collect::<Result<Vec<_>>>()?;
    PackedMatrix::new(layout.clone(), cts)
}

/// Decrypts a packed matrix.
pub fn decrypt_matrix<B: SlotClient>(b: &B, x: &PackedMatrix<B::Ct>) -> Result<Matrix> {
    let slots = x
        .cts
        .iter()
        .map(|c| b.decrypt(c))
        .collect::<Result<Vec<_>>>()?;
    x.layout.unpack(&slots)
}

/// A plaintext matrix encoded once by a layout at a fixed level and scale (masks, biases).
#[derive(Debug)]
pub struct PlainMatrix<P> {
    layout: Layout,
    level: usize,
    scale: f64,
    pts: Vec<P>,
}

impl<P> PlainMatrix<P> {
    /// Encodes `m` by `layout` at `level` and `scale`.
    pub fn encode<B: SlotBackend<Pt = P>>(
        b: &B,
        m: &Matrix,
        layout: &Layout,
        level: usize,
        scale: f64,
    ) -> Result<Self> {
        check_slots(b, layout)?;
        let pts = layout
            .pack(m)?
            .iter()
            .map(|v| b.encode(v, level, scale))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layout: layout.clone(),
            level,
            scale,
            pts,
        })
    }
    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// Level of the encoding.
    pub fn level(&self) -> usize {
        self.level
    }
    /// Scale of the encoding.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// The plaintexts, one per ciphertext of the layout.
    pub fn pts(&self) -> &[P] {
        &self.pts
    }
    /// Bytes of the encoded plaintexts.
    pub fn heap_bytes(&self) -> usize
    where
        P: PlaintextSize,
    {
        self.pts.iter().map(|p| p.heap_bytes()).sum()
    }
}

pub(crate) fn check_slots<B: SlotBackend + ?Sized>(b: &B, layout: &Layout) -> Result<()> {
    if layout.slots() != b.slots() {
        return Err(Error::DimensionMismatch {
            what: "layout slots vs backend slots",
            expected: b.slots(),
            got: layout.slots(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_shapes_are_refused_without_wrapping() {
        // Rows above 2^63 would round up to 0; heads × head_dim can wrap to the width.
        assert!(Layout::new(1 << 13, (1 << 63) + 5, 8, ColumnOrder::Contiguous).is_err());
        let wrapping = ColumnOrder::HeadInterleaved {
            heads: 2,
            head_dim: (1 << 63) + 4,
        };
        assert!(Layout::new(1 << 13, 16, 8, wrapping).is_err());
        let many_heads = ColumnOrder::HeadInterleaved {
            heads: (1 << 63) + 1,
            head_dim: 1,
        };
        assert!(Layout::new(1 << 13, 16, (1 << 63) + 1, many_heads).is_err());
    }

    #[test]
    fn pack_round_trip_all_orders() {
        let m = Matrix::from_fn(5, 12, |i, j| (i * 100 + j) as f64);
        for order in [
            ColumnOrder::Contiguous,
            ColumnOrder::HeadInterleaved {
                heads: 3,
                head_dim: 4,
            },
        ] {
            let l = Layout::new(32, 5, 12, order).unwrap();
            assert_eq!(l.row_stride(), 8);
            assert_eq!(l.chunks(), 4);
            let packed = l.pack(&m).unwrap();
            assert_eq!(l.unpack(&packed).unwrap(), m);
            let mut seen = std::collections::HashSet::new();
            for c in 0..12 {
                assert!(seen.insert(l.phys_col(c)), "{order:?} col {c} collides");
            }
        }
        let hi = Layout::new(
            32,
            5,
            12,
            ColumnOrder::HeadInterleaved {
                heads: 3,
                head_dim: 4,
            },
        )
        .unwrap();
        // 4 padded heads per ciphertext, 1 group: one ciphertext per head feature.
        assert_eq!(hi.n_cts(), 4);
        assert_eq!(hi.phys_col(4 + 2), 2 * 4 + 1);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Layout::new(32, 33, 1, ColumnOrder::Contiguous).is_err());
        assert!(Layout::new(30, 3, 1, ColumnOrder::Contiguous).is_err());
        let hi = ColumnOrder::HeadInterleaved {
            heads: 5,
            head_dim: 2,
        };
        assert!(Layout::new(32, 8, 10, hi).is_err()); // 8 padded heads > 4 chunks
        assert!(Layout::new(64, 8, 11, hi).is_err()); // 5*2 != 11
        let l = Layout::new(16, 4, 4, ColumnOrder::Contiguous).unwrap();
        assert!(l.pack(&Matrix::zeros(4, 5)).is_err());
    }
}
