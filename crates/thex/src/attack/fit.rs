//! Least-squares fits of what a client decrypts against what it encrypted: linear maps
//! `U ≈ X·B` and bilinear forms `Y_q ≈ X_q·M·X_qᵀ`, in whitened coordinates of the inputs.
//!
//! Inputs carry a trailing 1 (so biases are fitted with the weights). Only the span of the
//! observed inputs is identifiable (layer-1 inputs are LayerNorm outputs, which lie in a
//! hyperplane): the bilinear fit returns the component on that span, orthogonal to the rest.

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};

/// Eigenvalues below this fraction of the largest are treated as outside the inputs' span
/// (the LayerNorm hyperplane of layer inputs holds to single precision, not exactly).
const RANK_TOLERANCE: f64 = 1e-9;
/// The same for the column-scaled inputs of a linear fit: only numerically null directions are
/// dropped, since a well-scaled residual stream can still be strongly correlated.
const LINEAR_RANK_TOLERANCE: f64 = 1e-13;

/// Maps inputs `x` (`N × p`) to coordinates where their second moment is the identity on
/// their span: `x' = x·W` with `W = V_k Λ_k^{-1/2}` (`p × k`).
#[derive(Debug)]
pub struct Whitening {
    /// `V_k Λ_k^{-1/2}`.
    w: Tensor,
    /// `V_k Λ_k^{1/2}` (`W·Sᵀ` is the projector `V_k V_kᵀ` onto the span).
    #[cfg(test)]
    s: Tensor,
}

impl Whitening {
    /// From the rows of `x` (`N × p`, `f64`).
    pub fn of(x: &Tensor) -> Result<Self> {
        Self::with_tolerance(x, RANK_TOLERANCE)
    }

    /// From the rows of `x`, dropping eigenvalues below `tolerance` times the largest.
    fn with_tolerance(x: &Tensor, tolerance: f64) -> Result<Self> {
        let (n, p) = x.dims2()?;
        if n == 0 {
            bail!("no observations to fit");
        }
        let gram = (x.t()?.matmul(x)? / n as f64)?;
        let (values, vectors) = symmetric_eigen(&gram.to_vec2::<f64>()?);
        let max = values.iter().copied().fold(0f64, f64::max);
        let keep: Vec<usize> = (0..p).filter(|&i| values[i] > tolerance * max).collect();
        if keep.is_empty() {
            bail!("the inputs are all zero");
        }
        let col = |f: &dyn Fn(f64) -> f64| {
            let data: Vec<f64> = (0..p)
                .flat_map(|r| keep.iter().map(move |&i| (r, i)))
                .map(|(r, i)| vectors[r][i] * f(values[i]))
                .collect();
            Tensor::from_vec(data, (p, keep.len()), &Device::Cpu)
        };
        Ok(Self {
            w: col(&|l| 1.0 / l.sqrt())?,
            #[cfg(test)]
            s: col(&|l| l.sqrt())?,
        })
    }

    /// Dimension of the inputs' span.
    pub fn rank(&self) -> usize {
        self.w.dims()[1]
    }

    /// `x·W`: whitened inputs.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_matmul(&self.w)?)
    }
}

/// The least-squares `B` (`p × c`) with `U ≈ X·B`. The columns of `X` are scaled to unit RMS
/// first, so the rank test compares directions rather than units (a residual stream of
/// magnitude 1e5 next to the bias input 1 is well determined, not rank-deficient); where `X`
/// is rank-deficient, `B` is the minimum-norm solution in those scaled coordinates.
pub fn fit_linear(x: &Tensor, u: &Tensor) -> Result<Tensor> {
    let n = x.dims2()?.0 as f64;
    let rms = (x.sqr()?.sum_keepdim(0)? / n)?.sqrt()?;
    // An all-zero column stays zero (and is dropped by the rank test).
    let rms = rms.maximum(f64::MIN_POSITIVE)?;
    let scaled = x.broadcast_div(&rms)?;
    let white = Whitening::with_tolerance(&scaled, LINEAR_RANK_TOLERANCE)?;
    let xw = white.apply(&scaled)?;
    // The whitened Gram matrix is N·I, so the normal equations solve in one product.
    let coef = (xw.t()?.matmul(u)? / n)?;
    Ok(white.w.matmul(&coef)?.broadcast_div(&rms.t()?)?)
}

/// How a bilinear fit converged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// Conjugate-gradient iterations run.
    pub iterations: usize,
    /// Largest relative residual of the normal equations over the forms.
    pub residual: f64,
}

/// Per form `h`, the least-squares `M_h` (`p × p`) with `Y[h, q] ≈ X[q]·M_h·X[q]ᵀ`: `x` is
/// `Q × n × p`, `y` is `H × Q × n × n`. Conjugate gradients on the normal equations in
/// whitened coordinates, until the relative residual is below `tolerance`.
pub fn fit_bilinear(
    x: &Tensor,
    y: &Tensor,
    tolerance: f64,
    max_iterations: usize,
) -> Result<(Tensor, Convergence)> {
    let (q, n, p) = x.dims3()?;
    let h = y.dims4()?.0;
    let white = Whitening::of(&x.reshape((q * n, p))?)?;
    let xw = white.apply(x)?.contiguous()?;
    let k = white.rank();
    let op = NormalOperator::new(&xw, h)?;
    let b = op.adjoint(y)?;
    let dot = |a: &Tensor, c: &Tensor| -> Result<Tensor> {
        Ok((a * c)?.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?)
    };
    let mut m = Tensor::zeros((h, k, k), DType::F64, &Device::Cpu)?;
    let mut r = b.clone();
    let mut dir = r.clone();
    let mut rr = dot(&r, &r)?;
    let bb: Vec<f64> = rr.flatten_all()?.to_vec1()?;
    let mut convergence = Convergence {
        iterations: 0,
        residual: 1.0,
    };
    for it in 1..=max_iterations {
        let a_dir = op.apply(&dir)?;
        let alpha = rr.broadcast_div(&dot(&dir, &a_dir)?.maximum(f64::MIN_POSITIVE)?)?;
        m = (m + dir.broadcast_mul(&alpha)?)?;
        r = (r - a_dir.broadcast_mul(&alpha)?)?;
        let rr_next = dot(&r, &r)?;
        let ratios: Vec<f64> = rr_next.flatten_all()?.to_vec1()?;
        convergence = Convergence {
            iterations: it,
            residual: ratios
                .iter()
                .zip(&bb)
                .map(|(r, b)| if *b > 0.0 { (r / b).sqrt() } else { 0.0 })
                .fold(0.0, f64::max),
        };
        if convergence.residual < tolerance {
            break;
        }
        let beta = rr_next.broadcast_div(&rr.maximum(f64::MIN_POSITIVE)?)?;
        dir = (&r + dir.broadcast_mul(&beta)?)?;
        rr = rr_next;
    }
    // Back from whitened coordinates: M = W·M'·Wᵀ.
    let w = white.w.unsqueeze(0)?;
    let m = w
        .broadcast_matmul(&m)?
        .broadcast_matmul(&w.transpose(1, 2)?)?;
    Ok((m, convergence))
}

/// `M ↦ Σ_q X_qᵀ·(X_q·M·X_qᵀ)·X_q` on `H` forms at once, and its right-hand side.
struct NormalOperator {
    /// `Q × n × k`.
    xq: Tensor,
    /// `1 × Q × k × n`.
    xq_t: Tensor,
    /// `1 × Qn × k`.
    all: Tensor,
    /// `1 × k × Qn`.
    all_t: Tensor,
    forms: usize,
}

impl NormalOperator {
    fn new(xq: &Tensor, forms: usize) -> Result<Self> {
        let (q, n, k) = xq.dims3()?;
        let all = xq.reshape((1, q * n, k))?;
        Ok(Self {
            xq_t: xq.transpose(1, 2)?.contiguous()?.unsqueeze(0)?,
            all_t: all.transpose(1, 2)?.contiguous()?,
            all,
            xq: xq.clone(),
            forms,
        })
    }

    /// `Σ_q X_qᵀ·R_q·X_q` for `r`: `H × Q × n × n`.
    fn adjoint(&self, r: &Tensor) -> Result<Tensor> {
        let (q, n, k) = self.xq.dims3()?;
        let rx = r
            .broadcast_matmul(&self.xq.unsqueeze(0)?)
            .context("R·X")?
            .reshape((self.forms, q * n, k))?;
        Ok(self.all_t.broadcast_matmul(&rx)?)
    }

    fn apply(&self, m: &Tensor) -> Result<Tensor> {
        let (q, n, k) = self.xq.dims3()?;
        let xm = self
            .all
            .broadcast_matmul(m)
            .context("X·M")?
            .reshape((self.forms, q, n, k))?;
        self.adjoint(&xm.broadcast_matmul(&self.xq_t)?)
    }
}

/// Eigenvalues and eigenvectors (as columns: `vectors[row][i]` for eigenvalue `i`) of a
/// symmetric matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let p = a.len();
    let mut a = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..p)
        .map(|i| (0..p).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let norm: f64 = a.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..60 {
        let off: f64 = (0..p)
            .flat_map(|i| (0..p).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm {
            break;
        }
        for i in 0..p {
            for j in i + 1..p {
                let aij = a[i][j];
                if aij.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[j][j] - a[i][i]) / (2.0 * aij);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (x, y) = (row[i], row[j]);
                    row[i] = c * x - s * y;
                    row[j] = s * x + c * y;
                }
                let (ri, rj) = (a[i].clone(), a[j].clone());
                for col in 0..p {
                    a[i][col] = c * ri[col] - s * rj[col];
                    a[j][col] = s * ri[col] + c * rj[col];
                }
                for row in v.iter_mut() {
                    let (x, y) = (row[i], row[j]);
                    row[i] = c * x - s * y;
                    row[j] = s * x + c * y;
                }
            }
        }
    }
    ((0..p).map(|i| a[i][i]).collect(), v)
}

/// `‖got − want‖_F / ‖want‖_F`.
pub fn relative_error(got: &Tensor, want: &Tensor) -> Result<f64> {
    let diff = (got - want)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let norm = want.sqr()?.sum_all()?.to_scalar::<f64>()?;
    if norm == 0.0 {
        bail!("the reference matrix is zero");
    }
    Ok((diff / norm).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    impl Whitening {
        /// The component of `b` (`p × c`) that acts on the inputs' span: `P·b`.
        fn project(&self, b: &Tensor) -> Result<Tensor> {
            Ok(self.w.matmul(&self.s.t()?.matmul(b)?)?)
        }
    }

    fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Rows in a hyperplane (their coordinates sum to zero) with a trailing 1, like
    /// LayerNorm outputs with a bias input.
    fn hyperplane_rows(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> Tensor {
        let data: Vec<f64> = (0..rows)
            .flat_map(|_| {
                let mut r: Vec<f64> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let mean = r.iter().sum::<f64>() / dim as f64;
                r.iter_mut().for_each(|x| *x -= mean);
                r.push(1.0);
                r
            })
            .collect();
        Tensor::from_vec(data, (rows, dim + 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let b = random(&mut rng, &[7, 7]);
        let a = b.t().unwrap().matmul(&b).unwrap().to_vec2::<f64>().unwrap();
        let (values, vectors) = symmetric_eigen(&a);
        for i in 0..7 {
            for j in 0..7 {
                let back: f64 = (0..7)
                    .map(|k| vectors[i][k] * values[k] * vectors[j][k])
                    .sum();
                assert!((back - a[i][j]).abs() < 1e-10, "{back} vs {}", a[i][j]);
            }
        }
    }

    #[test]
    fn linear_fit_reproduces_the_map_on_the_inputs_span() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = hyperplane_rows(&mut rng, 200, 12);
        let b = random(&mut rng, &[13, 5]);
        let u = x.matmul(&b).unwrap();
        let fitted = fit_linear(&x, &u).unwrap();
        assert_eq!(
            Whitening::of(&x).unwrap().rank(),
            12,
            "one direction is outside the hyperplane"
        );
        assert!(relative_error(&x.matmul(&fitted).unwrap(), &u).unwrap() < 1e-9);
        // The whole map is not identifiable, and the fit does not pretend it is.
        assert!(relative_error(&fitted, &b).unwrap() > 1e-3);
    }

    #[test]
    fn linear_fit_recovers_a_bias_next_to_large_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (rows, dim) = (300, 10);
        let data: Vec<f64> = (0..rows)
            .flat_map(|_| {
                let mut r: Vec<f64> = (0..dim).map(|_| 1e8 * rng.gen_range(-1.0..1.0)).collect();
                r.push(1.0);
                r
            })
            .collect();
        let x = Tensor::from_vec(data, (rows, dim + 1), &Device::Cpu).unwrap();
        // Unscaled, the bias input falls below the rank tolerance.
        assert!(Whitening::of(&x).unwrap().rank() < dim + 1);
        let b = random(&mut rng, &[dim + 1, 4]);
        let u = x.matmul(&b).unwrap();
        let fitted = fit_linear(&x, &u).unwrap();
        let bias = |m: &Tensor| m.narrow(0, dim, 1).unwrap();
        assert!(relative_error(&bias(&fitted), &bias(&b)).unwrap() < 1e-6);
        assert!(relative_error(&fitted, &b).unwrap() < 1e-6);
    }

    #[test]
    fn bilinear_fit_recovers_every_form() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (q, n, dim, forms) = (12, 8, 9, 3);
        let x = hyperplane_rows(&mut rng, q * n, dim)
            .reshape((q, n, dim + 1))
            .unwrap();
        let m = random(&mut rng, &[forms, dim + 1, dim + 1]);
        let y = x
            .unsqueeze(0)
            .unwrap()
            .broadcast_matmul(&m.unsqueeze(1).unwrap())
            .unwrap()
            .broadcast_matmul(&x.transpose(1, 2).unwrap().unsqueeze(0).unwrap())
            .unwrap();
        let (fitted, conv) = fit_bilinear(&x, &y, 1e-12, 500).unwrap();
        assert!(conv.residual < 1e-12, "{conv:?}");
        let white = Whitening::of(&x.reshape((q * n, dim + 1)).unwrap()).unwrap();
        for f in 0..forms {
            let mf = m.get(f).unwrap();
            let want = white
                .project(&white.project(&mf).unwrap().t().unwrap())
                .unwrap()
                .t()
                .unwrap();
            let got = fitted.get(f).unwrap();
            let err = relative_error(&got, &want).unwrap();
            assert!(err < 1e-8, "form {f}: {err}");
        }
    }
}
