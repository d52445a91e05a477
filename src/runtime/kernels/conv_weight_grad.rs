//! `ai.lopper:ConvWeightGrad(X, dY) → dW`: the weight gradient of an ungrouped 2-D
//! convolution with unit strides and dilations, `dW[m, c, i, j] = Σₙ,ₕ,ᵥ dY[n, m, h, v] ·
//! X[n, c, h + i − pad_top, v + j − pad_left]` (terms outside X are zero), float32.
//! Attributes: `kernel_shape` `[kh, kw]`, `pads` `[top, left, bottom, right]`; the output size
//! follows from them (`dY` must have it).
//!
//! Why a kernel of our own: with standard ops the step must copy X or dY once per kernel row
//! or column (ONNX Runtime has no strided views) and run many small products; this kernel
//! reads the windows in place. On the AVX2 machine it computes ResNet-56's 3×3 weight
//! gradients in about half the time of that graph (see the README's training section). Each
//! work item sums a range of images into its own partial `dW` (no atomics, the same order for
//! the same item count: runs are deterministic); the items run on ONNX Runtime's intra-op
//! threads. Rows of X are copied once with their left and right zero columns when the pads
//! ask for them; rows above and below X are skipped, not padded.
//!
//! It does not handle strides, dilations, groups, other ranks or types: the step compiler
//! only emits it where [`Window::supported`] holds and keeps standard ops elsewhere.

use std::sync::Mutex;

use super::{dims, on_threads, ParallelFor, Shared};

/// The op's name in [`super::DOMAIN`].
pub const OP: &str = "ConvWeightGrad";

/// The geometry of one weight gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Images.
    pub n: usize,
    /// Input channels (X axis 1).
    pub c: usize,
    /// Output channels (dY axis 1).
    pub m: usize,
    /// X's height and width.
    pub h: usize,
    /// X's width.
    pub w: usize,
    /// Kernel height and width.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Pads: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Window {
    /// dY's height and width, `None` when the kernel does not fit the padded input.
    pub fn output(&self) -> Option<(usize, usize)> {
        let [t, l, b, r] = self.pads;
        let (hp, wp) = (self.h + t + b, self.w + l + r);
        (self.kh >= 1 && self.kw >= 1 && hp >= self.kh && wp >= self.kw)
            .then(|| (hp + 1 - self.kh, wp + 1 - self.kw))
    }

    /// Whether the kernel covers this geometry: a window that fits, pads smaller than the
    /// kernel (no output row or column made of padding alone).
    pub fn supported(&self) -> bool {
        let [t, l, b, r] = self.pads;
        self.output().is_some()
            && t < self.kh
            && b < self.kh
            && l < self.kw
            && r < self.kw
            && self.n > 0
            && self.c > 0
            && self.m > 0
    }

    /// Elements of X, dY and dW.
    fn sizes(&self) -> Option<(usize, usize, usize)> {
        let (ho, wo) = self.output()?;
        Some((
            self.n * self.c * self.h * self.w,
            self.n * self.m * ho * wo,
            self.m * self.c * self.kh * self.kw,
        ))
    }

    /// The width of X's rows as the kernel reads them (with the left and right pads).
    fn row(&self) -> usize {
        self.w + self.pads[1] + self.pads[3]
    }
}

/// Scratch for X with padded rows, shared by calls (one step's layers run one at a time); a
/// call that finds it busy allocates its own.
static SCRATCH: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// dW `[M, C, kh, kw]` of X `[N, C, H, W]` and dY `[N, M, Ho, Wo]`; `items` work items
/// (each a range of images) run through `par`. An error names the size that does not fit.
pub fn weight_grad(
    win: &Window,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    items: usize,
    par: ParallelFor,
) -> Result<(), String> {
    if !win.supported() {
        return Err(format!("geometry {win:?} is not covered"));
    }
    let (nx, ndy, ndw) = win.sizes().ok_or("the kernel does not fit the input")?;
    if x.len() != nx || dy.len() != ndy || dw.len() != ndw {
        return Err(format!(
            "X has {} elements, dY {}, dW {}: expected {nx}, {ndy}, {ndw} for {win:?}",
            x.len(),
            dy.len(),
            dw.len()
        ));
    }
    let items = items.clamp(1, win.n);
    let padded = win.pads[1] + win.pads[3] > 0;
    let mut guard = SCRATCH.try_lock().ok();
    let mut own = Vec::new();
    let xp: &mut Vec<f32> = match guard.as_deref_mut() {
        Some(s) => s,
        None => &mut own,
    };
    let per_image = win.c * win.h * win.row();
    if padded && xp.len() < win.n * per_image {
        xp.resize(win.n * per_image, 0.0);
    }
    let mut parts = vec![0f32; items * ndw];
    {
        let xp_ptr = Shared(xp.as_mut_ptr());
        let parts_ptr = Shared(parts.as_mut_ptr());
        let work = |item: usize| {
            let (n0, n1) = (win.n * item / items, win.n * (item + 1) / items);
            // SAFETY: item `item` writes only images n0..n1 of the scratch and its own part;
            // the buffers outlive `par`, which returns after every item has run.
            let part = unsafe { std::slice::from_raw_parts_mut(parts_ptr.at(item * ndw), ndw) };
            part.fill(0.0);
            let rows: &[f32] = if padded {
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(xp_ptr.at(n0 * per_image), (n1 - n0) * per_image)
                };
                pad_rows(
                    win,
                    &x[n0 * win.c * win.h * win.w..n1 * win.c * win.h * win.w],
                    dst,
                );
                dst
            } else {
                &x[n0 * per_image..n1 * per_image]
            };
            let (ho, wo) = win.output().unwrap_or((0, 0));
            let dy = &dy[n0 * win.m * ho * wo..n1 * win.m * ho * wo];
            accumulate(win, rows, dy, n1 - n0, part);
        };
        par(items, &work);
    }
    dw.fill(0.0);
    for part in parts.chunks_exact(ndw) {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
    Ok(())
}

/// X's rows with `pads[1]` zeros before and `pads[3]` after each.
fn pad_rows(win: &Window, x: &[f32], dst: &mut [f32]) {
    let (l, wp) = (win.pads[1], win.row());
    for (src, d) in x.chunks_exact(win.w).zip(dst.chunks_exact_mut(wp)) {
        d[..l].fill(0.0);
        d[l..l + win.w].copy_from_slice(src);
        d[l + win.w..].fill(0.0);
    }
}

/// Adds the contribution of `imgs` images (X rows `xr` `[imgs, C, H, row]`, dY `[imgs, M, Ho,
/// Wo]`) to `part`.
fn accumulate(win: &Window, xr: &[f32], dy: &[f32], imgs: usize, part: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if accelerated() {
        // SAFETY: AVX2 and FMA are present; `avx2::accumulate` reads inside the slices.
        unsafe { avx2::accumulate(win, xr, dy, imgs, part) };
        return;
    }
    portable(win, xr, dy, imgs, part);
}

/// Whether this CPU runs the vectorised kernel (x86-64 with AVX2 and FMA); elsewhere a
/// portable loop computes the same sums, slowly, so the step compiler does not emit the op.
pub fn accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The rows of output `h0..h1` whose input row `h + i − top` lies inside X.
fn rows_for(win: &Window, ho: usize, i: usize) -> (usize, usize) {
    let top = win.pads[0];
    let h0 = top.saturating_sub(i);
    let h1 = (win.h + top).saturating_sub(i).min(ho);
    (h0, h1.max(h0))
}

/// The same sums without SIMD.
fn portable(win: &Window, xr: &[f32], dy: &[f32], imgs: usize, part: &mut [f32]) {
    let Some((ho, wo)) = win.output() else { return };
    let (row, top) = (win.row(), win.pads[0]);
    for n in 0..imgs {
        for m in 0..win.m {
            let g = &dy[(n * win.m + m) * ho * wo..][..ho * wo];
            for c in 0..win.c {
                let xc = &xr[(n * win.c + c) * win.h * row..][..win.h * row];
                for i in 0..win.kh {
                    let (h0, h1) = rows_for(win, ho, i);
                    for j in 0..win.kw {
                        let mut s = 0f32;
                        for h in h0..h1 {
                            let gr = &g[h * wo..][..wo];
                            let xrow = &xc[(h + i - top) * row + j..][..wo];
                            s += gr.iter().zip(xrow).map(|(a, b)| a * b).sum::<f32>();
                        }
                        part[((m * win.c + c) * win.kh + i) * win.kw + j] += s;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// The tile loops index fixed-size register arrays by constant bounds: the compiler unrolls
// them into named registers, which iterator chains over `acc` would obscure.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    //! 2 output channels × 2 input channels × up to 3 taps of one kernel row per tile: 12
    //! accumulators, 2 dY and 6 X loads per 12 FMAs, no register spills. Images are taken
    //! in groups that fit the L2 cache.
    use super::{rows_for, Window};
    use std::arch::x86_64::*;

    /// Tile results: `[m][c][tap]`.
    type Out = [[[f32; 3]; 2]; 2];

    /// Where one tile reads.
    struct Tile {
        /// dY row `h0` of channel m0 of the first image; channel rows `sa` apart.
        a: *const f32,
        sa: usize,
        /// X row of channel c0 for that row and tap j0; channel rows `sb` apart.
        b: *const f32,
        sb: usize,
        /// Output rows, their width, X's row width.
        rows: usize,
        wo: usize,
        row: usize,
        /// Images and their strides in dY and X.
        imgs: usize,
        ai: usize,
        bi: usize,
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Lanes below `n` set.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mask(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const MT: usize, const CT: usize, const TT: usize>(t: &Tile, out: &mut Out) {
        let mut acc = [[[_mm256_setzero_ps(); TT]; CT]; MT];
        let full = t.wo / 8 * 8;
        let tail = mask(t.wo - full);
        for im in 0..t.imgs {
            for r in 0..t.rows {
                let (ar, br) = (
                    t.a.add(im * t.ai + r * t.wo),
                    t.b.add(im * t.bi + r * t.row),
                );
                let mut k = 0;
                while k < full {
                    let mut av = [_mm256_setzero_ps(); MT];
                    for (mi, v) in av.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(ar.add(mi * t.sa + k));
                    }
                    for ci in 0..CT {
                        for ti in 0..TT {
                            let bv = _mm256_loadu_ps(br.add(ci * t.sb + k + ti));
                            for mi in 0..MT {
                                acc[mi][ci][ti] = _mm256_fmadd_ps(av[mi], bv, acc[mi][ci][ti]);
                            }
                        }
                    }
                    k += 8;
                }
                if full < t.wo {
                    let mut av = [_mm256_setzero_ps(); MT];
                    for (mi, v) in av.iter_mut().enumerate() {
                        *v = _mm256_maskload_ps(ar.add(mi * t.sa + k), tail);
                    }
                    for ci in 0..CT {
                        for ti in 0..TT {
                            let bv = _mm256_maskload_ps(br.add(ci * t.sb + k + ti), tail);
                            for mi in 0..MT {
                                acc[mi][ci][ti] = _mm256_fmadd_ps(av[mi], bv, acc[mi][ci][ti]);
                            }
                        }
                    }
                }
            }
        }
        for mi in 0..MT {
            for ci in 0..CT {
                for ti in 0..TT {
                    out[mi][ci][ti] = hsum(acc[mi][ci][ti]);
                }
            }
        }
    }

    /// See [`super::accumulate`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate(
        win: &Window,
        xr: &[f32],
        dy: &[f32],
        imgs: usize,
        part: &mut [f32],
    ) {
        let Some((ho, wo)) = win.output() else { return };
        let row = win.row();
        let (ai, bi) = (win.m * ho * wo, win.c * win.h * row);
        let group = (192 * 1024 / ((ai + bi) * 4)).max(1);
        let mut out: Out = [[[0.0; 3]; 2]; 2];
        let mut n0 = 0;
        while n0 < imgs {
            let n1 = (n0 + group).min(imgs);
            for i in 0..win.kh {
                let (h0, h1) = rows_for(win, ho, i);
                if h0 == h1 {
                    continue;
                }
                let xrow = h0 + i - win.pads[0];
                let mut j0 = 0;
                while j0 < win.kw {
                    let tt = (win.kw - j0).min(3);
                    let mut m0 = 0;
                    while m0 < win.m {
                        let mt = (win.m - m0).min(2);
                        let mut c0 = 0;
                        while c0 < win.c {
                            let ct = (win.c - c0).min(2);
                            let t = Tile {
                                a: dy.as_ptr().add(((n0 * win.m + m0) * ho + h0) * wo),
                                sa: ho * wo,
                                b: xr
                                    .as_ptr()
                                    .add(((n0 * win.c + c0) * win.h + xrow) * row + j0),
                                sb: win.h * row,
                                rows: h1 - h0,
                                wo,
                                row,
                                imgs: n1 - n0,
                                ai,
                                bi,
                            };
                            macro_rules! dispatch {
                                ($($p:literal $q:literal $r:literal),*) => {
                                    match (mt, ct, tt) {
                                        $(($p, $q, $r) => tile::<$p, $q, $r>(&t, &mut out),)*
                                        _ => unreachable!("tiles are at most 2 × 2 × 3"),
                                    }
                                };
                            }
                            dispatch!(2 2 3, 2 2 2, 2 2 1, 2 1 3, 2 1 2, 2 1 1,
                                      1 2 3, 1 2 2, 1 2 1, 1 1 3, 1 1 2, 1 1 1);
                            for (mi, om) in out.iter().enumerate().take(mt) {
                                for (ci, oc) in om.iter().enumerate().take(ct) {
                                    let base =
                                        (((m0 + mi) * win.c + c0 + ci) * win.kh + i) * win.kw;
                                    for (ti, v) in oc.iter().enumerate().take(tt) {
                                        part[base + j0 + ti] += v;
                                    }
                                }
                            }
                            c0 += ct;
                        }
                        m0 += mt;
                    }
                    j0 += tt;
                }
            }
            n0 = n1;
        }
    }
}

/// The ONNX Runtime binding: inputs X and dY (float32, rank 4), output dW; attributes
/// `kernel_shape` and `pads` as in the module doc. Work items: twice the intra-op threads'
/// usual count on a small machine (16), capped by the images.
pub struct Operator;

impl ort::operator::Operator for Operator {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        super::f32_inputs(2)
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        super::f32_outputs(1)
    }

    fn create_kernel<'attr>(
        &self,
        kctx: &ort::operator::KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let kernel: Vec<i64> = kctx
            .get("kernel_shape")
            .ok_or_else(|| ort::Error::new("ConvWeightGrad needs kernel_shape"))?;
        let pads: Vec<i64> = kctx.get("pads").unwrap_or_else(|| vec![0; 4]);
        let (kh, kw, pads) = match (&kernel[..], &pads[..]) {
            (&[kh, kw], &[t, l, b, r]) if kh > 0 && kw > 0 && t.min(l).min(b).min(r) >= 0 => {
                (kh as usize, kw as usize, [t, l, b, r].map(|p| p as usize))
            }
            _ => {
                return Err(ort::Error::new(format!(
                    "ConvWeightGrad: kernel_shape {kernel:?} and pads {pads:?} are not a 2-D window"
                )))
            }
        };
        Ok(Box::new(move |ctx: &ort::operator::ComputeContext| {
            let missing = || ort::Error::new("ConvWeightGrad: an input is missing");
            let x = ctx.input(0)?.ok_or_else(missing)?;
            let dy = ctx.input(1)?.ok_or_else(missing)?;
            let (xs, x) = x.try_extract_tensor::<f32>()?;
            let (ys, dy) = dy.try_extract_tensor::<f32>()?;
            let rank4 = |s: &[i64]| -> Option<[usize; 4]> { dims(s)?.try_into().ok() };
            let (Some([n, c, h, w]), Some([n2, m, _, _])) = (rank4(xs), rank4(ys)) else {
                return Err(ort::Error::new("ConvWeightGrad: X and dY must be rank 4"));
            };
            let win = Window {
                n,
                c,
                m,
                h,
                w,
                kh,
                kw,
                pads,
            };
            if n2 != n || win.output() != Some((ys[2] as usize, ys[3] as usize)) {
                return Err(ort::Error::new(format!(
                    "ConvWeightGrad: dY {ys:?} does not fit X {xs:?} with this window"
                )));
            }
            let mut out = ctx
                .output(0, vec![m as i64, c as i64, kh as i64, kw as i64])?
                .ok_or_else(|| ort::Error::new("ConvWeightGrad: no output"))?;
            let (_, dw) = out.try_extract_tensor_mut::<f32>()?;
            let par = |items: usize, f: &(dyn Fn(usize) + Sync + Send)| on_threads(ctx, items, f);
            weight_grad(&win, x, dy, dw, n.min(16), &par).map_err(ort::Error::new)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sequential;
    use super::*;

    /// dW by the definition, in f64.
    fn reference(win: &Window, x: &[f32], dy: &[f32]) -> Vec<f64> {
        let (ho, wo) = win.output().unwrap();
        let [t, l, _, _] = win.pads;
        let mut dw = vec![0f64; win.m * win.c * win.kh * win.kw];
        for n in 0..win.n {
            for m in 0..win.m {
                for c in 0..win.c {
                    for i in 0..win.kh {
                        for j in 0..win.kw {
                            let mut s = 0f64;
                            for h in 0..ho {
                                for v in 0..wo {
                                    let (xh, xv) = (
                                        (h + i) as isize - t as isize,
                                        (v + j) as isize - l as isize,
                                    );
                                    if xh < 0
                                        || xv < 0
                                        || xh >= win.h as isize
                                        || xv >= win.w as isize
                                    {
                                        continue;
                                    }
                                    s += dy[((n * win.m + m) * ho + h) * wo + v] as f64
                                        * x[((n * win.c + c) * win.h + xh as usize) * win.w
                                            + xv as usize]
                                            as f64;
                                }
                            }
                            dw[((m * win.c + c) * win.kh + i) * win.kw + j] += s;
                        }
                    }
                }
            }
        }
        dw
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..len).map(|_| r.normal() as f32).collect()
    }

    fn check(win: Window, items: usize) {
        let (ho, wo) = win.output().unwrap();
        let x = data(win.n * win.c * win.h * win.w, 1);
        let dy = data(win.n * win.m * ho * wo, 2);
        let want = reference(&win, &x, &dy);
        let scale = want.iter().fold(1e-9f64, |a, v| a.max(v.abs()));
        let mut got = vec![f32::NAN; want.len()];
        weight_grad(&win, &x, &dy, &mut got, items, &sequential).unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                ((*g as f64) - w).abs() <= 1e-5 * scale,
                "{win:?} entry {k}: {g} vs {w}"
            );
        }
        // The portable loop computes the same sums.
        let mut part = vec![0f32; want.len()];
        let mut xr = vec![0f32; win.n * win.c * win.h * win.row()];
        pad_rows(&win, &x, &mut xr);
        portable(&win, &xr, &dy, win.n, &mut part);
        for (g, w) in part.iter().zip(&want) {
            assert!(((*g as f64) - w).abs() <= 1e-5 * scale);
        }
    }

    #[test]
    fn matches_the_definition_on_every_tile_shape_and_row_tail() {
        let win = |n, c, m, h, w, kh, kw, pads| Window {
            n,
            c,
            m,
            h,
            w,
            kh,
            kw,
            pads,
        };
        // 3×3 same, odd channel counts (tiles of 1), a width that leaves a tail.
        check(win(3, 5, 3, 9, 11, 3, 3, [1, 1, 1, 1]), 2);
        // Full vectors only, several images per item.
        check(win(4, 4, 6, 8, 16, 3, 3, [1, 1, 1, 1]), 3);
        // Valid 3×3 (no pads, X read in place), 1×1, a 5×5 kernel (tap groups 3 + 2).
        check(win(2, 3, 4, 10, 12, 3, 3, [0, 0, 0, 0]), 1);
        check(win(2, 7, 5, 6, 6, 1, 1, [0, 0, 0, 0]), 2);
        check(win(2, 3, 2, 12, 13, 5, 5, [2, 2, 2, 2]), 2);
        // Asymmetric pads.
        check(win(2, 2, 3, 7, 9, 3, 3, [1, 0, 0, 2]), 2);
    }

    #[test]
    fn same_inputs_same_bits_and_bad_sizes_are_errors() {
        let win = Window {
            n: 4,
            c: 3,
            m: 2,
            h: 5,
            w: 9,
            kh: 3,
            kw: 3,
            pads: [1; 4],
        };
        let x = data(4 * 3 * 5 * 9, 3);
        let dy = data(4 * 2 * 5 * 9, 4);
        let run = |items| {
            let mut d = vec![0f32; 2 * 3 * 9];
            weight_grad(&win, &x, &dy, &mut d, items, &sequential).unwrap();
            d
        };
        assert_eq!(run(2), run(2));
        let mut d = vec![0f32; 5];
        assert!(weight_grad(&win, &x, &dy, &mut d, 1, &sequential).is_err());
        let strided = Window {
            pads: [3, 1, 1, 1],
            ..win
        };
        assert!(!strided.supported());
    }
}
