//! A small dense row-major `f64` matrix, the cleartext counterpart of [`crate::PackedMatrix`].

use crate::error::{Error, Result};

/// Dense row-major matrix of `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    /// A matrix from row-major data (`data.len() == rows * cols`).
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::DimensionMismatch {
                what: "matrix data length",
                expected: rows * cols,
                got: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }
    /// The all-zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    /// A matrix with entry `(i, j) = f(i, j)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row-major entries.
    pub fn data(&self) -> &[f64] {
        &self.data
    }
    /// Entry `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }
    /// Sets entry `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }
    /// Matrix product `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Matrix> {
        if self.cols != other.rows {
            return Err(Error::DimensionMismatch {
                what: "matmul inner dimension",
                expected: self.cols,
                got: other.rows,
            });
        }
        let mut out = Matrix::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.get(i, k);
                if a == 0.0 {
                    continue;
                }
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                let dst = &mut out.data[i * other.cols..(i + 1) * other.cols];
                dst.iter_mut().zip(row).for_each(|(d, b)| *d += a * b);
            }
        }
        Ok(out)
    }
    /// Transpose.
    pub fn transpose(&self) -> Matrix {
        Matrix::from_fn(self.cols, self.rows, |i, j| self.get(j, i))
    }
    /// Columns `start..start + len` as a new matrix.
    pub fn columns(&self, start: usize, len: usize) -> Matrix {
        Matrix::from_fn(self.rows, len, |i, j| self.get(i, start + j))
    }
    /// Applies `f` to every entry.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Matrix {
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }
    /// Largest absolute entry.
    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0, |m, x| m.max(x.abs()))
    }
}

/// Bits of precision of `got` against `want`, relative to the magnitude of `want`:
/// `-log2(max |got - want| / max |want|)` (capped at 60).
pub fn precision_bits(got: &Matrix, want: &Matrix) -> Result<f64> {
    if got.rows != want.rows || got.cols != want.cols {
        return Err(Error::DimensionMismatch {
            what: "precision: shapes (rows*cols)",
            expected: want.rows * want.cols,
            got: got.rows * got.cols,
        });
    }
    let err = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let mag = want.max_abs().max(f64::MIN_POSITIVE);
    Ok((-(err / mag).log2()).min(60.0))
}
