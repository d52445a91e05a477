//! `ai.lopper:BatchNormGrad(dY, X, scale, mean, var) → (dX, dscale, dbias)`: the backward of
//! a training-mode `BatchNormalization` that normalised X `[N, C, …]` with its batch mean and
//! biased variance, float32; attribute `epsilon` (default 1e-5). With `r = 1/√(var + ε)`,
//! sums over every axis but the channel and `m` elements per channel:
//! `dbias = ΣdY`, `dscale = r·(ΣdY·X − mean·ΣdY)`, and
//! `dX = scale·r·(dY − ΣdY/m − (X − mean)·r²·(ΣdY·X − mean·ΣdY)/m)`, the closed form of
//! the step compiler's standard rule (`ops::batch_norm`).
//!
//! Why a kernel of our own: the standard form takes six passes over the activation (two sums,
//! a product, an affine `BatchNormalization`, a product and a difference) and three
//! temporaries; this kernel takes two (one reading dY and X for the sums, one writing dX).
//! Channels run in parallel on ONNX Runtime's intra-op threads; each channel's sums are
//! taken in one fixed order (eight float32 lanes per stretch, stretches added in float64), so
//! the same inputs give the same bits.
//!
//! It does not handle inference-mode normalisation (fixed statistics: a different formula)
//! or other float types; the step compiler keeps the standard rule there.

use super::{dims, on_threads, ParallelFor, Shared};

/// The op's name in [`super::DOMAIN`].
pub const OP: &str = "BatchNormGrad";

/// X's layout: `n` images of `c` channels of `inner` elements each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Images (X axis 0).
    pub n: usize,
    /// Channels (X axis 1).
    pub c: usize,
    /// Elements per image and channel (the product of the axes after 1).
    pub inner: usize,
}

/// The gradients of one normalisation. `dx` has X's length; `dscale` and `dbias` one value
/// per channel. An error names the length that does not fit.
pub struct Grads<'a> {
    /// dX.
    pub dx: &'a mut [f32],
    /// dscale.
    pub dscale: &'a mut [f32],
    /// dbias.
    pub dbias: &'a mut [f32],
}

/// The inputs of one normalisation's backward.
pub struct Inputs<'a> {
    /// dY, X's layout.
    pub dy: &'a [f32],
    /// X.
    pub x: &'a [f32],
    /// The scale, per channel.
    pub scale: &'a [f32],
    /// The batch mean, per channel.
    pub mean: &'a [f32],
    /// The batch's biased variance, per channel.
    pub var: &'a [f32],
}

/// dX, dscale and dbias of `inp` (layout `l`, epsilon `eps`) into `out`; the channels run in
/// groups through `par`.
pub fn batch_norm_grad(
    l: &Layout,
    eps: f32,
    inp: &Inputs,
    out: &mut Grads,
    par: ParallelFor,
) -> Result<(), String> {
    let len = l.n * l.c * l.inner;
    let per_channel = [inp.scale.len(), inp.mean.len(), inp.var.len()];
    let lens = [inp.dy.len(), inp.x.len(), out.dx.len()];
    if lens.iter().any(|&v| v != len)
        || per_channel.iter().any(|&v| v != l.c)
        || out.dscale.len() != l.c
        || out.dbias.len() != l.c
    {
        return Err(format!(
            "dY, X, dX have {lens:?} elements and scale, mean, var {per_channel:?}: \
             expected {len} and {} for {l:?}",
            l.c
        ));
    }
    let m = (l.n * l.inner) as f64;
    if l.c == 0 || m == 0.0 {
        return Ok(());
    }
    let items = l.c.min(64);
    let (dx, ds, db) = (
        Shared(out.dx.as_mut_ptr()),
        Shared(out.dscale.as_mut_ptr()),
        Shared(out.dbias.as_mut_ptr()),
    );
    par(items, &|item: usize| {
        for ch in l.c * item / items..l.c * (item + 1) / items {
            let plane = |img: usize| (img * l.c + ch) * l.inner;
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for img in 0..l.n {
                let at = plane(img);
                let (a, b) = sums(&inp.dy[at..at + l.inner], &inp.x[at..at + l.inner]);
                sdy += a;
                sdyx += b;
            }
            let mu = f64::from(inp.mean[ch]);
            let r = 1.0 / (f64::from(inp.var[ch]) + f64::from(eps)).sqrt();
            let s = sdyx - mu * sdy;
            let a = f64::from(inp.scale[ch]) * r;
            // dX = a·dY − (k·X + e) with k = a·r²·S/m, e = a·ΣdY/m − mean·k.
            let k = a * r * r * s / m;
            let e = a * sdy / m - mu * k;
            let (a, k, e) = (a as f32, k as f32, e as f32);
            // SAFETY: channel `ch` belongs to this item alone: it writes its planes of dX and
            // its own dscale and dbias entries; the buffers outlive `par`.
            unsafe {
                *ds.at(ch) = (s * r) as f32;
                *db.at(ch) = sdy as f32;
            }
            for img in 0..l.n {
                let at = plane(img);
                let dst = unsafe { std::slice::from_raw_parts_mut(dx.at(at), l.inner) };
                let (g, x) = (&inp.dy[at..at + l.inner], &inp.x[at..at + l.inner]);
                for ((d, &g), &x) in dst.iter_mut().zip(g).zip(x) {
                    *d = a * g - (k * x + e);
                }
            }
        }
    });
    Ok(())
}

/// `(ΣdY, ΣdY·X)` of one stretch: eight float32 lanes (which the compiler vectorises), added
/// in float64 at the end.
fn sums(dy: &[f32], x: &[f32]) -> (f64, f64) {
    let (mut s, mut t) = ([0f32; 8], [0f32; 8]);
    let (gc, xc) = (dy.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (g, x) in gc.zip(xc) {
        for i in 0..8 {
            s[i] += g[i];
            t[i] += g[i] * x[i];
        }
    }
    for (i, (&g, &x)) in gr.iter().zip(xr).enumerate() {
        s[i] += g;
        t[i] += g * x;
    }
    let total = |v: [f32; 8]| v.iter().map(|&v| f64::from(v)).sum::<f64>();
    (total(s), total(t))
}

/// The ONNX Runtime binding: inputs dY, X (float32, rank ≥ 2, one shape), scale, mean and
/// var (float32, `[C]`); outputs dX (X's shape), dscale and dbias (`[C]`); attribute
/// `epsilon`.
pub struct Operator;

impl ort::operator::Operator for Operator {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        super::f32_inputs(5)
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        super::f32_outputs(3)
    }

    fn create_kernel<'attr>(
        &self,
        kctx: &ort::operator::KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let eps: f32 = kctx.get("epsilon").unwrap_or(1e-5);
        Ok(Box::new(move |ctx: &ort::operator::ComputeContext| {
            let fail = |msg: String| ort::Error::new(format!("BatchNormGrad: {msg}"));
            let input = |i: usize| {
                ctx.input(i)?
                    .ok_or_else(|| fail(format!("input {i} is missing")))
            };
            let (dy, x, scale, mean, var) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
            let (ys, dy) = dy.try_extract_tensor::<f32>()?;
            let (xs, x) = x.try_extract_tensor::<f32>()?;
            let (_, scale) = scale.try_extract_tensor::<f32>()?;
            let (_, mean) = mean.try_extract_tensor::<f32>()?;
            let (_, var) = var.try_extract_tensor::<f32>()?;
            let shape = dims(xs).filter(|s| s.len() >= 2 && ys == xs);
            let Some(shape) = shape else {
                return Err(fail(format!(
                    "dY {ys:?} and X {xs:?} must have one shape of rank 2 or more"
                )));
            };
            let l = Layout {
                n: shape[0],
                c: shape[1],
                inner: shape[2..].iter().product(),
            };
            let c = [l.c as i64];
            let no = || fail("an output is missing".into());
            let mut dx = ctx.output(0, xs.to_vec())?.ok_or_else(no)?;
            let mut dscale = ctx.output(1, c.to_vec())?.ok_or_else(no)?;
            let mut dbias = ctx.output(2, c.to_vec())?.ok_or_else(no)?;
            let mut grads = Grads {
                dx: dx.try_extract_tensor_mut::<f32>()?.1,
                dscale: dscale.try_extract_tensor_mut::<f32>()?.1,
                dbias: dbias.try_extract_tensor_mut::<f32>()?.1,
            };
            let inputs = Inputs {
                dy,
                x,
                scale,
                mean,
                var,
            };
            batch_norm_grad(&l, eps, &inputs, &mut grads, &|n, f| on_threads(ctx, n, f))
                .map_err(fail)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sequential;
    use super::*;

    fn data(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u32 << 24) as f32 - 0.5) * scale + shift
            })
            .collect()
    }

    /// The backward by its definition in f64: the normalised value's gradient through the
    /// batch mean and variance, term by term (not the closed form the kernel uses).
    fn reference(l: &Layout, eps: f64, dy: &[f32], x: &[f32], scale: &[f32]) -> Vec<Vec<f64>> {
        let m = (l.n * l.inner) as f64;
        let idx = |img: usize, ch: usize, i: usize| (img * l.c + ch) * l.inner + i;
        let (mut dx, mut ds, mut db) = (vec![0.0; x.len()], vec![0.0; l.c], vec![0.0; l.c]);
        for ch in 0..l.c {
            let each = || (0..l.n).flat_map(move |n| (0..l.inner).map(move |i| idx(n, ch, i)));
            let mu = each().map(|j| f64::from(x[j])).sum::<f64>() / m;
            let var = each().map(|j| (f64::from(x[j]) - mu).powi(2)).sum::<f64>() / m;
            let r = 1.0 / (var + eps).sqrt();
            let xhat = |j: usize| (f64::from(x[j]) - mu) * r;
            // dL/dxhat, then through xhat = (x − μ)·r with μ and var functions of x.
            let g = |j: usize| f64::from(dy[j]) * f64::from(scale[ch]);
            let sum_g = each().map(g).sum::<f64>();
            let sum_gx = each().map(|j| g(j) * xhat(j)).sum::<f64>();
            for j in each() {
                dx[j] = r * (g(j) - sum_g / m - xhat(j) * sum_gx / m);
            }
            ds[ch] = each().map(|j| f64::from(dy[j]) * xhat(j)).sum();
            db[ch] = each().map(|j| f64::from(dy[j])).sum();
        }
        vec![dx, ds, db]
    }

    fn check(l: Layout, items_cap: bool) {
        let len = l.n * l.c * l.inner;
        let (dy, x) = (data(len, 1, 2.0, 0.0), data(len, 2, 3.0, 0.7));
        let scale = data(l.c, 3, 1.0, 1.0);
        // The batch statistics, as the forward computed them (biased variance).
        let m = (l.n * l.inner) as f64;
        let (mut mean, mut var) = (vec![0f32; l.c], vec![0f32; l.c]);
        for ch in 0..l.c {
            let vals: Vec<f64> = (0..l.n)
                .flat_map(|n| (0..l.inner).map(move |i| (n * l.c + ch) * l.inner + i))
                .map(|j| f64::from(x[j]))
                .collect();
            let mu = vals.iter().sum::<f64>() / m;
            mean[ch] = mu as f32;
            var[ch] = (vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m) as f32;
        }
        let (mut dx, mut ds, mut db) = (vec![0f32; len], vec![0f32; l.c], vec![0f32; l.c]);
        let inp = Inputs {
            dy: &dy,
            x: &x,
            scale: &scale,
            mean: &mean,
            var: &var,
        };
        let mut out = Grads {
            dx: &mut dx,
            dscale: &mut ds,
            dbias: &mut db,
        };
        if items_cap {
            batch_norm_grad(&l, 1e-5, &inp, &mut out, &sequential).unwrap();
        } else {
            // Items in reverse order: the result may not depend on the order they run in.
            let rev = |n: usize, f: &(dyn Fn(usize) + Sync + Send)| (0..n).rev().for_each(f);
            batch_norm_grad(&l, 1e-5, &inp, &mut out, &rev).unwrap();
        }
        let want = reference(&l, 1e-5, &dy, &x, &scale);
        for (name, got, want) in [
            ("dX", &dx, &want[0]),
            ("dscale", &ds, &want[1]),
            ("dbias", &db, &want[2]),
        ] {
            let big = want.iter().fold(1e-3f64, |a, v| a.max(v.abs()));
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (f64::from(g) - w).abs() <= 2e-4 * big,
                    "{name}[{i}] = {g}, want {w} ({l:?})"
                );
            }
        }
    }

    #[test]
    fn matches_the_definition() {
        // Planes with and without an eight-lane tail, one image, more channels than items.
        for l in [
            Layout {
                n: 4,
                c: 3,
                inner: 64,
            },
            Layout {
                n: 3,
                c: 5,
                inner: 13,
            },
            Layout {
                n: 1,
                c: 2,
                inner: 7,
            },
            Layout {
                n: 2,
                c: 70,
                inner: 9,
            },
            Layout {
                n: 5,
                c: 4,
                inner: 1,
            },
        ] {
            check(l, true);
            check(l, false);
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let l = Layout {
            n: 2,
            c: 3,
            inner: 4,
        };
        let v = vec![0f32; 24];
        let c = vec![1f32; 3];
        let (mut dx, mut ds, mut db) = (vec![0f32; 24], vec![0f32; 3], vec![0f32; 2]);
        let inp = Inputs {
            dy: &v,
            x: &v,
            scale: &c,
            mean: &c,
            var: &c,
        };
        let mut out = Grads {
            dx: &mut dx,
            dscale: &mut ds,
            dbias: &mut db,
        };
        let err = batch_norm_grad(&l, 1e-5, &inp, &mut out, &sequential).unwrap_err();
        assert!(err.contains("expected 24 and 3"), "{err}");
    }
}
