//! The declared interface of a model as a runtime sees it: its real inputs (graph inputs that
//! are not initializers) and its outputs, each with element type and dims (`None` where a dim
//! is symbolic or unknown, like the batch).

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Fact, Model, ValueId};

/// One declared input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// The value's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dims; `None` for symbolic or unknown ones.
    pub dims: Vec<Option<usize>>,
}

impl InputSpec {
    /// `[N,3,32,32]`-style text: symbolic dims shown as `N`/`?`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(n) => n.to_string(),
                None if i == 0 => "N".into(),
                None => "?".into(),
            })
            .collect();
        format!("{} [{}]", self.dtype, dims.join(","))
    }
}

fn spec(model: &Model, v: ValueId, what: &str) -> Result<InputSpec> {
    let g = &model.graph;
    let name = g.value(v).name.clone();
    let fact = g
        .value(v)
        .decl
        .as_ref()
        .and_then(|d| d.r#type.as_ref())
        .map(Fact::from_type)
        .unwrap_or_default();
    let dtype = fact
        .dtype
        .ok_or_else(|| Error::Usage(format!("{what} '{name}' declares no element type")))?;
    let dims = fact
        .shape
        .ok_or_else(|| Error::Usage(format!("{what} '{name}' declares no shape")))?
        .iter()
        .map(Dim::known)
        .collect();
    Ok(InputSpec { name, dtype, dims })
}

/// The real inputs of a model, in graph order.
pub fn model_inputs(model: &Model) -> Result<Vec<InputSpec>> {
    let g = &model.graph;
    g.inputs
        .iter()
        .filter(|&&v| g.is_runtime_input(v))
        .map(|&v| spec(model, v, "input"))
        .collect()
}

/// The declared outputs of a model, in graph order (outputs without a declared type or shape
/// are left out).
pub fn model_outputs(model: &Model) -> Vec<InputSpec> {
    let g = &model.graph;
    g.outputs
        .iter()
        .filter_map(|&v| spec(model, v, "output").ok())
        .collect()
}
