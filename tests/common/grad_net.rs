//! A small graph builder for the backward-rule tests (`vjp_elementwise`, `vjp_more`,
//! `vjp_linear`): graph
//! inputs with seeded random values, nodes, and [`Net::check`], which compares every input's
//! compiled gradient with central finite differences run by ONNX Runtime.

use lopper::analysis::infer_shapes;
use lopper::ir::{DType, Fact, Graph, Model, Tensor, ValueId};
use lopper::onnx::proto::{AttributeProto, ModelProto, OperatorSetIdProto, ValueInfoProto};
use lopper::train::check::{check_gradients, CheckOptions};

/// A small graph under construction with its random feed.
pub struct Net {
    pub g: Graph,
    pub opset: i64,
    pub dtype: DType,
    pub feed: Vec<(String, Tensor)>,
    pub state: u64,
    pub nodes: usize,
}

impl Net {
    pub fn new(opset: i64, dtype: DType, seed: u64) -> Net {
        Net {
            g: Graph::new(),
            opset,
            dtype,
            feed: Vec::new(),
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            nodes: 0,
        }
    }

    /// Uniform in [0, 1).
    pub fn u(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A random dim in 1..=max.
    pub fn dim(&mut self, max: usize) -> usize {
        1 + (self.u() * max as f64) as usize % max
    }

    pub fn declare(&mut self, v: ValueId, name: &str, dtype: DType, shape: &[usize]) {
        let fact = Fact {
            dtype: Some(dtype),
            shape: Some(shape.iter().map(|&d| lopper::ir::Dim::Known(d)).collect()),
            ..Fact::default()
        };
        self.g.set_decl(
            v,
            ValueInfoProto {
                name: Some(name.into()),
                r#type: Some(fact.to_type()),
                ..Default::default()
            },
        );
        self.g.value_info.retain(|x| *x != v);
    }

    /// A graph input fed with `vals`.
    pub fn input_vals(&mut self, name: &str, shape: &[usize], vals: &[f64]) -> ValueId {
        let v = self.g.add_value(name);
        self.declare(v, name, self.dtype, shape);
        self.g.inputs.push(v);
        let t = Tensor::from_f64_as(self.dtype, shape.to_vec(), vals).unwrap();
        self.feed.push((name.into(), t));
        v
    }

    /// A graph input uniform in [lo, hi).
    pub fn input(&mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> ValueId {
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * self.u()).collect();
        self.input_vals(name, shape, &vals)
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f64 {
        self.u() * 2.0 - 1.0
    }

    /// A graph input uniform in [-1, 1).
    pub fn input_unit(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.input(name, shape, -1.0, 1.0)
    }

    /// A graph input whose values are distinct, 0.05 apart (no ties within a step).
    pub fn distinct(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let n: usize = shape.iter().product();
        let mut order: Vec<(f64, usize)> = (0..n).map(|i| (self.u(), i)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut vals = vec![0.0; n];
        for (rank, (_, i)) in order.into_iter().enumerate() {
            vals[i] = (rank as f64 - n as f64 / 2.0) * 0.05;
        }
        self.input_vals(name, shape, &vals)
    }

    /// A graph input with |x| in [0.1, 1): away from the kink at 0.
    pub fn input_away0(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = (0..n)
            .map(|i| {
                let m = 0.1 + 0.9 * self.u();
                if i % 2 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        self.input_vals(name, shape, &vals)
    }

    /// A float constant of the net's type.
    pub fn constant(&mut self, name: &str, shape: &[usize], vals: &[f64]) -> ValueId {
        let t = Tensor::from_f64_as(self.dtype, shape.to_vec(), vals).unwrap();
        self.g.add_initializer(name, t)
    }

    pub fn ints(&mut self, name: &str, v: &[i64]) -> ValueId {
        self.g
            .add_initializer(name, Tensor::from_i64(vec![v.len()], v))
    }

    /// A node with optional inputs and `n` outputs, named `op{k}`.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[Option<ValueId>],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<ValueId> {
        self.nodes += 1;
        let name = format!("{op}{}", self.nodes);
        let outs: Vec<String> = (0..n).map(|i| format!("{name}:{i}")).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let id = self.g.add_node(&name, op, inputs, &refs, attrs);
        self.g.node(id).outputs.iter().flatten().copied().collect()
    }

    pub fn node(&mut self, op: &str, inputs: &[ValueId], attrs: Vec<AttributeProto>) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|v| Some(*v)).collect();
        self.node_n(op, &ins, 1, attrs)[0]
    }

    /// The model with `out` as its only output.
    pub fn model(mut self, out: ValueId) -> (Model, Vec<(String, Tensor)>) {
        self.g.outputs.push(out);
        let rest = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            ..Default::default()
        };
        let mut model = Model {
            graph: self.g,
            rest,
        };
        let shapes = infer_shapes(&model).unwrap();
        let fact = shapes.get(out).cloned().unwrap();
        let dims: Vec<usize> = fact
            .shape
            .unwrap()
            .iter()
            .map(|d| d.known().unwrap())
            .collect();
        let name = model.graph.value(out).name.clone();
        let dtype = fact.dtype.unwrap();
        let mut net = Net::new(0, dtype, 0);
        net.g = model.graph;
        net.declare(out, &name, dtype, &dims);
        model.graph = net.g;
        (model, self.feed)
    }

    /// Checks the gradients of every input; returns the worst relative error. Float64: step
    /// 1e-4, tolerance 1e-6; otherwise step and tolerance 1e-2.
    pub fn check(self, out: ValueId, what: &str) -> f64 {
        let (tol, eps) = match self.dtype {
            DType::F64 => (1e-6, 1e-4),
            _ => (1e-2, 1e-2),
        };
        self.check_with(out, what, tol, eps)
    }

    /// [`Net::check`] with an explicit tolerance and finite-difference step.
    pub fn check_with(self, out: ValueId, what: &str, tol: f64, eps: f64) -> f64 {
        let (model, feed) = self.model(out);
        let names: Vec<String> = feed.iter().map(|(n, _)| n.clone()).collect();
        let wrt: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = CheckOptions {
            eps,
            max_elements: 64,
            ..CheckOptions::default()
        };
        let report =
            check_gradients(&model, &feed, &wrt, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        let worst = report.iter().map(|r| r.max_rel_error).fold(0.0, f64::max);
        println!(
            "{what}: max rel error {worst:.2e} ({} elements)",
            report.iter().map(|r| r.checked).sum::<usize>()
        );
        assert!(
            report.iter().all(|r| r.checked > 0),
            "{what}: nothing checked"
        );
        assert!(worst < tol, "{what}: {report:?}");
        worst
    }

    /// The error `check_gradients` gives.
    pub fn check_err(self, out: ValueId) -> String {
        let (model, feed) = self.model(out);
        let names: Vec<String> = feed.iter().map(|(n, _)| n.clone()).collect();
        let wrt: Vec<&str> = names.iter().map(String::as_str).collect();
        match check_gradients(&model, &feed, &wrt, &CheckOptions::default()) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }
}

/// A random shape of `rank` dims in 2..=5.
pub fn shape(net: &mut Net, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| 1 + net.dim(4)).collect()
}
