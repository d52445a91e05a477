//! Preprocessing: from a dataset's raw samples to the values of the model's input tensor.
//!
//! [`Transform::plan`] matches the samples' shape against the model's declared input once, up
//! front, and fails with one line naming both when they cannot fit (no silent guessing beyond
//! the documented rules). [`Transform::apply`] then maps one sample, in this order: to HWC, resize
//! (antialiased bilinear), center crop, channel conversion (gray ↔ RGB, alpha dropped),
//! `x·scale`, `(x − mean[c]) / std[c]`, and the model's layout (NCHW, NHWC, `[N,H,W]` or
//! flattened). [`Transform::tensor`] packs a batch in the model's element type.

use std::fmt;

use super::resize::{center_crop, resize, shorter_side};
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};
use crate::runtime::InputSpec;

/// How an image sample is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    /// Height, width, channels (decoded images, MNIST, Keras-style arrays).
    Hwc,
    /// Channels, height, width (PyTorch-style arrays).
    Chw,
}

/// The shape of one raw sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SampleShape {
    /// An image.
    Image {
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// Channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
        c: usize,
        /// Storage order.
        layout: ImageLayout,
    },
    /// Anything else: the dims of one sample, fed as they are.
    Array(Vec<usize>),
}

impl SampleShape {
    /// Elements in one sample.
    pub fn len(&self) -> usize {
        match self {
            SampleShape::Image { h, w, c, .. } => h.saturating_mul(*w).saturating_mul(*c),
            SampleShape::Array(d) => d.iter().fold(1usize, |a, &d| a.saturating_mul(d)),
        }
    }

    /// Whether a sample has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for SampleShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleShape::Image {
                h,
                w,
                c,
                layout: ImageLayout::Hwc,
            } => write!(f, "{h}x{w}x{c} (HWC)"),
            SampleShape::Image {
                h,
                w,
                c,
                layout: ImageLayout::Chw,
            } => write!(f, "{c}x{h}x{w} (CHW)"),
            SampleShape::Array(d) => write!(f, "{d:?}"),
        }
    }
}

/// The layout of a rank-4 model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// How images are resized before cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side to this size, keeping the aspect ratio.
    Shorter(usize),
    /// Exactly this height and width.
    Exact(usize, usize),
}

/// Preprocessing options (the command line's flags, parsed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preprocess {
    /// Factor applied to raw values before mean/std (`None`: 1/255 when the samples are bytes
    /// and a mean/std in [0, 1] is given, else 1).
    pub scale: Option<f32>,
    /// Per-channel mean (one value: all channels).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (one value: all channels).
    pub std: Vec<f32>,
    /// The model input's layout (`None`: detected from its shape).
    pub layout: Option<Layout>,
    /// Resize images first.
    pub resize: Option<Resize>,
    /// Then crop the center (height, width).
    pub crop: Option<(usize, usize)>,
    /// Element type fed to the model (`None`: the input's declared type).
    pub dtype: Option<DType>,
}

/// What the model input looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A rank-4 image input.
    Image(Layout),
    /// `[N, H, W]`: one channel.
    Plane,
    /// `[N, F]`: the image flattened in this order.
    Flat(Layout),
    /// The sample's own dims.
    Array,
}

/// Reusable buffers of one worker.
#[derive(Default, Debug)]
pub struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// A planned preprocessing from samples of one shape family to one model input.
#[derive(Clone, Debug)]
pub struct Transform {
    input: String,
    target: Target,
    /// Per-sample dims of the model input (batch excluded), all known.
    dims: Vec<usize>,
    /// Target image geometry.
    h: usize,
    w: usize,
    c: usize,
    resize: Option<Resize>,
    crop: Option<(usize, usize)>,
    scale: f32,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    dtype: DType,
    batch: Option<usize>,
}

fn channel_like(d: Option<usize>) -> bool {
    matches!(d, Some(1..=4))
}

/// Whether `from` channels convert to `to` (gray → RGB, RGB(A) → gray, alpha dropped).
fn converts(from: usize, to: usize) -> bool {
    from == to
        || matches!(
            (from, to),
            (1, 3) | (2, 1) | (3, 1) | (4, 1) | (4, 3) | (2, 3)
        )
}

/// The image size after the resize/crop options.
fn geometry(
    h: usize,
    w: usize,
    resize: Option<Resize>,
    crop: Option<(usize, usize)>,
) -> (usize, usize) {
    let (h, w) = match resize {
        None => (h, w),
        Some(Resize::Exact(rh, rw)) => (rh, rw),
        Some(Resize::Shorter(s)) => shorter_side(h, w, s),
    };
    crop.unwrap_or((h, w))
}

impl Transform {
    /// Plans the preprocessing of samples shaped like `sample` (`bytes`: raw values are 0–255
    /// integers) for the model input `input`. Fails, naming both, when they cannot fit.
    pub fn plan(
        input: &InputSpec,
        sample: &SampleShape,
        bytes: bool,
        pre: &Preprocess,
    ) -> Result<Transform> {
        let name = &input.name;
        let want = input.describe();
        let usage = |msg: String| Error::Usage(format!("model input '{name}' is {want}: {msg}"));
        let dims = &input.dims;
        if dims.is_empty() {
            return Err(usage("a scalar input cannot take samples".into()));
        }
        let batch = dims[0];
        let rest = &dims[1..];
        let mut t = Transform {
            input: name.clone(),
            target: Target::Array,
            dims: Vec::new(),
            h: 0,
            w: 0,
            c: 1,
            resize: pre.resize,
            crop: pre.crop,
            scale: 1.0,
            mean: Vec::new(),
            inv_std: Vec::new(),
            dtype: pre.dtype.unwrap_or(input.dtype),
            batch,
        };
        match sample {
            SampleShape::Array(sd) => {
                if pre.resize.is_some() || pre.crop.is_some() {
                    return Err(usage(format!(
                        "samples are {sample}, not images: --resize/--crop do not apply"
                    )));
                }
                let fits = rest.len() == sd.len()
                    && rest.iter().zip(sd).all(|(m, s)| m.is_none_or(|m| m == *s));
                if !fits {
                    return Err(usage(format!("samples are {sample}")));
                }
                t.dims = sd.clone();
            }
            &SampleShape::Image { h, w, c, .. } => {
                t.plan_image(sample, (h, w, c), rest, pre, &usage)?
            }
        }
        let elems = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems.is_none_or(|n| n > 1 << 30) {
            return Err(usage(format!(
                "samples of {:?} values are implausible",
                t.dims
            )));
        }
        t.plan_values(name, bytes, pre)?;
        Ok(t)
    }

    /// Plans the geometry of image samples (`sample`, of height, width and channels `hwc`) for
    /// the model input's per-sample dims `rest`: the target layout, size and channels.
    fn plan_image(
        &mut self,
        sample: &SampleShape,
        (h, w, c): (usize, usize, usize),
        rest: &[Option<usize>],
        pre: &Preprocess,
        usage: &dyn Fn(String) -> Error,
    ) -> Result<()> {
        let (gh, gw) = geometry(h, w, pre.resize, pre.crop);
        let got = if pre.resize.is_some() || pre.crop.is_some() {
            format!("samples are {sample}, {gh}x{gw} after --resize/--crop")
        } else {
            format!("samples are {sample}")
        };
        let (target, tc, th, tw) = match rest.len() {
            3 => {
                let layout = pre.layout.unwrap_or_else(|| {
                    if channel_like(rest[2]) && !channel_like(rest[0]) {
                        Layout::Nhwc
                    } else {
                        Layout::Nchw
                    }
                });
                match layout {
                    Layout::Nchw => (Target::Image(layout), rest[0], rest[1], rest[2]),
                    Layout::Nhwc => (Target::Image(layout), rest[2], rest[0], rest[1]),
                }
            }
            2 => (Target::Plane, Some(1), rest[0], rest[1]),
            1 => {
                let layout = pre.layout.unwrap_or(Layout::Nchw);
                let f = rest[0];
                let n = gh.saturating_mul(gw).saturating_mul(c);
                if f.is_some_and(|f| f != n) {
                    return Err(usage(format!(
                        "{got}: {n} values, the input takes {}",
                        f.unwrap_or(0)
                    )));
                }
                (Target::Flat(layout), Some(c), Some(gh), Some(gw))
            }
            _ => return Err(usage(format!("{got}: no image layout fits"))),
        };
        let (tc, th, tw) = (tc.unwrap_or(c), th.unwrap_or(gh), tw.unwrap_or(gw));
        let layout_note = match (target, pre.layout) {
            (Target::Image(Layout::Nchw), None) => " (read as NCHW)",
            (Target::Image(Layout::Nhwc), None) => " (read as NHWC)",
            _ => "",
        };
        if !converts(c, tc) {
            return Err(usage(format!(
                "{got}: the input{layout_note} takes {tc} channels, samples have {c}; \
                 check --layout"
            )));
        }
        if (th, tw) != (gh, gw) {
            return Err(usage(format!(
                "{got}: the input{layout_note} takes {th}x{tw} images; use \
                 --resize/--crop or check --layout"
            )));
        }
        self.target = target;
        self.h = th;
        self.w = tw;
        self.c = tc;
        self.dims = match target {
            Target::Image(Layout::Nchw) => vec![tc, th, tw],
            Target::Image(Layout::Nhwc) => vec![th, tw, tc],
            Target::Plane => vec![th, tw],
            Target::Flat(_) | Target::Array => {
                vec![th.saturating_mul(tw).saturating_mul(tc)]
            }
        };
        Ok(())
    }

    /// Plans the value mapping: per-channel mean and 1/std (checked against the channels of
    /// the model input `name`) and the scale.
    fn plan_values(&mut self, name: &str, bytes: bool, pre: &Preprocess) -> Result<()> {
        let channels = match self.target {
            Target::Array => 1,
            _ => self.c,
        };
        for (what, v) in [("--mean", &pre.mean), ("--std", &pre.std)] {
            if v.len() > 1 && v.len() != channels {
                return Err(Error::Usage(format!(
                    "{what} has {} values, the model input '{name}' has {channels} channel(s)",
                    v.len()
                )));
            }
        }
        if pre.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(Error::Usage(
                "--std values must be finite and non-zero".into(),
            ));
        }
        let spread = |v: &[f32], default: f32| -> Vec<f32> {
            (0..channels)
                .map(|i| v.get(i).or(v.first()).copied().unwrap_or(default))
                .collect()
        };
        self.mean = spread(&pre.mean, 0.0);
        self.inv_std = spread(&pre.std, 1.0).iter().map(|s| 1.0 / s).collect();
        let unit_stats = (!pre.mean.is_empty() || !pre.std.is_empty())
            && pre.mean.iter().chain(&pre.std).all(|v| v.abs() <= 1.0);
        self.scale = pre.scale.unwrap_or(if bytes && unit_stats {
            1.0 / 255.0
        } else {
            1.0
        });
        Ok(())
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The model input's name.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The batch size the model fixes, if it does.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.batch
    }

    /// The factor applied to raw values.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The target image `(height, width, channels, layout)` when the model input is a rank-4
    /// image (`None` for planes, flattened and array inputs).
    pub fn image_geometry(&self) -> Option<(usize, usize, usize, Layout)> {
        match self.target {
            Target::Image(l) => Some((self.h, self.w, self.c, l)),
            _ => None,
        }
    }

    /// Whether image samples need decoding-time geometry (resize/crop).
    pub fn reshapes(&self) -> bool {
        self.resize.is_some() || self.crop.is_some()
    }

    /// Maps one raw sample into `out` (`sample_len()` values). Errors name what does not fit.
    pub fn apply<T: Copy + Into<f32>>(
        &self,
        data: &[T],
        shape: &SampleShape,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> std::result::Result<(), String> {
        if data.len() != shape.len() || out.len() != self.sample_len() {
            return Err(format!(
                "sample of {} values, shape {shape} (model input wants {})",
                data.len(),
                self.sample_len()
            ));
        }
        let &SampleShape::Image { h, w, c, layout } = shape else {
            let (m, s) = (self.mean[0], self.inv_std[0]);
            for (o, &x) in out.iter_mut().zip(data) {
                *o = (x.into() * self.scale - m) * s;
            }
            return Ok(());
        };
        if self.target == Target::Array {
            return Err(format!("an image {shape} where arrays were planned"));
        }
        if !self.reshapes() {
            if (h, w) != (self.h, self.w) {
                return Err(format!(
                    "image is {h}x{w}, the model takes {}x{}: use --resize/--crop",
                    self.h, self.w
                ));
            }
            match layout {
                ImageLayout::Hwc => self.emit(c, out, |y, x, ch| data[(y * w + x) * c + ch].into()),
                ImageLayout::Chw => self.emit(c, out, |y, x, ch| data[(ch * h + y) * w + x].into()),
            }
            return Ok(());
        }
        // Geometry on an HWC float copy.
        let Scratch { a, b } = scratch;
        a.clear();
        match layout {
            ImageLayout::Hwc => a.extend(data.iter().map(|&v| v.into())),
            ImageLayout::Chw => {
                a.resize(h * w * c, 0.0);
                for ch in 0..c {
                    for i in 0..h * w {
                        a[i * c + ch] = data[ch * h * w + i].into();
                    }
                }
            }
        }
        let (mut h, mut w) = (h, w);
        if let Some(r) = self.resize {
            let (rh, rw) = match r {
                Resize::Exact(rh, rw) => (rh, rw),
                Resize::Shorter(s) => shorter_side(h, w, s),
            };
            resize(a, h, w, c, rh, rw, b);
            std::mem::swap(a, b);
            (h, w) = (rh, rw);
        }
        if let Some((ch, cw)) = self.crop {
            if ch > h || cw > w {
                return Err(format!("image is {h}x{w}, smaller than the {ch}x{cw} crop"));
            }
            center_crop(a, h, w, c, ch, cw, b);
            std::mem::swap(a, b);
            (h, w) = (ch, cw);
        }
        if (h, w) != (self.h, self.w) {
            return Err(format!(
                "image is {h}x{w} after --resize/--crop, the model takes {}x{}",
                self.h, self.w
            ));
        }
        let a = &*a;
        self.emit(c, out, |y, x, ch| a[(y * w + x) * c + ch]);
        Ok(())
    }

    /// Writes the target image from a pixel reader `get(y, x, channel)` over `c` source
    /// channels: channel conversion, scale, mean/std, layout.
    fn emit(&self, c: usize, out: &mut [f32], get: impl Fn(usize, usize, usize) -> f32) {
        let (h, w, tc) = (self.h, self.w, self.c);
        let chw = matches!(
            self.target,
            Target::Image(Layout::Nchw) | Target::Flat(Layout::Nchw)
        );
        for y in 0..h {
            for x in 0..w {
                for t in 0..tc {
                    let v = if c == tc || (c == 4 && tc == 3) {
                        get(y, x, t)
                    } else if tc == 1 && c >= 3 {
                        0.299 * get(y, x, 0) + 0.587 * get(y, x, 1) + 0.114 * get(y, x, 2)
                    } else {
                        get(y, x, 0)
                    };
                    let v = (v * self.scale - self.mean[t]) * self.inv_std[t];
                    let at = if chw {
                        (t * h + y) * w + x
                    } else {
                        (y * w + x) * tc + t
                    };
                    out[at] = v;
                }
            }
        }
    }

    /// Packs `n` samples of values (`n · sample_len()`) into the model input's tensor.
    pub fn tensor(&self, values: &[f32], n: usize) -> Result<Tensor> {
        let mut shape = Vec::with_capacity(self.dims.len() + 1);
        shape.push(n);
        shape.extend_from_slice(&self.dims);
        match self.dtype {
            DType::F32 => Ok(Tensor::from_f32(shape, values)),
            DType::U8
            | DType::I8
            | DType::U16
            | DType::I16
            | DType::I32
            | DType::U32
            | DType::I64
            | DType::U64 => {
                let v: Vec<f64> = values.iter().map(|&x| f64::from(x).round()).collect();
                Tensor::from_f64_as(self.dtype, shape, &v)
            }
            d => {
                let v: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
                Tensor::from_f64_as(d, shape, &v)
            }
        }
        .map_err(|e| Error::Usage(format!("model input '{}': {e}", self.input)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dims: &[Option<usize>]) -> InputSpec {
        InputSpec {
            name: "x".into(),
            dtype: DType::F32,
            dims: dims.to_vec(),
        }
    }

    fn img(h: usize, w: usize, c: usize) -> SampleShape {
        SampleShape::Image {
            h,
            w,
            c,
            layout: ImageLayout::Hwc,
        }
    }

    #[test]
    fn hwc_bytes_to_normalised_nchw() {
        let pre = Preprocess {
            mean: vec![0.5, 0.25],
            std: vec![0.5, 0.25],
            ..Preprocess::default()
        };
        let t = Transform::plan(
            &input(&[None, Some(2), Some(1), Some(2)]),
            &img(1, 2, 2),
            true,
            &pre,
        )
        .unwrap();
        assert_eq!(t.scale(), 1.0 / 255.0);
        // Pixels (c0, c1): (255, 0), (0, 255).
        let data: [u8; 4] = [255, 0, 0, 255];
        let mut out = [0f32; 4];
        t.apply(&data, &img(1, 2, 2), &mut out, &mut Scratch::default())
            .unwrap();
        // NCHW: channel 0 = [1, -1], channel 1 = [-1, 3].
        for (o, e) in out.iter().zip([1.0, -1.0, -1.0, 3.0]) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        let tensor = t.tensor(&out, 1).unwrap();
        assert_eq!(tensor.shape(), &[1, 2, 1, 2]);
    }

    #[test]
    fn layouts_are_detected_and_checked() {
        let s = img(32, 32, 3);
        let pre = Preprocess::default();
        // NHWC model: values stay in HWC order.
        let t =
            Transform::plan(&input(&[None, Some(32), Some(32), Some(3)]), &s, true, &pre).unwrap();
        assert_eq!(t.dims, vec![32, 32, 3]);
        // An NCHW model forced to NHWC reads 32 channels: an error naming channels.
        let e = Transform::plan(
            &input(&[None, Some(3), Some(32), Some(32)]),
            &s,
            true,
            &Preprocess {
                layout: Some(Layout::Nhwc),
                ..Preprocess::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("32 channels") && e.contains("32x32x3"), "{e}");
        // Wrong size: names both sizes and suggests --resize.
        let e = Transform::plan(
            &input(&[Some(1), Some(1), Some(28), Some(28)]),
            &s,
            true,
            &pre,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("28x28") && e.contains("--resize"), "{e}");
        // With --resize the same model fits (RGB → gray).
        let pre = Preprocess {
            resize: Some(Resize::Exact(28, 28)),
            ..Preprocess::default()
        };
        let t = Transform::plan(
            &input(&[Some(1), Some(1), Some(28), Some(28)]),
            &s,
            true,
            &pre,
        )
        .unwrap();
        let data = vec![10u8; 32 * 32 * 3];
        let mut out = vec![0f32; 28 * 28];
        t.apply(&data, &s, &mut out, &mut Scratch::default())
            .unwrap();
        assert!(out.iter().all(|v| (v - 10.0).abs() < 1e-3));
    }

    #[test]
    fn arrays_pass_through_and_stats_are_checked() {
        let s = SampleShape::Array(vec![4]);
        let t =
            Transform::plan(&input(&[None, Some(4)]), &s, false, &Preprocess::default()).unwrap();
        let mut out = [0f32; 4];
        t.apply(
            &[1.0f32, 2.0, 3.0, 4.0],
            &s,
            &mut out,
            &mut Scratch::default(),
        )
        .unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
        assert!(
            Transform::plan(&input(&[None, Some(5)]), &s, false, &Preprocess::default()).is_err()
        );
        let e = Transform::plan(
            &input(&[None, Some(3), Some(8), Some(8)]),
            &img(8, 8, 3),
            true,
            &Preprocess {
                mean: vec![0.1, 0.2],
                ..Preprocess::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--mean has 2 values"), "{e}");
    }
}
