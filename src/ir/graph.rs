//! The graph IR: arenas of nodes and values with typed ids and use-lists.
//!
//! Only the methods here mutate the graph, and they keep the use-lists and the name index
//! consistent. Deleting is unlink-then-[`Graph::compact`]. Everything the IR does not model
//! (doc strings, metadata, attributes, sparse initializers, ...) is carried verbatim so that
//! export writes back what no pass changed.

use std::collections::{BinaryHeap, HashMap};

use super::{NodeId, Tensor, ValueId};
use crate::error::{Error, Result};
use crate::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};

/// The port number used in a use-list for a value a node reads from inside a subgraph
/// attribute (an outer-scope capture), rather than through an input.
pub const CAPTURE_PORT: usize = usize::MAX;

/// Whether `domain` names the default ONNX operator set (`""` or `ai.onnx`).
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// An operator invocation.
#[derive(Clone, Debug)]
pub struct Node {
    /// Unique node name (may be empty in the file; import gives every node a name).
    pub name: String,
    /// ONNX op type.
    pub op_type: String,
    /// Op domain (`""` = the default ONNX domain).
    pub domain: String,
    /// Inputs; `None` is an omitted optional input (`""` in ONNX).
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs; `None` is an omitted optional output.
    pub outputs: Vec<Option<ValueId>>,
    /// Attributes, verbatim.
    pub attrs: Vec<AttributeProto>,
    /// Outer-scope values read by subgraph attributes (If/Loop/Scan bodies).
    pub captures: Vec<ValueId>,
    /// The rest of the NodeProto (doc_string, overload, metadata, device configurations).
    pub rest: NodeProto,
    /// Whether the file gave this node a name (unnamed nodes are written back unnamed).
    pub named_in_file: bool,
    pub(crate) removed: bool,
}

impl Node {
    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.iter().find(|a| a.name() == name)
    }

    /// An integer attribute.
    pub fn attr_i(&self, name: &str) -> Option<i64> {
        self.attr(name).map(|a| a.i())
    }

    /// A float attribute.
    pub fn attr_f(&self, name: &str) -> Option<f32> {
        self.attr(name).map(|a| a.f())
    }

    /// An integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    /// A string attribute (lossy UTF-8).
    pub fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, attr: AttributeProto) {
        match self.attrs.iter_mut().find(|a| a.name == attr.name) {
            Some(a) => *a = attr,
            None => self.attrs.push(attr),
        }
    }

    /// Removes an attribute; returns whether it was there.
    pub fn remove_attr(&mut self, name: &str) -> bool {
        let before = self.attrs.len();
        self.attrs.retain(|a| a.name() != name);
        before != self.attrs.len()
    }

    /// The input at `port`, if present.
    pub fn input(&self, port: usize) -> Option<ValueId> {
        self.inputs.get(port).copied().flatten()
    }

    /// The output at `port`, if present.
    pub fn output(&self, port: usize) -> Option<ValueId> {
        self.outputs.get(port).copied().flatten()
    }
}

/// Builds an integer attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// Builds an integer-list attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// Builds a float attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// Builds a tensor attribute.
pub fn attr_tensor(name: &str, t: &Tensor) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t.to_proto("")),
        ..Default::default()
    }
}

/// A tensor edge.
#[derive(Clone, Debug)]
pub struct Value {
    /// Unique name.
    pub name: String,
    /// The node and output port that computes it (`None` for inputs and initializers).
    pub producer: Option<(NodeId, usize)>,
    /// Every (node, input port) reading it; [`CAPTURE_PORT`] for subgraph captures.
    pub uses: Vec<(NodeId, usize)>,
    /// The constant contents, for initializers.
    pub init: Option<Tensor>,
    /// The initializer as read from the file, written back verbatim while `init` is unchanged.
    pub(crate) init_proto: Option<TensorProto>,
    /// The declared type (graph input/output or value_info entry), verbatim.
    pub decl: Option<ValueInfoProto>,
    pub(crate) removed: bool,
}

/// A computation graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    values: Vec<Value>,
    names: HashMap<String, ValueId>,
    /// Graph inputs in order (IR-3 models also list initializers here).
    pub inputs: Vec<ValueId>,
    /// Graph outputs in order.
    pub outputs: Vec<ValueId>,
    /// Initializers in file order.
    pub initializers: Vec<ValueId>,
    /// Values with a `value_info` entry, in file order.
    pub value_info: Vec<ValueId>,
    /// Values defined by sparse initializers (kept verbatim in `rest.sparse_initializer`).
    pub sparse_initializers: Vec<ValueId>,
    /// The rest of the GraphProto (name, doc_string, sparse initializers, annotations, metadata).
    pub rest: GraphProto,
}

/// A model: a graph plus everything else of the ModelProto, verbatim.
#[derive(Clone, Debug)]
pub struct Model {
    /// The main graph.
    pub graph: Graph,
    /// The ModelProto without its graph (opset imports, producer, metadata, functions, ...).
    pub rest: ModelProto,
}

impl Model {
    /// The opset version of the default ONNX domain (`""` or `ai.onnx`).
    pub fn opset(&self) -> i64 {
        self.rest
            .opset_import
            .iter()
            .find(|o| is_default_domain(o.domain()))
            .map_or(1, |o| o.version())
    }

    /// Declares operator set `domain` at version 1 unless the model already imports it (for
    /// nodes of a custom domain a pass has added).
    pub fn import_domain(&mut self, domain: &str) {
        if !self.rest.opset_import.iter().any(|o| o.domain() == domain) {
            self.rest
                .opset_import
                .push(crate::onnx::proto::OperatorSetIdProto {
                    domain: Some(domain.into()),
                    version: Some(1),
                });
        }
    }

    /// Gives the resident pages of every initializer that is a slice of a mapped file back to
    /// the kernel (see [`crate::onnx::mapped::release`]); a later read faults them back in.
    pub fn release_pages(&self) {
        for v in self.graph.value_ids() {
            if let Some(t) = self.graph.init(v) {
                t.release_pages();
            }
        }
    }
}

impl Graph {
    /// A new empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// A node by id, mutably. Do not change `inputs`/`outputs` through this: use the wiring
    /// methods, which keep use-lists correct.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.index()]
    }

    /// A value by id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    pub(crate) fn values_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.index()]
    }

    /// Sets the declared type (value_info) of a value; it is written to `value_info` on export
    /// unless the value is a graph input or output.
    pub fn set_decl(&mut self, id: ValueId, decl: crate::onnx::proto::ValueInfoProto) {
        if self.values[id.index()].decl.is_none() && !self.value_info.contains(&id) {
            self.value_info.push(id);
        }
        self.values[id.index()].decl = Some(decl);
    }

    /// The declared type of a value, mutably.
    pub fn decl_mut(&mut self, id: ValueId) -> Option<&mut crate::onnx::proto::ValueInfoProto> {
        self.values[id.index()].decl.as_mut()
    }

    /// The value named `name`.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// Ids of live nodes, in arena order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.removed)
            .map(|(i, _)| NodeId(i as u32))
    }

    /// Ids of live values, in arena order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.removed)
            .map(|(i, _)| ValueId(i as u32))
    }

    /// Arena size for nodes (an upper bound of node ids, for side tables).
    pub fn node_capacity(&self) -> usize {
        self.nodes.len()
    }

    /// Arena size for values (an upper bound of value ids, for side tables).
    pub fn value_capacity(&self) -> usize {
        self.values.len()
    }

    /// Number of live nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| !n.removed).count()
    }

    /// Whether `id` is live.
    pub fn is_live_node(&self, id: NodeId) -> bool {
        self.nodes.get(id.index()).is_some_and(|n| !n.removed)
    }

    /// The initializer of `v`, if it is one.
    pub fn init(&self, v: ValueId) -> Option<&Tensor> {
        self.values[v.index()].init.as_ref()
    }

    /// The initializer behind each input of `node`, by port (`None`: computed, a runtime
    /// input, or omitted).
    pub fn const_inputs(&self, node: &Node) -> Vec<Option<&Tensor>> {
        node.inputs
            .iter()
            .map(|v| v.and_then(|v| self.init(v)))
            .collect()
    }

    /// Whether `v` is a graph input that is not an initializer (a real runtime input).
    pub fn is_runtime_input(&self, v: ValueId) -> bool {
        self.inputs.contains(&v) && self.values[v.index()].init.is_none()
    }

    /// Adds a value with a unique name derived from `name`.
    pub fn add_value(&mut self, name: &str) -> ValueId {
        let name = self.fresh_name(name);
        self.insert_value(name)
    }

    pub(crate) fn insert_value(&mut self, name: String) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.names.insert(name.clone(), id);
        self.values.push(Value {
            name,
            producer: None,
            uses: Vec::new(),
            init: None,
            init_proto: None,
            decl: None,
            removed: false,
        });
        id
    }

    /// A name not used by any value, `base` itself if free.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) && !base.is_empty() {
            return base.to_string();
        }
        let base = if base.is_empty() { "v" } else { base };
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains_key(n))
            .unwrap_or_default()
    }

    /// Adds an initializer holding `t`.
    pub fn add_initializer(&mut self, name: &str, t: Tensor) -> ValueId {
        let id = self.add_value(name);
        self.values[id.index()].init = Some(t);
        self.initializers.push(id);
        id
    }

    /// Replaces the contents of initializer `v` (its original encoding is dropped). A declared
    /// type of the value (value_info, or a graph input in IR-3 models) follows the new tensor.
    pub fn set_init(&mut self, v: ValueId, t: Tensor) {
        let val = &mut self.values[v.index()];
        if val.init.is_none() {
            self.initializers.push(v);
        }
        if let Some(decl) = val.decl.as_mut() {
            if decl.r#type.is_some() {
                decl.r#type = Some(super::Fact::constant(t.clone()).to_type());
            }
        }
        if let Some(old) = val.init.replace(t) {
            // The old bytes are usually a slice of the mapped input file: give its pages back.
            old.release_pages();
        }
        val.init_proto = None;
    }

    /// Adds a node; its outputs are new values named after `outputs`.
    pub fn add_node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: &[Option<ValueId>],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        let node_name = self.fresh_node_name(name);
        let outs: Vec<Option<ValueId>> = outputs.iter().map(|o| Some(self.add_value(o))).collect();
        for (port, o) in outs.iter().enumerate() {
            if let Some(o) = o {
                self.values[o.index()].producer = Some((id, port));
            }
        }
        for (port, i) in inputs.iter().enumerate() {
            if let Some(i) = i {
                self.values[i.index()].uses.push((id, port));
            }
        }
        self.nodes.push(Node {
            name: node_name,
            op_type: op_type.to_string(),
            domain: String::new(),
            inputs: inputs.to_vec(),
            outputs: outs,
            attrs,
            captures: Vec::new(),
            rest: NodeProto::default(),
            named_in_file: true,
            removed: false,
        });
        id
    }

    /// Adds a node whose one output is the existing value `output` (which must have no
    /// producer, e.g. that of a node just removed): its readers and its name as a graph output
    /// stay.
    pub fn add_node_writing(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: &[Option<ValueId>],
        output: ValueId,
        attrs: Vec<AttributeProto>,
    ) -> NodeId {
        let id = self.add_node(name, op_type, inputs, &["written"], attrs);
        if let Some(tmp) = self.node(id).output(0) {
            self.set_output(id, 0, output);
            self.remove_value(tmp);
        }
        id
    }

    fn fresh_node_name(&self, base: &str) -> String {
        let taken = |n: &str| self.nodes.iter().any(|x| !x.removed && x.name == n);
        if !base.is_empty() && !taken(base) {
            return base.to_string();
        }
        let base = if base.is_empty() { "node" } else { base };
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken(n))
            .unwrap_or_default()
    }

    /// Imports a node exactly as given (used by import; ids of inputs/outputs already exist).
    pub(crate) fn push_node(&mut self, node: Node) -> Result<NodeId> {
        let id = NodeId(self.nodes.len() as u32);
        for (port, o) in node.outputs.iter().enumerate() {
            if let Some(o) = o {
                let v = &mut self.values[o.index()];
                if let Some((p, _)) = v.producer {
                    return Err(Error::Graph(format!(
                        "value '{}' is produced by two nodes ('{}' and '{}')",
                        v.name,
                        self.nodes[p.index()].name,
                        node.name
                    )));
                }
                v.producer = Some((id, port));
            }
        }
        for (port, i) in node.inputs.iter().enumerate() {
            if let Some(i) = i {
                self.values[i.index()].uses.push((id, port));
            }
        }
        for c in &node.captures {
            self.values[c.index()].uses.push((id, CAPTURE_PORT));
        }
        self.nodes.push(node);
        Ok(id)
    }

    /// Rewires input `port` of `node` to `value` (or to nothing).
    pub fn set_input(&mut self, node: NodeId, port: usize, value: Option<ValueId>) {
        let n = &mut self.nodes[node.index()];
        if n.inputs.len() <= port {
            n.inputs.resize(port + 1, None);
        }
        if let Some(old) = n.inputs[port] {
            let uses = &mut self.values[old.index()].uses;
            if let Some(pos) = uses.iter().position(|u| *u == (node, port)) {
                uses.swap_remove(pos);
            }
        }
        self.nodes[node.index()].inputs[port] = value;
        if let Some(v) = value {
            self.values[v.index()].uses.push((node, port));
        }
    }

    /// Makes `value` (which must have no producer) output `port` of `node`; the value it
    /// replaces loses its producer.
    pub fn set_output(&mut self, node: NodeId, port: usize, value: ValueId) {
        if let Some(old) = self.nodes[node.index()].output(port) {
            self.values[old.index()].producer = None;
        }
        let outs = &mut self.nodes[node.index()].outputs;
        if outs.len() <= port {
            outs.resize(port + 1, None);
        }
        outs[port] = Some(value);
        self.values[value.index()].producer = Some((node, port));
    }

    /// Whether `v` is read inside a subgraph attribute (an outer-scope capture).
    pub fn is_captured(&self, v: ValueId) -> bool {
        self.values[v.index()]
            .uses
            .iter()
            .any(|(_, p)| *p == CAPTURE_PORT)
    }

    /// Appends an input to `node`.
    pub fn push_input(&mut self, node: NodeId, value: Option<ValueId>) {
        let port = self.nodes[node.index()].inputs.len();
        self.set_input(node, port, value);
    }

    /// Makes every reader of `old` (nodes and graph outputs) read `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        if old == new {
            return;
        }
        let uses = std::mem::take(&mut self.values[old.index()].uses);
        for (n, port) in uses {
            if port == CAPTURE_PORT {
                // Captures are resolved by name inside the subgraph: keep the old value alive.
                self.values[old.index()].uses.push((n, port));
                continue;
            }
            self.nodes[n.index()].inputs[port] = Some(new);
            self.values[new.index()].uses.push((n, port));
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Unlinks a node: its inputs' use-lists forget it and its outputs lose their producer.
    /// The node stays in the arena (marked removed) until [`Graph::compact`].
    pub fn remove_node(&mut self, id: NodeId) {
        let node = &self.nodes[id.index()];
        let ins: Vec<(usize, ValueId)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(p, v)| v.map(|v| (p, v)))
            .collect();
        let caps = node.captures.clone();
        let outs: Vec<ValueId> = node.outputs.iter().flatten().copied().collect();
        for (p, v) in ins {
            self.values[v.index()].uses.retain(|u| *u != (id, p));
        }
        for v in caps {
            self.values[v.index()]
                .uses
                .retain(|u| *u != (id, CAPTURE_PORT));
        }
        for v in outs {
            self.values[v.index()].producer = None;
        }
        self.nodes[id.index()].removed = true;
    }

    /// Marks a value removed (it must have no producer and no uses, and not be a graph output).
    pub fn remove_value(&mut self, id: ValueId) {
        let name = self.values[id.index()].name.clone();
        self.names.remove(&name);
        self.values[id.index()].removed = true;
        self.inputs.retain(|v| *v != id);
        self.initializers.retain(|v| *v != id);
        self.value_info.retain(|v| *v != id);
    }

    /// Drops removed nodes and values and renumbers ids densely (arena order is kept).
    pub fn compact(&mut self) {
        let mut vmap = vec![None; self.values.len()];
        let mut values = Vec::with_capacity(self.values.len());
        for (i, v) in std::mem::take(&mut self.values).into_iter().enumerate() {
            if !v.removed {
                vmap[i] = Some(ValueId(values.len() as u32));
                values.push(v);
            }
        }
        let mut nmap = vec![None; self.nodes.len()];
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (i, n) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if !n.removed {
                nmap[i] = Some(NodeId(nodes.len() as u32));
                nodes.push(n);
            }
        }
        let mv = |v: ValueId| vmap[v.index()];
        for n in &mut nodes {
            for i in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
                *i = i.and_then(mv);
            }
            n.captures = n.captures.iter().filter_map(|c| mv(*c)).collect();
        }
        for v in &mut values {
            v.producer = v
                .producer
                .and_then(|(n, p)| nmap[n.index()].map(|n| (n, p)));
            v.uses = v
                .uses
                .iter()
                .filter_map(|(n, p)| nmap[n.index()].map(|n| (n, *p)))
                .collect();
        }
        for list in [
            &mut self.inputs,
            &mut self.outputs,
            &mut self.initializers,
            &mut self.value_info,
            &mut self.sparse_initializers,
        ] {
            *list = list.iter().filter_map(|v| mv(*v)).collect();
        }
        self.names = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), ValueId(i as u32)))
            .collect();
        self.nodes = nodes;
        self.values = values;
    }

    /// Live nodes in a topological order that keeps arena order wherever dependencies allow
    /// (so a graph read from a sorted file is written back in its original order).
    /// Errors name a node on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let n = self.nodes.len();
        let mut indeg = vec![0usize; n];
        for id in self.node_ids() {
            let node = &self.nodes[id.index()];
            for v in node.inputs.iter().flatten().chain(node.captures.iter()) {
                if let Some((p, _)) = self.values[v.index()].producer {
                    if !self.nodes[p.index()].removed {
                        indeg[id.index()] += 1;
                    }
                }
            }
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<u32>> = self
            .node_ids()
            .filter(|id| indeg[id.index()] == 0)
            .map(|id| std::cmp::Reverse(id.0))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            let id = NodeId(i);
            order.push(id);
            for o in self.nodes[id.index()].outputs.iter().flatten() {
                for (u, _) in &self.values[o.index()].uses {
                    if self.nodes[u.index()].removed {
                        continue;
                    }
                    indeg[u.index()] -= 1;
                    if indeg[u.index()] == 0 {
                        ready.push(std::cmp::Reverse(u.0));
                    }
                }
            }
        }
        if order.len() != self.node_count() {
            let stuck = self.node_ids().find(|id| indeg[id.index()] > 0);
            let name = stuck.map(|id| {
                format!(
                    "'{}' ({})",
                    self.nodes[id.index()].name,
                    self.nodes[id.index()].op_type
                )
            });
            return Err(Error::Graph(format!(
                "the graph has a cycle through node {}",
                name.unwrap_or_default()
            )));
        }
        Ok(order)
    }
}
