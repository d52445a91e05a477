//! Predicted latency of a model with channels removed, from per-layer latency surfaces (a
//! lookup table in the style of NetAdapt and HALP): each timed layer's latency is measured
//! at sampled input/output widths ([`Surface`], built by
//! [`crate::pipeline::latency_table`]) and interpolated at the widths a removal leaves
//! ([`MaskedCost::channels_after`]); the whole model is `a + b · Σ layers`, the line fitted
//! through whole-model measurements ([`fit`]). [`MacsCurve`] is the other predictor: the
//! latency of a removal from its MACs alone, through whole-model measurements. Pure
//! arithmetic: it times nothing and does not know which layers are timed.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};

use crate::analysis::MaskedCost;
use crate::ir::NodeId;

/// One layer configuration's latency (seconds) at sampled widths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Surface {
    /// Sampled input widths, ascending.
    pub inputs: Vec<usize>,
    /// Sampled output widths, ascending; empty when the widths are tied (depthwise: the
    /// output width is the input width).
    pub outputs: Vec<usize>,
    /// Median seconds per run: `inputs.len() × outputs.len()`, row-major (by input width);
    /// `inputs.len()` values when tied.
    pub seconds: Vec<f64>,
}

impl Surface {
    /// Whether the shape of `seconds` matches the sampled widths, and everything is finite
    /// and non-negative.
    pub fn is_valid(&self) -> bool {
        let rows = self.inputs.len();
        let cols = self.outputs.len().max(1);
        let ascending = |v: &[usize]| v.windows(2).all(|w| w[0] < w[1]);
        rows > 0
            && self.seconds.len() == rows * cols
            && ascending(&self.inputs)
            && ascending(&self.outputs)
            && self.inputs[0] > 0
            && self.outputs.first().is_none_or(|&o| o > 0)
            && self.seconds.iter().all(|s| s.is_finite() && *s >= 0.0)
    }

    /// Interpolated seconds at `cin` input and `cout` output channels (`cout` ignored when
    /// tied): bilinear between samples, proportional to the width below the smallest sample
    /// (no channels, no time), the nearest edge above the largest.
    pub fn at(&self, cin: usize, cout: usize) -> f64 {
        if self.outputs.is_empty() {
            return interp(&self.inputs, &self.seconds, cin);
        }
        let cols = self.outputs.len();
        let column: Vec<f64> = self
            .seconds
            .chunks(cols)
            .map(|row| interp(&self.outputs, row, cout))
            .collect();
        interp(&self.inputs, &column, cin)
    }
}

/// Piecewise-linear `ys` over ascending `xs` at `x`; see [`Surface::at`].
fn interp(xs: &[usize], ys: &[f64], x: usize) -> f64 {
    let Some((&x0, &y0)) = xs.first().zip(ys.first()) else {
        return 0.0;
    };
    if x <= x0 {
        return y0 * x as f64 / x0 as f64;
    }
    for (i, w) in xs.windows(2).enumerate() {
        if x <= w[1] {
            let t = (x - w[0]) as f64 / (w[1] - w[0]) as f64;
            return ys[i] + t * (ys[i + 1] - ys[i]);
        }
    }
    ys[ys.len() - 1]
}

/// A model's latency predicted from its timed layers.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    /// Each timed layer's node and surface.
    pub layers: Vec<(NodeId, Surface)>,
    /// Whole-model seconds ≈ `a + b · Σ layers` (cells: a measurement that disagrees with
    /// the prediction corrects the line while a search holds the model).
    pub a: Cell<f64>,
    /// See `a`.
    pub b: Cell<f64>,
    /// The model's own latency as a fraction of the original's it was pruned from (1 when
    /// it is the original), so that [`ratio`](Self::ratio) is relative to the original, as
    /// latency targets and measurements are.
    pub scale: Cell<f64>,
    /// The layer sum with nothing removed (computed once: every ratio divides by it).
    full_sum: std::cell::OnceCell<f64>,
}

impl LatencyModel {
    /// A model of `layers` with the line `a = 0, b = 1` (set them from a calibration).
    pub fn new(layers: Vec<(NodeId, Surface)>) -> LatencyModel {
        LatencyModel {
            layers,
            a: Cell::new(0.0),
            b: Cell::new(1.0),
            scale: Cell::new(1.0),
            full_sum: std::cell::OnceCell::new(),
        }
    }

    /// Σ of the layers' interpolated seconds after removing the classes marked `true`
    /// (`cost` built on the same model as the layers' node ids). A layer whose widths are not
    /// known counts at its full-width sample.
    pub fn layer_sum(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        let nodes: Vec<NodeId> = self.layers.iter().map(|(n, _)| *n).collect();
        let widths = cost.channels_after(removed, &nodes);
        self.layers
            .iter()
            .zip(widths)
            .map(|((_, s), (cin, cout))| {
                let full_in = *s.inputs.last().unwrap_or(&1);
                let full_out = *s.outputs.last().unwrap_or(&full_in);
                s.at(cin.unwrap_or(full_in), cout.unwrap_or(full_out))
            })
            .sum()
    }

    /// Predicted whole-model seconds after removing the classes marked `true`.
    pub fn seconds(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        self.a.get() + self.b.get() * self.layer_sum(cost, removed)
    }

    /// Predicted latency after removing the classes marked `true`, as a fraction of the
    /// original's: of the model's with nothing removed, times [`scale`](Self::scale).
    pub fn ratio(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        let sum = *self.full_sum.get_or_init(|| self.layer_sum(cost, &[]));
        let full = self.a.get() + self.b.get() * sum;
        self.scale.get() * self.seconds(cost, removed) / full.max(f64::MIN_POSITIVE)
    }
}

/// A model's latency predicted from its MACs alone: `latency ≈ m · k(m)`, both fractions of
/// the original's, where `k` (time per MAC relative to the original's) is interpolated
/// linearly in `m` between whole-model measurements `(m, latency)` and the original `(1, 1)`,
/// constant beyond them (`k = 1` with no measurement). Made for the FLOPs target's order of
/// removal, whose latency on runtimes that block channels tracks its MACs (hardware-friendly
/// widths, branches dropped): a few measurements pin `k` where the target is.
#[derive(Clone, Debug, Default)]
pub struct MacsCurve {
    /// Measured `(MACs, latency)`, fractions of the original's (cells: a measurement that
    /// disagrees with the prediction is added while a search holds the curve).
    pub points: RefCell<Vec<(f64, f64)>>,
    /// The MACs of the model the removals apply to, as a fraction of the original's.
    pub kept: f64,
}

impl MacsCurve {
    /// A curve through `points` for a model keeping `kept` of the original's MACs.
    pub fn new(points: Vec<(f64, f64)>, kept: f64) -> MacsCurve {
        MacsCurve {
            points: RefCell::new(points),
            kept,
        }
    }

    /// Predicted latency (fraction of the original's) of a model keeping `m` of the
    /// original's MACs.
    pub fn at(&self, m: f64) -> f64 {
        let mut ks: Vec<(f64, f64)> = self
            .points
            .borrow()
            .iter()
            .filter(|(m, l)| *m > 0.0 && m.is_finite() && l.is_finite() && *l > 0.0)
            .map(|&(m, l)| (m, l / m))
            .collect();
        if !ks.iter().any(|(m, _)| *m >= 1.0) {
            ks.push((1.0, 1.0));
        }
        ks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let k = match ks.iter().position(|(x, _)| *x >= m) {
            Some(0) => ks[0].1,
            Some(i) => {
                let ((x0, k0), (x1, k1)) = (ks[i - 1], ks[i]);
                if x1 - x0 <= 0.0 {
                    k1
                } else {
                    k0 + (k1 - k0) * (m - x0) / (x1 - x0)
                }
            }
            None => ks[ks.len() - 1].1,
        };
        m * k
    }

    /// The MACs, as a fraction of the original's, left after removing the classes marked
    /// `true` (`cost` built on the model the curve's removals apply to).
    pub fn macs(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        self.kept * cost.estimate(removed).0 as f64 / cost.original().0.max(1) as f64
    }

    /// Predicted latency after removing the classes marked `true`, as a fraction of the
    /// original's.
    pub fn ratio(&self, cost: &MaskedCost, removed: &[bool]) -> f64 {
        self.at(self.macs(cost, removed))
    }
}

/// The line `seconds ≈ a + b · layer_sum` through whole-model measurements `(layer sum,
/// measured seconds)`: least squares with `a ≥ 0` and `b > 0` (the layers cannot make a model
/// faster); through the origin when the points do not allow a line. `None` without a point
/// with a positive layer sum.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(s, t)| s.is_finite() && t.is_finite() && *s > 0.0 && *t > 0.0)
        .collect();
    if pts.is_empty() {
        return None;
    }
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx > 1e-12 * mx * mx {
        let b = sxy / sxx;
        let a = my - b * mx;
        if b > 0.0 && a >= 0.0 {
            return Some((a, b));
        }
    }
    // Through the origin: b = Σxy / Σx².
    let xy: f64 = pts.iter().map(|(x, y)| x * y).sum();
    let xx: f64 = pts.iter().map(|(x, _)| x * x).sum();
    Some((0.0, xy / xx))
}

/// The line through `origin` (the unpruned model's `(layer sum, seconds)`) whose slope fits
/// `points` best (least squares); `None` when no point is away from the origin or the slope
/// is not positive.
pub fn fit_through(origin: (f64, f64), points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let (s0, t0) = origin;
    let (mut num, mut den) = (0.0, 0.0);
    for &(s, t) in points {
        let ds = s - s0;
        if ds.abs() > 1e-9 * s0.abs().max(1e-12) && t.is_finite() {
            num += ds * (t - t0);
            den += ds * ds;
        }
    }
    let b = num / den;
    (den > 0.0 && b > 0.0 && b.is_finite()).then_some((t0 - b * s0, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Surface {
        // seconds = 1e-6 · cin · cout at widths 8, 16, 32.
        let w = vec![8, 16, 32];
        let seconds = w
            .iter()
            .flat_map(|&i| w.iter().map(move |&o| 1e-6 * (i * o) as f64))
            .collect();
        Surface {
            inputs: w.clone(),
            outputs: w,
            seconds,
        }
    }

    #[test]
    fn bilinear_interpolation_is_exact_at_samples_and_between_them_on_a_bilinear_surface() {
        let s = grid();
        assert!(s.is_valid());
        for (i, o) in [(8, 8), (16, 32), (32, 8), (32, 32)] {
            assert!((s.at(i, o) - 1e-6 * (i * o) as f64).abs() < 1e-15);
        }
        // cin·cout is bilinear inside each cell: interpolation reproduces it.
        for (i, o) in [(12, 20), (24, 9), (31, 17)] {
            assert!(
                (s.at(i, o) - 1e-6 * (i * o) as f64).abs() < 1e-12,
                "{i} {o}"
            );
        }
        // Below the smallest sample: proportional to the width; above the largest: the edge.
        assert!((s.at(4, 8) - 0.5 * s.at(8, 8)).abs() < 1e-15);
        assert_eq!(s.at(64, 32), s.at(32, 32));
    }

    #[test]
    fn a_macs_curve_is_proportional_until_measured_then_passes_through_its_points() {
        let c = MacsCurve::new(vec![], 1.0);
        assert_eq!(c.at(0.5), 0.5);
        assert_eq!(c.at(1.0), 1.0);
        // One point: k = 1.2 at m = 0.5, interpolated up to the original's k = 1.
        c.points.borrow_mut().push((0.5, 0.6));
        assert!((c.at(0.5) - 0.6).abs() < 1e-12);
        assert!((c.at(0.75) - 0.75 * 1.1).abs() < 1e-12);
        assert!((c.at(0.25) - 0.25 * 1.2).abs() < 1e-12, "constant below");
        // A second point below: interpolated between the two.
        c.points.borrow_mut().push((0.3, 0.45));
        assert!((c.at(0.3) - 0.45).abs() < 1e-12);
        assert!((c.at(0.4) - 0.4 * 1.35).abs() < 1e-12);
        // Nonsense points are ignored.
        c.points.borrow_mut().push((f64::NAN, 1.0));
        c.points.borrow_mut().push((0.2, -1.0));
        assert!((c.at(0.3) - 0.45).abs() < 1e-12);
    }

    #[test]
    fn tied_surfaces_interpolate_in_one_width() {
        let s = Surface {
            inputs: vec![16, 32],
            outputs: vec![],
            seconds: vec![2.0, 4.0],
        };
        assert!(s.is_valid());
        assert_eq!(s.at(24, 999), 3.0);
        assert_eq!(s.at(8, 0), 1.0);
    }

    #[test]
    fn malformed_surfaces_are_invalid() {
        let mut s = grid();
        s.seconds.pop();
        assert!(!s.is_valid());
        let mut s = grid();
        s.inputs = vec![16, 8, 32];
        assert!(!s.is_valid());
        let mut s = grid();
        s.seconds[0] = f64::NAN;
        assert!(!s.is_valid());
    }

    #[test]
    fn the_fit_recovers_a_line_and_stays_physical() {
        let pts = [(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)];
        let (a, b) = fit(&pts).unwrap();
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
        // A line with a negative intercept falls back to one through the origin.
        let (a, b) = fit(&[(1.0, 1.0), (2.0, 3.0)]).unwrap();
        assert_eq!(a, 0.0);
        assert!((b - 7.0 / 5.0).abs() < 1e-12);
        // One point: through the origin.
        assert_eq!(fit(&[(2.0, 4.0)]), Some((0.0, 2.0)));
        assert_eq!(fit(&[(0.0, 4.0)]), None);
        // Through a given point: the slope of the corrections.
        let (a, b) = fit_through((10.0, 5.0), &[(6.0, 3.0)]).unwrap();
        assert!((b - 0.5).abs() < 1e-12 && a.abs() < 1e-12);
        assert_eq!(fit_through((10.0, 5.0), &[(10.0, 3.0)]), None);
        assert_eq!(fit_through((10.0, 5.0), &[(6.0, 7.0)]), None);
    }
}
