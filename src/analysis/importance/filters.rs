//! The producer filter slices of every class, shared by the weight-based criteria.
//!
//! A class's *parts* are its atoms that come from a non-constant source (a Conv/Gemm/MatMul
//! creating channels); a residual class has one part per producer it ties together. A part's
//! *slices* are the source's weight members (constant inputs of rank ≥ 2 declared by a
//! [`Link::Member`] on the source's output slot) at the atom's position along the member axis,
//! honouring [`Map::Index`]. Biases and other rank-1 members are not filters.
//!
//! Weights are read in place (float32 straight from the tensor bytes; other float types are
//! converted once per tensor). Per-slice L1 and squared-L2 norms come from one pass over each
//! weight; [`Filters::gram`] builds a group's Gram matrix in column blocks without holding a
//! whole model's weights as f64. Nothing here changes the model or looks at activations.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use ndarray::{s, Array2};

use super::Reduce;
use crate::analysis::channels::{AtomId, ChannelGroups};
use crate::ir::{DType, Model, NodeId, Tensor};
use crate::ops::channel::{Link, Map};

/// Most f32 elements of one column block of a group's filter matrix (64 MiB).
const BLOCK_ELEMS: usize = 16 << 20;

/// Element storage of a weight: borrowed little-endian f32 bytes, or converted values.
enum Data<'a> {
    F32(&'a [u8]),
    Owned(Vec<f32>),
}

impl Data<'_> {
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Data::F32(b) => {
                let o = 4 * i;
                f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
            }
            Data::Owned(v) => v[i],
        }
    }

    /// Adds `|x|` and `x²` of elements `start..start + n` to `acc`.
    #[inline]
    fn accumulate(&self, start: usize, n: usize, acc: &mut [f64; 2]) {
        let (mut l1, mut sq) = (0f64, 0f64);
        match self {
            Data::F32(b) => {
                for c in b[4 * start..4 * (start + n)].chunks_exact(4) {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                    l1 += x.abs();
                    sq += x * x;
                }
            }
            Data::Owned(v) => {
                for &x in &v[start..start + n] {
                    let x = x as f64;
                    l1 += x.abs();
                    sq += x * x;
                }
            }
        }
        acc[0] += l1;
        acc[1] += sq;
    }
}

/// One weight member of a producer, seen as `[outer, len, inner]` around its channel axis.
struct Segment<'a> {
    data: Data<'a>,
    outer: usize,
    len: usize,
    inner: usize,
}

impl Segment<'_> {
    /// Elements of one slice.
    fn width(&self) -> usize {
        self.outer * self.inner
    }

    /// Copies slice `idx` into `out` (length [`Segment::width`]).
    fn read(&self, idx: usize, out: &mut [f32]) {
        for o in 0..self.outer {
            let base = (o * self.len + idx) * self.inner;
            let dst = &mut out[o * self.inner..(o + 1) * self.inner];
            for (k, d) in dst.iter_mut().enumerate() {
                *d = self.data.get(base + k);
            }
        }
    }
}

/// A class's filter slices from one producer atom.
#[derive(Clone, Debug)]
pub struct Part {
    /// The atom (one position of one producer).
    pub atom: AtomId,
    /// `(segment, index along the member axis)` of every weight member of the producer.
    pub slices: Vec<(usize, usize)>,
}

/// Norm of a part's slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Sum of |x| over the part's slices.
    L1,
    /// √(Σ x²) over the part's slices.
    L2,
    /// Σ x² over the part's slices.
    SquaredL2,
}

/// Columns of a group's filter vectors: key `(segment, occurrence)` → key number, and the
/// width of every key in order.
#[derive(Default)]
struct Layout {
    index: HashMap<(usize, usize), usize>,
    widths: Vec<usize>,
}

/// Producer filter slices of every class of a [`ChannelGroups`]; borrows the model's weights.
pub struct Filters<'a> {
    segments: Vec<Segment<'a>>,
    parts: Vec<Vec<Part>>,
    /// `[l1, sum of squares]` of every slice, by segment then index.
    stats: Vec<Vec<[f64; 2]>>,
}

impl<'a> Filters<'a> {
    /// Gathers the slices of every class and their L1 / squared-L2 norms (one pass over each
    /// producer weight). Weights that are not initializers or not numeric are skipped.
    pub fn new(model: &'a Model, groups: &ChannelGroups) -> Filters<'a> {
        let g = &model.graph;
        let mut segments = Vec::new();
        let mut part_of_atom: HashMap<AtomId, Part> = HashMap::new();
        let mut seen: HashMap<(NodeId, usize, usize), usize> = HashMap::new();
        for grp in &groups.groups {
            for src in grp.sources.iter().filter(|s| !s.constant) {
                let node = g.node(src.node);
                let mut slices_of: Vec<Vec<(usize, usize)>> = vec![Vec::new(); src.atoms.len()];
                for l in groups
                    .links
                    .get(&src.node)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    let Link::Member {
                        input,
                        axis,
                        slot,
                        map,
                    } = l
                    else {
                        continue;
                    };
                    if *slot != src.slot {
                        continue;
                    }
                    let Some(t) = node.input(*input).and_then(|v| g.init(v)) else {
                        continue;
                    };
                    let seg = match seen.get(&(src.node, *input, *axis)) {
                        Some(&s) => s,
                        None => {
                            let Some(s) = segment(t, *axis) else { continue };
                            segments.push(s);
                            seen.insert((src.node, *input, *axis), segments.len() - 1);
                            segments.len() - 1
                        }
                    };
                    let len = segments[seg].len;
                    for (pos, slices) in slices_of.iter_mut().enumerate() {
                        let idx = match map {
                            Map::Identity => Some(pos),
                            Map::Index(m) => m.get(pos).copied().flatten(),
                        };
                        if let Some(i) = idx.filter(|i| *i < len) {
                            slices.push((seg, i));
                        }
                    }
                }
                for (&atom, slices) in src.atoms.iter().zip(slices_of) {
                    part_of_atom.insert(atom, Part { atom, slices });
                }
            }
        }
        let parts = groups
            .class_atoms
            .iter()
            .map(|atoms| {
                atoms
                    .iter()
                    .filter_map(|a| part_of_atom.remove(a))
                    .collect()
            })
            .collect();
        let stats = segments.iter().map(slice_stats).collect();
        Filters {
            segments,
            parts,
            stats,
        }
    }

    /// Number of classes covered.
    pub fn classes(&self) -> usize {
        self.parts.len()
    }

    /// The parts of `class` (empty for classes with no weight-bearing producer, e.g. channels
    /// added by Pad, or an out-of-range class).
    pub fn parts(&self, class: usize) -> &[Part] {
        self.parts.get(class).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Elements of a slice of `segment`.
    pub fn slice_width(&self, segment: usize) -> usize {
        self.segments.get(segment).map_or(0, Segment::width)
    }

    /// The `norm` of one part.
    pub fn part_norm(&self, part: &Part, norm: Norm) -> f64 {
        let stat = |&(s, i): &(usize, usize)| self.stats[s][i];
        match norm {
            Norm::L1 => part.slices.iter().map(|x| stat(x)[0]).sum(),
            Norm::SquaredL2 => part.slices.iter().map(|x| stat(x)[1]).sum(),
            Norm::L2 => part.slices.iter().map(|x| stat(x)[1]).sum::<f64>().sqrt(),
        }
    }

    /// The `norm` of every class: each part's norm, combined over the class's parts with
    /// `reduce` (0 for a class without parts).
    pub fn class_norms(&self, norm: Norm, reduce: Reduce) -> Vec<f64> {
        let mut buf = Vec::new();
        self.parts
            .iter()
            .map(|parts| {
                buf.clear();
                buf.extend(parts.iter().map(|p| self.part_norm(p, norm)));
                reduce.apply(&buf)
            })
            .collect()
    }

    /// The column layout of the filter vectors of `classes`: one key per
    /// `(segment, occurrence within the class)`, in order of first appearance. A class's
    /// vector concatenates its slices at their keys' columns, zeros elsewhere, so classes of a
    /// group with several producers (or several atoms per producer) share one space.
    fn layout(&self, classes: &[usize]) -> Layout {
        let mut lay = Layout::default();
        let mut occ: HashMap<usize, usize> = HashMap::new();
        for &c in classes {
            occ.clear();
            for part in self.parts(c) {
                for &(s, _) in &part.slices {
                    let k = occ.entry(s).or_insert(0);
                    let key = (s, *k);
                    *k += 1;
                    if let Entry::Vacant(e) = lay.index.entry(key) {
                        e.insert(lay.widths.len());
                        lay.widths.push(self.segments[s].width());
                    }
                }
            }
        }
        lay
    }

    /// Dimension of the filter vectors of `classes` (see [`Filters::gram`]).
    pub fn vector_len(&self, classes: &[usize]) -> usize {
        self.layout(classes).widths.iter().sum()
    }

    /// The filter vectors of `classes` as rows (see [`Filters::gram`] for the layout).
    /// Allocates `classes.len() × vector_len` floats: for tests and small groups.
    pub fn matrix(&self, classes: &[usize]) -> Array2<f32> {
        let lay = self.layout(classes);
        self.block(classes, &lay, 0..lay.widths.len())
    }

    /// Rows of `classes` restricted to the layout keys `keys`.
    fn block(&self, classes: &[usize], lay: &Layout, keys: std::ops::Range<usize>) -> Array2<f32> {
        let mut offset = vec![0usize; lay.widths.len()];
        let mut w = 0;
        for k in keys.clone() {
            offset[k] = w;
            w += lay.widths[k];
        }
        let mut m = Array2::<f32>::zeros((classes.len(), w));
        let mut occ: HashMap<usize, usize> = HashMap::new();
        for (r, &c) in classes.iter().enumerate() {
            occ.clear();
            let mut row = m.row_mut(r);
            let Some(row) = row.as_slice_mut() else {
                continue;
            };
            for part in self.parts(c) {
                for &(s, i) in &part.slices {
                    let k = occ.entry(s).or_insert(0);
                    let key = (s, *k);
                    *k += 1;
                    let Some(&col) = lay.index.get(&key) else {
                        continue;
                    };
                    if !keys.contains(&col) {
                        continue;
                    }
                    let seg = &self.segments[s];
                    let o = offset[col];
                    seg.read(i, &mut row[o..o + seg.width()]);
                }
            }
        }
        m
    }

    /// The Gram matrix `G[i][j] = ⟨x_i − μ, x_j − μ⟩` of the filter vectors of `classes`
    /// (μ their mean; centring changes no distance and keeps float32 products accurate), so
    /// that `‖x_i − x_j‖² = G[i][i] + G[j][j] − 2·G[i][j]`. Built in column blocks of at most
    /// 64 MiB with float32 products (matrixmultiply), summed in f64.
    pub fn gram(&self, classes: &[usize]) -> Array2<f64> {
        let n = classes.len();
        let mut gram = Array2::<f64>::zeros((n, n));
        if n == 0 {
            return gram;
        }
        let lay = self.layout(classes);
        let order = &lay.widths;
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut w = 0;
            while end < order.len() && (end == start || (w + order[end]) * n <= BLOCK_ELEMS) {
                w += order[end];
                end += 1;
            }
            let mut x = self.block(classes, &lay, start..end);
            if let Some(mean) = x.mean_axis(ndarray::Axis(0)) {
                x -= &mean;
            }
            add_gram(&mut gram, &x);
            start = end;
        }
        gram
    }
}

/// Rows per block of the block-triangular Gram product.
const GRAM_ROWS: usize = 256;

/// Adds `x·xᵀ` to `gram`, computing only the blocks on and above the diagonal (the product
/// is symmetric) with float32 products.
fn add_gram(gram: &mut Array2<f64>, x: &Array2<f32>) {
    let n = x.nrows();
    let starts: Vec<usize> = (0..n).step_by(GRAM_ROWS).collect();
    for &b in &starts {
        let be = (b + GRAM_ROWS).min(n);
        let xb = x.slice(s![b..be, ..]);
        for &c in starts.iter().filter(|&&c| c >= b) {
            let ce = (c + GRAM_ROWS).min(n);
            let g = xb.dot(&x.slice(s![c..ce, ..]).t());
            for ((i, j), v) in g.indexed_iter() {
                let v = *v as f64;
                gram[[b + i, c + j]] += v;
                if c != b {
                    gram[[c + j, b + i]] += v;
                }
            }
        }
    }
}

/// A weight member as a [`Segment`], when numeric and `axis` is in range.
fn segment(t: &Tensor, axis: usize) -> Option<Segment<'_>> {
    let shape = t.shape();
    if shape.len() < 2 || axis >= shape.len() {
        return None;
    }
    let data = if t.dtype() == DType::F32 {
        Data::F32(&t.raw()[..])
    } else {
        Data::Owned(t.to_f32_vec()?)
    };
    let n: usize = shape.iter().product();
    let have = match &data {
        Data::F32(b) => b.len() / 4,
        Data::Owned(v) => v.len(),
    };
    if have != n {
        return None;
    }
    Some(Segment {
        data,
        outer: shape[..axis].iter().product(),
        len: shape[axis],
        inner: shape[axis + 1..].iter().product(),
    })
}

/// `[l1, sum of squares]` of every slice of `seg` (outer blocks added in order).
fn slice_stats(seg: &Segment) -> Vec<[f64; 2]> {
    let mut out = vec![[0f64; 2]; seg.len];
    for o in 0..seg.outer {
        for (i, acc) in out.iter_mut().enumerate() {
            let mut s = [0f64; 2];
            seg.data
                .accumulate((o * seg.len + i) * seg.inner, seg.inner, &mut s);
            acc[0] += s[0];
            acc[1] += s[1];
        }
    }
    out
}
