//! Per-layer latency tables: each weight layer the op knows how to resize ([`Op::resized`]:
//! Conv) is cut out of the model, rebuilt alone at a grid of input/output widths, and timed
//! on the target runtime; the medians form its [`Surface`]. Layers with the same
//! configuration share one entry (ResNet-50's 53 convolutions are 23 configurations). A
//! model's calibration, the line from the layers' sum to its whole-model latency
//! ([`crate::analysis::latency_model::fit`]), is kept per model structure.
//!
//! The table is JSON, readable and pinnable (`--latency-table FILE`): one runtime
//! (backend, device, threads, batch) per file; entries only added, never re-timed. This module
//! builds and stores tables; it does not predict (see [`crate::analysis::latency_model`]) and
//! does not choose channels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::latency_model::Surface;
use crate::analysis::Shapes;
use crate::bench::{bench, BenchOptions};
use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Graph, Model, NodeId, Tensor};
use crate::onnx::proto::ModelProto;
use crate::ops::Resized;
use crate::plan::allocate::gcd;
use crate::temp_dir::TempDir;

use super::reporter::Reporter;

/// The table format this build reads and writes.
pub const TABLE_FORMAT: u32 = 1;

/// Sampled widths of a layer, as fractions of its full width (rounded to the hardware
/// multiple; see [`grid`]).
const FRACTIONS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

/// Latency surfaces of layer configurations and calibrations of models, for one runtime.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// [`TABLE_FORMAT`].
    pub format: u32,
    /// The runtime the entries were timed on (`ort cpu threads=2 batch=1`).
    pub runtime: String,
    /// Per layer configuration (op, attributes, full input shapes): its surface.
    pub layers: BTreeMap<String, Surface>,
    /// Per model structure ([`crate::plan::fingerprint`]): its calibration.
    pub models: BTreeMap<String, Calibration>,
    /// Per model structure: whole-model measurements `(MACs, latency)` of candidates in the
    /// FLOPs target's order, fractions of the original's ([`MacsCurve`], `--latency-search
    /// curve`); an empty list is a model whose first measurement agreed with the prediction.
    ///
    /// [`MacsCurve`]: crate::analysis::latency_model::MacsCurve
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub curves: BTreeMap<String, Vec<(f64, f64)>>,
}

/// The line from a model's layer sum to its whole-model latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `(layer sum, measured median seconds)` of the model and of uniformly pruned copies.
    pub points: Vec<(f64, f64)>,
    /// Whole-model seconds ≈ `a + b · layer sum`.
    pub a: f64,
    /// See `a`.
    pub b: f64,
    /// `(layer sum, seconds)` of pruned candidates whose measurement disagreed with the
    /// prediction; when there are any, the line goes through the model's own point with the
    /// slope that fits them ([`Calibration::line`]).
    #[serde(default)]
    pub corrections: Vec<(f64, f64)>,
    /// The model's latency as a fraction of the original's it was pruned from (branches
    /// dropped first), timed in the same run as `points`; absent when the model is the
    /// original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
}

impl Calibration {
    /// The line `(a, b)` predictions use: through the model's point fitted to the
    /// corrections when there are any (and they give a positive slope), else `(a, b)`.
    pub fn line(&self) -> (f64, f64) {
        match self.points.first() {
            Some(&origin) if !self.corrections.is_empty() => {
                crate::analysis::latency_model::fit_through(origin, &self.corrections)
                    .unwrap_or((self.a, self.b))
            }
            _ => (self.a, self.b),
        }
    }
}

impl LatencyTable {
    /// An empty table for `runtime`.
    pub fn new(runtime: &str) -> LatencyTable {
        LatencyTable {
            format: TABLE_FORMAT,
            runtime: runtime.to_string(),
            ..Default::default()
        }
    }

    /// The table at `path` (`None` when there is no file). Errors name the file: not a
    /// table, another format, another runtime than `runtime`, an invalid surface.
    pub fn load(path: &Path, runtime: &str) -> Result<Option<LatencyTable>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let bad = |why: String| Error::Usage(format!("{}: {why}", path.display()));
        let t: LatencyTable = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a lopper latency table: {e}")))?;
        if t.format != TABLE_FORMAT {
            return Err(bad(format!(
                "latency table format {} (this build reads {TABLE_FORMAT})",
                t.format
            )));
        }
        if t.runtime != runtime {
            return Err(bad(format!(
                "a latency table for '{}', not for '{runtime}' (use another file)",
                t.runtime
            )));
        }
        if let Some((k, _)) = t.layers.iter().find(|(_, s)| !s.is_valid()) {
            return Err(bad(format!("invalid surface for layer '{k}'")));
        }
        let bad_fit = |c: &Calibration| {
            !(c.a.is_finite() && c.b.is_finite() && c.b > 0.0)
                || c.relative.is_some_and(|r| !(r.is_finite() && r > 0.0))
        };
        if let Some((k, _)) = t.models.iter().find(|(_, c)| bad_fit(c)) {
            return Err(bad(format!("invalid calibration for model {k}")));
        }
        let bad_point =
            |&(m, l): &(f64, f64)| !(m > 0.0 && m.is_finite() && l > 0.0 && l.is_finite());
        if let Some((k, _)) = t.curves.iter().find(|(_, c)| c.iter().any(bad_point)) {
            return Err(bad(format!(
                "invalid measurement in the curve of model {k}"
            )));
        }
        Ok(Some(t))
    }

    /// Writes the table to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Usage(format!("cannot encode the latency table: {e}")))?;
        bytes.push(b'\n');
        crate::onnx::save::write_atomic(path, &bytes)
    }
}

/// A layer of a model the table can time.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The node.
    pub node: NodeId,
    /// Its configuration's key in [`LatencyTable::layers`].
    pub key: String,
    /// Full input and output widths.
    pub widths: (usize, usize),
    /// Whether the widths are tied (depthwise, or a grouped convolution losing whole groups).
    pub tied: bool,
    /// Widths are multiples of this (see [`Resized::multiple`]).
    pub multiple: usize,
}

/// The layers of `model` its ops can resize (their input shapes known, the batch axis set to
/// `batch`), in node order.
pub fn timed_layers(model: &Model, shapes: &Shapes, batch: usize) -> Vec<Layer> {
    let g = &model.graph;
    let mut out = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let Some(inputs) = static_inputs(g, shapes, n, batch) else {
            continue;
        };
        let refs: Vec<Option<&[usize]>> = inputs.iter().map(|s| s.as_deref()).collect();
        // The op's own (out, in) channels of its weight, then the layer at those widths.
        let Some((cout, cin)) = refs
            .get(1)
            .copied()
            .flatten()
            .and_then(|w| op.layer_channels(node, w))
        else {
            continue;
        };
        let Some(full) = op.resized(node, &refs, cin, cout) else {
            continue;
        };
        out.push(Layer {
            node: n,
            key: layer_key(&node.op_type, &node.domain, &full),
            widths: (cin, cout),
            tied: full.tied,
            multiple: full.multiple,
        });
    }
    out
}

/// Static input shapes of node `n` (the batch axis of input 0 set to `batch`); `None` when
/// one is not known or the first two are missing.
fn static_inputs(
    g: &Graph,
    shapes: &Shapes,
    n: NodeId,
    batch: usize,
) -> Option<Vec<Option<Vec<usize>>>> {
    let node = g.node(n);
    let mut out = Vec::new();
    for (p, v) in node.inputs.iter().enumerate() {
        let Some(v) = v else {
            out.push(None);
            continue;
        };
        let shape = shapes.get(*v)?.shape.as_ref()?;
        let mut dims = Vec::with_capacity(shape.len());
        for (axis, d) in shape.iter().enumerate() {
            dims.push(match d {
                Dim::Known(k) if !(p == 0 && axis == 0) => *k,
                _ if p == 0 && axis == 0 => batch,
                _ => return None,
            });
        }
        out.push(Some(dims));
    }
    (out.len() >= 2 && out[0].is_some() && out[1].is_some()).then_some(out)
}

/// The key of a layer configuration: op, input shapes and attributes at full width.
fn layer_key(op_type: &str, domain: &str, full: &Resized) -> String {
    let mut attrs: Vec<String> = full
        .attrs
        .iter()
        .map(|a| {
            format!(
                "{}={:?}{:?}{:?}{:?}{:?}",
                a.name(),
                a.i,
                a.f,
                a.s.as_deref().map(String::from_utf8_lossy),
                a.ints,
                a.floats
            )
        })
        .collect();
    attrs.sort();
    let shapes: Vec<String> = full.inputs.iter().map(|s| format!("{s:?}")).collect();
    let op = if domain.is_empty() {
        op_type.to_string()
    } else {
        format!("{domain}.{op_type}")
    };
    format!("{op} {} {}", shapes.join(" "), attrs.join(" "))
}

/// How the search rounds kept widths (the allocation's `round_to` and `round_from`): the
/// table samples, and the calibration copies keep, only widths the search can choose, so that
/// no timing is made in another kernel regime than the candidates'. (On a machine whose
/// blocks are 16 channels, copies rounded to 8 kept 24- and 8-channel layers that ONNX
/// Runtime runs unblocked: ResNet-20's calibration line then put the first candidate at ×0.50
/// where it measured ×0.33–0.37.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rounding {
    /// Kept widths are multiples of this (1: exact widths).
    pub multiple: usize,
    /// Layers narrower than this keep exact widths.
    pub from: usize,
}

impl Default for Rounding {
    /// Multiples of 8 from 16 channels (ONNX Runtime's block on AVX2 machines).
    fn default() -> Self {
        Rounding {
            multiple: 8,
            from: 16,
        }
    }
}

impl Rounding {
    /// The multiple a layer of `full` channels whose widths are multiples of `group` is
    /// sampled at: the rounding's (and `group`'s) from [`from`](Self::from) channels, as the
    /// allocation keeps them (a 24-channel layer at blocks of 16 keeps 16 or 24), else
    /// `group`.
    pub fn step(&self, full: usize, group: usize) -> usize {
        let group = group.max(1);
        let lcm = |a: usize, b: usize| a / gcd(a, b) * b;
        let step = lcm(self.multiple.max(1), group);
        if full >= self.from.max(step) {
            step
        } else {
            group
        }
    }
}

/// The sampled widths of a layer `full` channels wide whose widths must be multiples of
/// `group` (the layer's [`Resized::multiple`]): the [`FRACTIONS`] of it rounded as the search
/// rounds ([`Rounding::step`]), ascending and distinct.
pub fn grid(full: usize, group: usize, rounding: Rounding) -> Vec<usize> {
    let m = rounding.step(full, group);
    let mut w: Vec<usize> = FRACTIONS
        .iter()
        .map(|f| ((full as f64 * f / m as f64).round() as usize).max(1) * m)
        .filter(|&w| w <= full)
        .collect();
    w.push(full);
    w.sort_unstable();
    w.dedup();
    w
}

/// Most layer copies timed together in one interleaved bench (each is a loaded session).
const MAX_INTERLEAVED: usize = 512;

/// Most bytes of inputs and weights (float32) of the layer copies timed together.
const MAX_INTERLEAVED_BYTES: usize = 1 << 30;

/// One layer configuration's grid, written out and waiting to be timed.
struct Pending {
    key: String,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    paths: Vec<PathBuf>,
    bytes: usize,
}

/// Times the grid of every layer in `layers` whose configuration `table` lacks and adds its
/// surface; `say` is told each configuration prepared, then counts the rounds of the timing.
/// Returns how many were timed.
///
/// The grids of all configurations are timed in one interleaved bench (in chunks of at most
/// [`MAX_INTERLEAVED`] copies and [`MAX_INTERLEAVED_BYTES`]), not one configuration after the
/// other: a slow spell of the machine then falls on every configuration alike instead of
/// inflating one layer's whole surface (timed layer by layer, two fresh ResNet-50 tables
/// differed per configuration by a standard deviation of 5–9%, one layer by 32% at every
/// grid point).
pub fn time_layers(
    table: &mut LatencyTable,
    model: &Model,
    shapes: &Shapes,
    layers: &[Layer],
    (bench_opts, rounding): (&BenchOptions, Rounding),
    say: &mut dyn Reporter,
) -> Result<usize> {
    let scratch = TempDir::new("latency-table")?;
    let mut pending: Vec<Pending> = Vec::new();
    for layer in layers {
        if table.layers.contains_key(&layer.key) || pending.iter().any(|p| p.key == layer.key) {
            continue;
        }
        let g = &model.graph;
        let node = g.node(layer.node);
        say.stage(&format!("preparing layer {} ({})", node.name, node.op_type));
        let (ins, outs) = if layer.tied {
            (grid(layer.widths.0, layer.multiple, rounding), Vec::new())
        } else {
            let m = layer.multiple;
            (
                grid(layer.widths.0, m, rounding),
                grid(layer.widths.1, m, rounding),
            )
        };
        let pairs: Vec<(usize, usize)> = if layer.tied {
            ins.iter().map(|&c| (c, c)).collect()
        } else {
            ins.iter()
                .flat_map(|&i| outs.iter().map(move |&o| (i, o)))
                .collect()
        };
        let inputs = static_inputs(g, shapes, layer.node, bench_opts.batch).unwrap_or_default();
        let refs: Vec<Option<&[usize]>> = inputs.iter().map(|s| s.as_deref()).collect();
        let Some(op) = crate::ops::lookup(&node.domain, &node.op_type) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = Vec::with_capacity(pairs.len());
        let mut bytes = 0usize;
        for &(cin, cout) in &pairs {
            let resized = op.resized(node, &refs, cin, cout).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: cannot time {} at {cin}/{cout} channels",
                    node.name, node.op_type
                ))
            })?;
            bytes = resized.inputs.iter().fold(bytes, |b, s| {
                b.saturating_add(s.iter().product::<usize>().saturating_mul(4))
            });
            let alone = layer_model(model, &node.op_type, &node.domain, &resized);
            let path = scratch
                .path()
                .join(format!("layer-{}-{}.onnx", pending.len(), paths.len()));
            alone.save(&path, &Default::default())?;
            paths.push(path);
        }
        pending.push(Pending {
            key: layer.key.clone(),
            inputs: ins,
            outputs: outs,
            paths,
            bytes,
        });
    }
    let timed = pending.len();
    if timed > 0 {
        say.stage(&format!("timing {timed} layer configurations, interleaved"));
    }
    let sizes: Vec<(usize, usize)> = pending.iter().map(|p| (p.paths.len(), p.bytes)).collect();
    let mut rest = pending.into_iter();
    for n in chunk_lengths(&sizes, MAX_INTERLEAVED, MAX_INTERLEAVED_BYTES) {
        let chunk: Vec<Pending> = rest.by_ref().take(n).collect();
        let paths: Vec<PathBuf> = chunk.iter().flat_map(|p| p.paths.iter().cloned()).collect();
        let report = bench(&paths, bench_opts, &mut |done, total| {
            say.count(done, total)
        })?;
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        let mut medians = report.models.iter().map(|m| m.latency.median);
        for p in chunk {
            let seconds = medians.by_ref().take(p.paths.len()).collect();
            let (inputs, outputs) = (p.inputs, p.outputs);
            table.layers.insert(
                p.key,
                Surface {
                    inputs,
                    outputs,
                    seconds,
                },
            );
        }
    }
    Ok(timed)
}

/// Splits configurations of `(copies, bytes)` into consecutive chunks of at most `most`
/// copies and `most_bytes` bytes (a configuration over either limit alone is a chunk of its
/// own); returns each chunk's number of configurations.
fn chunk_lengths(sizes: &[(usize, usize)], most: usize, most_bytes: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut n, mut count, mut bytes) = (0usize, 0usize, 0usize);
    for &(c, b) in sizes {
        let (c2, b2) = (count + c, bytes.saturating_add(b));
        if n > 0 && (c2 > most || b2 > most_bytes) {
            out.push(n);
            (n, count, bytes) = (1, c, b);
        } else {
            (n, count, bytes) = (n + 1, c2, b2);
        }
    }
    if n > 0 {
        out.push(n);
    }
    out
}

/// The layer alone: input 0 a graph input, the other inputs float32 constants (a fixed,
/// non-zero pattern), one output; the source model's opsets.
fn layer_model(source: &Model, op_type: &str, domain: &str, r: &Resized) -> Model {
    let mut g = Graph::new();
    let x = crate::ops::build::add_input(&mut g, "x", DType::F32, &r.inputs[0]);
    let mut inputs = vec![Some(x)];
    for (p, shape) in r.inputs.iter().enumerate().skip(1) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let t = Tensor::from_f32(shape.clone(), &values);
        inputs.push(Some(g.add_initializer(&format!("w{p}"), t)));
    }
    let n = g.add_node("layer", op_type, &inputs, &["y"], r.attrs.clone());
    g.node_mut(n).domain = domain.to_string();
    let y = g.node(n).outputs[0].expect("add_node gives every output a value");
    g.outputs.push(y);
    let mut m = Model {
        graph: g,
        rest: ModelProto {
            ir_version: Some(8),
            opset_import: source.rest.opset_import.clone(),
            producer_name: Some("lopper latency table".into()),
            ..Default::default()
        },
    };
    if let Ok(shapes) = crate::analysis::infer_shapes(&m) {
        if let Some(f) = shapes.get(y).and_then(|f| f.shape.clone()) {
            let dims: Option<Vec<usize>> = f
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => Some(*k),
                    _ => None,
                })
                .collect();
            if let Some(dims) = dims {
                crate::ops::build::declare(&mut m.graph, y, DType::F32, &dims);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_are_timed_in_chunks_within_both_limits() {
        // Copies: 16 + 16 + 4 fit 40; the next 16 starts a chunk.
        let sizes = [(16, 10), (16, 10), (4, 10), (16, 10), (9, 10)];
        assert_eq!(chunk_lengths(&sizes, 40, 1000), vec![3, 2]);
        // Bytes: at most 25, so two configurations a chunk.
        assert_eq!(chunk_lengths(&sizes, 512, 25), vec![2, 2, 1]);
        // A configuration over a limit on its own is still timed, alone.
        assert_eq!(
            chunk_lengths(&[(2, 1), (50, 1), (2, 1)], 40, 1000),
            vec![1, 1, 1]
        );
        assert_eq!(chunk_lengths(&[], 40, 1000), Vec::<usize>::new());
        // Every configuration lands in exactly one chunk.
        let many: Vec<(usize, usize)> = (0..100).map(|i| (1 + i % 16, i * 7)).collect();
        assert_eq!(chunk_lengths(&many, 64, 500).iter().sum::<usize>(), 100);
    }

    #[test]
    fn grids_round_like_the_search() {
        let r8 = Rounding {
            multiple: 8,
            from: 32,
        };
        assert_eq!(grid(64, 1, r8), vec![16, 32, 48, 64]);
        assert_eq!(grid(256, 1, r8), vec![64, 128, 192, 256]);
        // Narrow layers keep exact widths; a wider one not a multiple of 8 samples the
        // multiples the allocation can keep, and its full width.
        assert_eq!(grid(16, 1, r8), vec![4, 8, 12, 16]);
        assert_eq!(grid(36, 1, r8), vec![8, 16, 24, 36]);
        // Grouped: multiples of the group (and of 8 where it can).
        assert_eq!(grid(96, 12, r8), vec![24, 48, 72, 96]);
        assert_eq!(grid(6, 1, r8), vec![2, 3, 5, 6]);
        // Blocks of 16 from 16 channels: no width the search cannot keep is timed.
        let r16 = Rounding {
            multiple: 16,
            from: 16,
        };
        assert_eq!(grid(16, 1, r16), vec![16]);
        assert_eq!(grid(32, 1, r16), vec![16, 32]);
        assert_eq!(grid(96, 1, r16), vec![32, 48, 80, 96]);
        assert_eq!(grid(12, 1, r16), vec![3, 6, 9, 12]);
        assert_eq!(grid(24, 1, r16), vec![16, 24]);
        // Exact widths: the plain fractions.
        let exact = Rounding {
            multiple: 1,
            from: 0,
        };
        assert_eq!(grid(16, 1, exact), vec![4, 8, 12, 16]);
        assert_eq!(grid(32, 1, exact), vec![8, 16, 24, 32]);
    }

    #[test]
    fn tables_round_trip_and_bad_files_are_named() {
        let dir = TempDir::new("table-test").unwrap();
        let path = dir.path().join("t.json");
        assert_eq!(LatencyTable::load(&path, "ort cpu").unwrap(), None);
        let mut t = LatencyTable::new("ort cpu");
        t.layers.insert(
            "Conv [1, 8, 4, 4] [8, 8, 3, 3]".into(),
            Surface {
                inputs: vec![4, 8],
                outputs: vec![4, 8],
                seconds: vec![1e-6, 2e-6, 2e-6, 4e-6],
            },
        );
        t.models.insert(
            "abc".into(),
            Calibration {
                points: vec![(1e-5, 2e-5)],
                a: 0.0,
                b: 2.0,
                corrections: vec![],
                relative: Some(0.5),
            },
        );
        t.curves.insert("abc".into(), vec![(0.5, 0.55)]);
        t.save(&path).unwrap();
        assert_eq!(
            LatencyTable::load(&path, "ort cpu").unwrap(),
            Some(t.clone())
        );
        let e = LatencyTable::load(&path, "tract cpu")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json") && e.contains("not for 'tract cpu'"),
            "{e}"
        );
        let mut bad_curve = t.clone();
        bad_curve.curves.insert("abc".into(), vec![(0.5, -1.0)]);
        bad_curve.save(&path).unwrap();
        let e = LatencyTable::load(&path, "ort cpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid measurement"), "{e}");
        t.layers.values_mut().next().unwrap().seconds.pop();
        t.save(&path).unwrap();
        let e = LatencyTable::load(&path, "ort cpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid surface"), "{e}");
        std::fs::write(&path, b"{").unwrap();
        let e = LatencyTable::load(&path, "ort cpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a lopper latency table"), "{e}");
    }
}
