//! The least-squares solver of [`super`]: normal equations accumulated in float64 and a
//! Cholesky solve (no LAPACK).

use super::*;

/// The normal equations of one layer: `A = XᵀX` (upper triangle, `d×d`), `B = XᵀY` (`d×m`),
/// `‖y_o‖²` per output, all in f64.
pub(super) struct Normal {
    pub(super) d: usize,
    pub(super) m: usize,
    pub(super) a: Vec<f64>,
    pub(super) b: Vec<f64>,
    pub(super) yy: Vec<f64>,
    pub(super) rows: usize,
}

impl Normal {
    pub(super) fn new(d: usize, m: usize) -> Normal {
        Normal {
            d,
            m,
            a: vec![0.0; d * d],
            b: vec![0.0; d * m],
            yy: vec![0.0; m],
            rows: 0,
        }
    }

    /// Adds one row `x` (length `d`) with targets `y` (length `m`).
    pub(super) fn add(&mut self, x: &[f64], y: &[f64]) {
        let (d, m) = (self.d, self.m);
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            let row = &mut self.a[i * d + i..(i + 1) * d];
            for (r, &xj) in row.iter_mut().zip(&x[i..]) {
                *r += xi * xj;
            }
            for (r, &yo) in self.b[i * m..(i + 1) * m].iter_mut().zip(y) {
                *r += xi * yo;
            }
        }
        for (s, &yo) in self.yy.iter_mut().zip(y) {
            *s += yo * yo;
        }
        self.rows += 1;
    }

    /// The ridge solution for inherited weights `w0` (`m` rows of `d`), with the relative
    /// residuals before and after.
    pub(super) fn solve(
        &mut self,
        w0: &[f64],
        lambda: f64,
        layer: &Layer,
    ) -> Result<(Vec<f64>, f64, f64)> {
        let (d, m) = (self.d, self.m);
        for i in 0..d {
            for j in 0..i {
                self.a[i * d + j] = self.a[j * d + i];
            }
        }
        let trace: f64 = (0..d).map(|i| self.a[i * d + i]).sum();
        let lam = if trace > 0.0 {
            lambda * trace / d as f64
        } else {
            1.0
        };
        let mut l = self.a.clone();
        for i in 0..d {
            l[i * d + i] += lam;
        }
        cholesky(&mut l, d).map_err(|i| {
            layer.err(format!(
                "the regularised normal equations are not positive definite (pivot {i} of {d}); raise lambda"
            ))
        })?;
        let mut w = vec![0.0; m * d];
        let mut rhs = vec![0.0; d];
        for o in 0..m {
            for i in 0..d {
                rhs[i] = self.b[i * m + o] + lam * w0[o * d + i];
            }
            solve_cholesky(&l, d, &mut rhs);
            w[o * d..(o + 1) * d].copy_from_slice(&rhs);
        }
        let total: f64 = self.yy.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let (before, after) = (self.residual(w0) / total, self.residual(&w) / total);
        if !w.iter().all(|v| v.is_finite()) {
            return Err(layer.err("the refitted weights are not finite"));
        }
        Ok((w, before, after))
    }

    /// `Σ_o ‖X w_o − y_o‖²` from the accumulated sums (`a` full).
    pub(super) fn residual(&self, w: &[f64]) -> f64 {
        let (d, m) = (self.d, self.m);
        let mut r = 0.0;
        for o in 0..m {
            let wo = &w[o * d..(o + 1) * d];
            let mut quad = 0.0;
            let mut lin = 0.0;
            for i in 0..d {
                let ai = &self.a[i * d..(i + 1) * d];
                quad += wo[i] * ai.iter().zip(wo).map(|(a, b)| a * b).sum::<f64>();
                lin += wo[i] * self.b[i * m + o];
            }
            r += (quad - 2.0 * lin + self.yy[o]).max(0.0);
        }
        r
    }
}

/// In-place Cholesky factorisation `M = L·Lᵀ` of a symmetric `d×d` matrix (row-major; `L`
/// ends in the lower triangle). Errors with the pivot index when `M` is not positive definite.
pub(super) fn cholesky(a: &mut [f64], d: usize) -> std::result::Result<(), usize> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(j);
        }
        let p = s.sqrt();
        a[j * d + j] = p;
        for i in j + 1..d {
            let (ri, rj) = (i * d, j * d);
            let mut s = a[ri + j];
            for k in 0..j {
                s -= a[ri + k] * a[rj + k];
            }
            a[ri + j] = s / p;
        }
    }
    Ok(())
}

/// Solves `L·Lᵀ x = b` in place (`l` from [`cholesky`]).
pub(super) fn solve_cholesky(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= l[k * d + i] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
}
