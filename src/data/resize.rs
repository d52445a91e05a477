//! Geometry of image samples (HWC `f32`): antialiased bilinear resize with the weights of
//! Pillow's `Image.resize(..., BILINEAR)` (what torchvision's `Resize` uses on PIL images: a
//! triangle filter widened by the scale when shrinking), and center crop.

/// Resizes `src` (`h`×`w`×`c`, HWC) to `oh`×`ow` into `dst` (resized to fit).
pub fn resize(src: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize, dst: &mut Vec<f32>) {
    let (xw, xs) = weights(w, ow);
    let (yw, ys) = weights(h, oh);
    // Horizontal pass: h × ow × c.
    let mut tmp = vec![0f32; h * ow * c];
    for y in 0..h {
        let row = &src[y * w * c..(y + 1) * w * c];
        for (ox, (first, ws)) in xs.iter().zip(&xw).enumerate() {
            let out = &mut tmp[(y * ow + ox) * c..(y * ow + ox + 1) * c];
            for (k, &wt) in ws.iter().enumerate() {
                let px = &row[(first + k) * c..(first + k + 1) * c];
                for (o, &p) in out.iter_mut().zip(px) {
                    *o += wt * p;
                }
            }
        }
    }
    // Vertical pass: oh × ow × c.
    dst.clear();
    dst.resize(oh * ow * c, 0.0);
    let stride = ow * c;
    for (oy, (first, ws)) in ys.iter().zip(&yw).enumerate() {
        let out = &mut dst[oy * stride..(oy + 1) * stride];
        for (k, &wt) in ws.iter().enumerate() {
            let row = &tmp[(first + k) * stride..(first + k + 1) * stride];
            for (o, &p) in out.iter_mut().zip(row) {
                *o += wt * p;
            }
        }
    }
}

/// Per output index: the normalised filter weights and the first input index they apply to.
fn weights(n_in: usize, n_out: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // bilinear support 1, widened when shrinking
    let mut all = Vec::with_capacity(n_out);
    let mut firsts = Vec::with_capacity(n_out);
    for i in 0..n_out {
        let center = (i as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize)
            .min(n_in)
            .max(lo + 1);
        let mut ws: Vec<f64> = (lo..hi)
            .map(|x| {
                let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                (1.0 - t).max(0.0)
            })
            .collect();
        let sum: f64 = ws.iter().sum();
        if sum > 0.0 {
            ws.iter_mut().for_each(|v| *v /= sum);
        } else {
            ws.iter_mut().for_each(|v| *v = 1.0 / (hi - lo) as f64);
        }
        all.push(ws.into_iter().map(|v| v as f32).collect());
        firsts.push(lo);
    }
    (all, firsts)
}

/// The size after scaling the shorter side to `s` (the longer side truncated, as torchvision).
pub fn shorter_side(h: usize, w: usize, s: usize) -> (usize, usize) {
    if h <= w {
        (s, (w * s / h.max(1)).max(1))
    } else {
        ((h * s / w.max(1)).max(1), s)
    }
}

/// Copies the centered `ch`×`cw` window of `src` (`h`×`w`×`c`) into `dst`; offsets rounded
/// like torchvision's `CenterCrop`. The caller checks that the window fits.
pub fn center_crop(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    ch: usize,
    cw: usize,
    dst: &mut Vec<f32>,
) {
    let top = ((h - ch) as f64 / 2.0).round() as usize;
    let left = ((w - cw) as f64 / 2.0).round() as usize;
    dst.clear();
    for y in top..top + ch {
        let start = (y * w + left) * c;
        dst.extend_from_slice(&src[start..start + cw * c]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images_survive() {
        let src: Vec<f32> = (0..4 * 6 * 3).map(|v| v as f32).collect();
        let mut dst = Vec::new();
        resize(&src, 4, 6, 3, 4, 6, &mut dst);
        assert_eq!(dst, src);
        let flat = vec![7.0f32; 9 * 5];
        resize(&flat, 9, 5, 1, 4, 3, &mut dst);
        assert!(dst.iter().all(|v| (v - 7.0).abs() < 1e-5), "{dst:?}");
    }

    #[test]
    fn halving_averages_pairs_like_pillow() {
        // Shrinking 4 → 2 widens the triangle to support 2: output 0 (center 1.0) weighs
        // inputs 0, 1, 2 by 3/4, 3/4, 1/4 (normalised by 7/4), as Pillow's BILINEAR does.
        let src = [0.0f32, 10.0, 20.0, 30.0];
        let mut dst = Vec::new();
        resize(&src, 1, 4, 1, 1, 2, &mut dst);
        assert!((dst[0] - 50.0 / 7.0).abs() < 1e-4, "{dst:?}");
        assert!(
            (dst[1] - (10.0 + 20.0 * 3.0 + 30.0 * 3.0) / 7.0).abs() < 1e-4,
            "{dst:?}"
        );
    }

    #[test]
    fn crop_and_shorter_side() {
        let src: Vec<f32> = (0..5 * 5).map(|v| v as f32).collect();
        let mut dst = Vec::new();
        center_crop(&src, 5, 5, 1, 3, 3, &mut dst);
        assert_eq!(dst, vec![6.0, 7.0, 8.0, 11.0, 12.0, 13.0, 16.0, 17.0, 18.0]);
        assert_eq!(shorter_side(480, 640, 256), (256, 341));
        assert_eq!(shorter_side(640, 480, 256), (341, 256));
    }
}
