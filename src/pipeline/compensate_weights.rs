//! Reading and writing the weights (and bias) of [`super`]'s layers in the model.

use super::*;

/// Gives `layer`'s node in `model` a zero bias when it has none (Conv; Gemm with a nonzero
/// beta), so that the fit has an intercept. The node's op says where a bias goes.
pub(super) fn add_bias(model: &mut Model, layer: &mut Layer) -> Result<()> {
    if layer.bias.is_some() || layer.bias_port.is_none() {
        return Ok(());
    }
    let w = model.graph.init(layer.w).map(Tensor::dtype);
    let dt = w.ok_or_else(|| layer.err("the weight is not constant"))?;
    let m = layer.kept.outputs.len();
    let name = format!("{}.bias", model.graph.value(layer.w).name);
    let t = Tensor::from_f64_as(dt, vec![m], &vec![0.0; m])?;
    let v = crate::passes::add_initializer(model, &name, t);
    let port = layer
        .bias_port
        .ok_or_else(|| layer.err("the node takes no bias"))?;
    model.graph.set_input(layer.node, port, Some(v));
    layer.bias = Some(v);
    Ok(())
}

/// The layer's current weights in `model` as `m` rows of `d` (Gemm: times `alpha`, bias
/// times `beta`; a single-value Gemm bias repeated).
pub(super) fn weights(model: &Model, layer: &Layer) -> Result<Vec<f64>> {
    let g = &model.graph;
    let (d, m, cols) = (layer.d(), layer.kept.outputs.len(), layer.cols);
    let w = g
        .init(layer.w)
        .and_then(Tensor::to_f64_vec)
        .ok_or_else(|| layer.err("the weight is not a float constant"))?;
    let mut out = vec![0.0; m * d];
    for o in 0..m {
        for i in 0..cols {
            out[o * d + i] = match layer.kind {
                Kind::Conv { .. }
                | Kind::Dense {
                    out_major: true, ..
                } => w[o * cols + i],
                Kind::Dense { .. } => w[i * m + o],
            } * gemm_scale(&layer.kind).0;
        }
    }
    if let Some(b) = layer.bias {
        let bv = g
            .init(b)
            .and_then(Tensor::to_f64_vec)
            .ok_or_else(|| layer.err("the bias is not a float constant"))?;
        for o in 0..m {
            out[o * d + cols] = bv[if bv.len() == 1 { 0 } else { o }] * gemm_scale(&layer.kind).1;
        }
    }
    Ok(out)
}

/// `(alpha, beta)` of a dense layer, `(1, 1)` for a convolution.
pub(super) fn gemm_scale(kind: &Kind) -> (f64, f64) {
    match kind {
        Kind::Dense { alpha, beta, .. } => (*alpha, *beta),
        _ => (1.0, 1.0),
    }
}

/// Writes `w` (`m` rows of `d`, as [`weights`] reads them) into the layer's initializers,
/// keeping their types and shapes (a single-value Gemm bias becomes one per output).
pub(super) fn set_weights(model: &mut Model, layer: &Layer, w: &[f64]) -> Result<()> {
    let g = &mut model.graph;
    let (d, m, cols) = (layer.d(), layer.kept.outputs.len(), layer.cols);
    let (alpha, beta) = gemm_scale(&layer.kind);
    let old = g
        .init(layer.w)
        .cloned()
        .ok_or_else(|| layer.err("the weight is not constant"))?;
    let mut vals = vec![0.0; m * cols];
    for o in 0..m {
        for i in 0..cols {
            let at = match layer.kind {
                Kind::Conv { .. }
                | Kind::Dense {
                    out_major: true, ..
                } => o * cols + i,
                Kind::Dense { .. } => i * m + o,
            };
            vals[at] = w[o * d + i] / alpha;
        }
    }
    g.set_init(
        layer.w,
        Tensor::from_f64_as(old.dtype(), old.shape().to_vec(), &vals)?,
    );
    if let Some(b) = layer.bias {
        let old = g
            .init(b)
            .cloned()
            .ok_or_else(|| layer.err("the bias is not constant"))?;
        let vals: Vec<f64> = (0..m).map(|o| w[o * d + cols] / beta).collect();
        let shape = if old.len() == m {
            old.shape().to_vec()
        } else {
            vec![m]
        };
        g.set_init(b, Tensor::from_f64_as(old.dtype(), shape, &vals)?);
    }
    Ok(())
}
