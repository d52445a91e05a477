//! Weight saliency: per element of every filter bank, how much the network needs it by one of
//! the indices of pruning at initialisation (what Neural Network Panning combines):
//!
//! * **magnitude** `|w|`;
//! * **SNIP** `|g ⊙ w|`, `g` the gradient of the cross-entropy over the scoring batches;
//! * **GraSP** `w ⊙ Hg` (high keeps: GraSP removes the weights whose removal least reduces the
//!   gradient flow, i.e. the highest `−w ⊙ Hg`), the Hessian-gradient product by a central
//!   difference of gradients, `(∇L(w + εg) − ∇L(w − εg)) / 2ε` with `ε‖g‖ = 10⁻³‖w‖`, where
//!   the paper differentiates twice;
//! * **SynFlow** `w ⊙ ∂R/∂w`, data-free: every float constant made positive, the input all
//!   ones, `R` the sum of the first output, BatchNormalization in inference mode. Each bank
//!   is divided by its L1 norm over its first dimension before the flow (exact for a chain of layers, where
//!   it scales every score alike; an approximation across residual adds) so that deep networks
//!   do not overflow float32, where the paper computes in float64;
//! * **random**, seeded (a baseline).
//!
//! Scores are taken at the model's weights with the masked entries zeroed; scores of masked
//! entries are meaningless. Gradients run in ONNX Runtime: a train step with gradient outputs
//! (BatchNormalization in training mode, as the network trains) and a SynFlow graph. Not done
//! here: ranking, combining indices or choosing masks ([`crate::pipeline::pan`]).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ir::{DType, Model, Tensor};
use crate::rng::SplitMix64;
use crate::runtime::{self, BackendKind, RuntimeOptions, Session};

use super::optim::Optimizer;
use super::step::{compile_train_step, StepOptions, TrainStep};

/// One saliency index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Index {
    /// `|w|`.
    Magnitude,
    /// `|g ⊙ w|`.
    Snip,
    /// `w ⊙ Hg`.
    Grasp,
    /// `w ⊙ ∂R/∂w` of the positive network on an all-ones input.
    Synflow,
    /// Uniform random, seeded.
    Random,
}

impl Index {
    /// Every index, in a fixed order.
    pub const ALL: [Index; 5] = [
        Index::Magnitude,
        Index::Snip,
        Index::Grasp,
        Index::Synflow,
        Index::Random,
    ];

    /// The index's name: `magnitude`, `snip`, `grasp`, `synflow` or `random`.
    pub fn name(self) -> &'static str {
        match self {
            Index::Magnitude => "magnitude",
            Index::Snip => "snip",
            Index::Grasp => "grasp",
            Index::Synflow => "synflow",
            Index::Random => "random",
        }
    }

    /// Parses [`Index::name`].
    pub fn parse(s: &str) -> Result<Index> {
        Index::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown saliency index '{s}' (expected magnitude, snip, grasp, synflow or \
                     random)"
                ))
            })
    }
}

/// Per filter bank (initializer name), one value per element, row-major.
pub type WeightMap = BTreeMap<String, Vec<f32>>;

/// The filter banks a weight mask covers: float32 initializers of rank ≥ 2 read as a layer's
/// weight ([`crate::ops::Op::layer`]: Conv, ConvTranspose, Gemm, MatMul) and by nothing else,
/// in graph order. Biases and normalisation parameters are never masked.
pub fn maskable_weights(model: &Model) -> Vec<String> {
    let g = &model.graph;
    let mut out: Vec<String> = Vec::new();
    let Ok(order) = g.topo_order() else {
        return out;
    };
    for n in order {
        let node = g.node(n);
        let Some(layer) =
            crate::ops::lookup(&node.domain, &node.op_type).and_then(|o| o.layer(node))
        else {
            continue;
        };
        let Some(v) = node.input(layer.weight) else {
            continue;
        };
        let val = g.value(v);
        let ok = g
            .init(v)
            .is_some_and(|t| t.dtype() == DType::F32 && t.shape().len() >= 2)
            && val.uses.iter().all(|&(u, _)| u == n);
        if ok && !out.contains(&val.name) {
            out.push(val.name.clone());
        }
    }
    out
}

/// Computes saliency on one model: its sessions are built once and reused for every masked
/// variant scored.
pub struct Scorer {
    model: Model,
    weights: Vec<String>,
    values: WeightMap,
    batches: Vec<(Tensor, Tensor)>,
    runtime: RuntimeOptions,
    seed: u64,
    grad: Option<(TrainStep, Box<dyn Session>)>,
    flow: Option<Flow>,
    dir: crate::temp_dir::TempDir,
}

/// The SynFlow graph's session: its input, and per bank the output of `∂R/∂w`.
struct Flow {
    session: Box<dyn Session>,
    input: (String, Vec<usize>),
    grads: Vec<(String, String)>,
}

impl Scorer {
    /// A scorer for `model` (prepared for training, [`super::init::prepare_model`]) on the
    /// labelled `batches` (inputs preprocessed; every batch the same size), seeded for the
    /// random index. Errors when the model has no maskable weight.
    pub fn new(
        model: &Model,
        batches: Vec<(Tensor, Tensor)>,
        runtime: RuntimeOptions,
        seed: u64,
    ) -> Result<Scorer> {
        let weights = maskable_weights(model);
        if weights.is_empty() {
            return Err(Error::Usage(
                "the model has no filter bank (Conv, Gemm or MatMul weight initializer) to mask"
                    .into(),
            ));
        }
        let g = &model.graph;
        let mut values = WeightMap::new();
        for w in &weights {
            let t = g
                .value_by_name(w)
                .and_then(|v| g.init(v))
                .and_then(Tensor::to_f32_vec)
                .ok_or_else(|| Error::tensor(w, "is not a float32 initializer"))?;
            values.insert(w.clone(), t);
        }
        Ok(Scorer {
            model: model.clone(),
            weights,
            values,
            batches,
            runtime,
            seed,
            grad: None,
            flow: None,
            dir: crate::temp_dir::TempDir::new("saliency")?,
        })
    }

    /// The banks scored, in graph order.
    pub fn weights(&self) -> &[String] {
        &self.weights
    }

    /// The model's weights, per bank.
    pub fn values(&self) -> &WeightMap {
        &self.values
    }

    /// `index`'s scores at the model's weights with `masks` applied (banks without a mask
    /// keep every element).
    pub fn score(&mut self, index: Index, masks: &WeightMap) -> Result<WeightMap> {
        let w = self.masked(masks);
        let product = |a: &WeightMap, b: &WeightMap, f: &dyn Fn(f32) -> f32| -> WeightMap {
            a.iter()
                .map(|(k, x)| {
                    let y = &b[k];
                    (k.clone(), x.iter().zip(y).map(|(x, y)| f(x * y)).collect())
                })
                .collect()
        };
        Ok(match index {
            Index::Magnitude => w
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|x| x.abs()).collect()))
                .collect(),
            Index::Snip => product(&w, &self.gradient(&w)?, &f32::abs),
            Index::Grasp => product(&w, &self.hessian_gradient(&w, masks)?, &|x| x),
            Index::Synflow => self.synflow(&w)?,
            Index::Random => {
                let mut rng = SplitMix64(self.seed ^ 0x5eed_5a11_e4c3);
                w.iter()
                    .map(|(k, x)| (k.clone(), x.iter().map(|_| rng.uniform_f32()).collect()))
                    .collect()
            }
        })
    }

    fn masked(&self, masks: &WeightMap) -> WeightMap {
        self.values
            .iter()
            .map(|(k, v)| {
                let v = match masks.get(k) {
                    Some(m) => v.iter().zip(m).map(|(w, m)| w * m).collect(),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// The mean gradient of the cross-entropy over the scoring batches at weights `w`.
    fn gradient(&mut self, w: &WeightMap) -> Result<WeightMap> {
        if self.batches.is_empty() {
            return Err(Error::Usage(
                "gradient-based saliency needs training batches".into(),
            ));
        }
        let (ts, sess) = match self.grad.take() {
            Some(g) => self.grad.insert(g),
            None => {
                let g = self.gradient_session()?;
                self.grad.insert(g)
            }
        };
        let mut sum: WeightMap = w
            .iter()
            .map(|(k, v)| (k.clone(), vec![0.0; v.len()]))
            .collect();
        let mut rng = SplitMix64(self.seed);
        let labels = ts
            .labels
            .clone()
            .ok_or_else(|| Error::Usage("saliency needs a classification loss".into()))?;
        for (x, y) in &self.batches {
            let mut feed: Vec<(String, Tensor)> = ts
                .initial_feed()
                .into_iter()
                .map(|(name, t)| match w.get(&name) {
                    Some(v) => (name, Tensor::from_f32(t.shape().to_vec(), v)),
                    None => (name, t),
                })
                .collect();
            feed.push((ts.x.clone(), x.clone()));
            feed.push((labels.clone(), y.clone()));
            feed.push((ts.lr.clone(), Tensor::from_f32(vec![], &[0.0])));
            feed.push((ts.step.clone(), Tensor::from_f32(vec![], &[1.0])));
            feed.extend(ts.noise_feed(&mut || rng.uniform_f32()));
            let out: BTreeMap<String, Tensor> = sess.run(&feed)?.into_iter().collect();
            for (p, o) in &ts.gradients {
                let (Some(acc), Some(t)) = (sum.get_mut(p), out.get(o)) else {
                    continue;
                };
                let g = t
                    .to_f32_vec()
                    .ok_or_else(|| Error::tensor(o, "gradient is not float32"))?;
                acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
            }
        }
        let n = self.batches.len() as f32;
        sum.values_mut()
            .for_each(|v| v.iter_mut().for_each(|x| *x /= n));
        if let Some((k, _)) = sum.iter().find(|(_, v)| v.iter().any(|x| !x.is_finite())) {
            return Err(Error::tensor(k, "its saliency gradient is not finite"));
        }
        Ok(sum)
    }

    fn gradient_session(&self) -> Result<(TrainStep, Box<dyn Session>)> {
        let batch = self.batches[0].0.shape().first().copied().unwrap_or(1);
        let opts = StepOptions {
            batch,
            optimizer: Optimizer::Sgd {
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            gradient_outputs: true,
            ..StepOptions::default()
        };
        let ts = compile_train_step(&self.model, &opts)?;
        let path = self.dir.path().join("gradient.onnx");
        ts.model.save(&path, &Default::default())?;
        let sess = runtime::load_with(BackendKind::Ort, &path, &self.runtime)?;
        Ok((ts, sess))
    }

    /// `Hg` at weights `w` (masked entries stay zero in the perturbation).
    fn hessian_gradient(&mut self, w: &WeightMap, masks: &WeightMap) -> Result<WeightMap> {
        let mut g = self.gradient(w)?;
        for (k, v) in g.iter_mut() {
            if let Some(m) = masks.get(k) {
                v.iter_mut().zip(m).for_each(|(x, m)| *x *= m);
            }
        }
        let norm = |m: &WeightMap| {
            m.values()
                .flatten()
                .map(|x| f64::from(*x).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (nw, ng) = (norm(w), norm(&g));
        if ng == 0.0 {
            return Ok(g);
        }
        let eps = 1e-3 * nw / ng;
        let shifted = |sign: f64| -> WeightMap {
            w.iter()
                .map(|(k, v)| {
                    let gv = &g[k];
                    let s: Vec<f32> = v
                        .iter()
                        .zip(gv)
                        .map(|(w, g)| (f64::from(*w) + sign * eps * f64::from(*g)) as f32)
                        .collect();
                    (k.clone(), s)
                })
                .collect()
        };
        let (up, down) = (shifted(1.0), shifted(-1.0));
        let gu = self.gradient(&up)?;
        let gd = self.gradient(&down)?;
        Ok(gu
            .iter()
            .map(|(k, a)| {
                let b = &gd[k];
                let hg = a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| ((f64::from(*a) - f64::from(*b)) / (2.0 * eps)) as f32)
                    .collect();
                (k.clone(), hg)
            })
            .collect())
    }

    /// SynFlow scores at weights `w` (see the module docs).
    fn synflow(&mut self, w: &WeightMap) -> Result<WeightMap> {
        let flow = match self.flow.take() {
            Some(f) => self.flow.insert(f),
            None => {
                let f = self.flow_session()?;
                self.flow.insert(f)
            }
        };
        let mut feed = Vec::with_capacity(w.len() + 1);
        let mut fed = WeightMap::new();
        let g = &self.model.graph;
        for (k, v) in w {
            let shape = g
                .value_by_name(k)
                .and_then(|id| g.init(id))
                .map(|t| t.shape().to_vec())
                .ok_or_else(|| Error::tensor(k, "is not an initializer"))?;
            let filters = shape[0].max(1) as f32;
            let l1: f32 = v.iter().map(|x| x.abs()).sum::<f32>() / filters;
            let scale = if l1 > 0.0 { 1.0 / l1 } else { 1.0 };
            let a: Vec<f32> = v.iter().map(|x| x.abs() * scale).collect();
            feed.push((k.clone(), Tensor::from_f32(shape, &a)));
            fed.insert(k.clone(), a);
        }
        let (name, shape) = &flow.input;
        let ones = vec![1.0f32; shape.iter().product()];
        feed.push((name.clone(), Tensor::from_f32(shape.clone(), &ones)));
        let out: BTreeMap<String, Tensor> = flow.session.run(&feed)?.into_iter().collect();
        let mut scores = WeightMap::new();
        for (k, o) in &flow.grads {
            let grad = out
                .get(o)
                .and_then(Tensor::to_f32_vec)
                .ok_or_else(|| Error::tensor(o, "SynFlow gradient missing"))?;
            let s: Vec<f32> = fed[k].iter().zip(&grad).map(|(a, g)| a * g).collect();
            if s.iter().any(|x| !x.is_finite()) {
                return Err(Error::tensor(
                    k,
                    "its SynFlow score overflows float32 (the network is too deep for the \
                     normalised flow)",
                ));
            }
            scores.insert(k.clone(), s);
        }
        Ok(scores)
    }

    fn flow_session(&self) -> Result<Flow> {
        let (m, input, grads) = synflow_graph(&self.model, &self.weights)?;
        let path = self.dir.path().join("synflow.onnx");
        m.save(&path, &Default::default())?;
        let session = runtime::load_with(BackendKind::Ort, &path, &self.runtime)?;
        Ok(Flow {
            session,
            input,
            grads,
        })
    }
}

/// The SynFlow graph of `model`: every float initializer made positive, `weights` as inputs,
/// the data input at batch 1, and per weight the gradient of the sum of the first output as
/// an output. Returns the graph, the data input's name and shape, and (weight, output) pairs.
#[allow(clippy::type_complexity)]
fn synflow_graph(
    model: &Model,
    weights: &[String],
) -> Result<(Model, (String, Vec<usize>), Vec<(String, String)>)> {
    use super::emit::initializer_to_input;
    let mut m = model.clone();
    crate::passes::upgrade_opset(&mut m, 17)?;
    let opset = m.opset();
    let g = &mut m.graph;
    let inits: Vec<_> = g.initializers.clone();
    for v in inits {
        let Some(t) = g.init(v) else { continue };
        if t.dtype() != DType::F32 {
            continue;
        }
        let Some(x) = t.to_f32_vec() else { continue };
        let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let t = Tensor::from_f32(t.shape().to_vec(), &abs);
        g.set_init(v, t);
    }
    let x = super::step::data_input(g)?;
    super::step::fix_batch(g, x, 1)?;
    let mut wv = Vec::with_capacity(weights.len());
    for w in weights {
        let v = g
            .value_by_name(w)
            .ok_or_else(|| Error::tensor(w, "is not in the model"))?;
        initializer_to_input(g, v)?;
        wv.push(v);
    }
    let shapes = crate::analysis::infer_shapes(&m)?;
    let g = &mut m.graph;
    let out = g
        .outputs
        .first()
        .copied()
        .ok_or_else(|| Error::Graph("the model has no output".into()))?;
    let grads = super::gradients(g, &shapes, opset, out, &wv)?;
    let mut list = Vec::new();
    let mut names = Vec::new();
    for ((w, gv), v) in weights.iter().zip(grads).zip(&wv) {
        let gv = gv.ok_or_else(|| Error::tensor(w, "does not reach the output"))?;
        let shape = super::emit::static_shape(g, &shapes, *v)?;
        list.push((gv, format!("{w}.synflow"), shape));
        names.push(w.clone());
    }
    let outs = super::step::name_outputs(g, list);
    crate::ir::verify(&m.graph)?;
    let shape = {
        let spec = crate::runtime::model_inputs(&m)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Usage("the model has no data input".into()))?;
        spec.dims
            .iter()
            .map(|d| d.ok_or_else(|| Error::tensor(&spec.name, "needs a static shape")))
            .collect::<Result<Vec<usize>>>()?
    };
    let name = m.graph.value(x).name.clone();
    Ok((m, (name, shape), names.into_iter().zip(outs).collect()))
}

#[cfg(test)]
#[path = "saliency_tests.rs"]
mod tests;
