//! Sparsity regularizers as sub-gradient terms, added to parameter gradients before the
//! optimizer update (they are not part of the loss value):
//!
//! * L1 on BatchNormalization scales (network slimming): `λ·w·sign(γ)`;
//! * masked L1: `λ·w·sign(γ)·mask` with a constant 0/1 (or any weight) vector per scale, so
//!   only chosen channels are pushed towards zero;
//! * group lasso on convolution filters: `λ·w·W_f / (‖W_f‖₂ + eps)` per output filter `f`
//!   (Conv: the slices along axis 0; ConvTranspose with one group: along axis 1).
//!
//! `λ` is the scalar graph input `l1_lambda` (so a schedule can grow it per step) and `w` a
//! constant weight per regularizer. Which parameters each term applies to is decided by
//! [`super::step`]; nothing here prunes anything.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ir::{DType, Graph, ValueId};

use crate::ops::build::{Build, Builder};

/// One regularizer of a train step.
#[derive(Clone, Debug, PartialEq)]
pub enum Regularizer {
    /// `λ·weight·sign(γ)` on every trainable BatchNormalization scale.
    L1Gamma {
        /// Constant factor on λ.
        weight: f32,
    },
    /// `λ·weight·sign(γ)·mask` on the BatchNormalization scales named in `masks` (by
    /// initializer name); other scales get nothing.
    MaskedL1Gamma {
        /// Constant factor on λ.
        weight: f32,
        /// One vector per scale, one entry per channel.
        masks: BTreeMap<String, Vec<f32>>,
    },
    /// `λ·weight·W_f / (‖W_f‖ + eps)` on every trainable convolution filter bank (the ops
    /// declaring a filter axis, [`crate::ops::training::Layer::filter_axis`]: Conv, and
    /// ConvTranspose with one group).
    GroupLasso {
        /// Constant factor on λ.
        weight: f32,
        /// Keeps all-zero filters finite.
        eps: f32,
    },
    /// Group lasso on the filters named in `masks` only (by weight initializer name, one 0/1
    /// entry per filter): MaskSparsity for networks without BatchNormalization.
    MaskedGroupLasso {
        /// Constant factor on λ.
        weight: f32,
        /// Keeps all-zero filters finite.
        eps: f32,
        /// One vector per filter bank, one entry per filter.
        masks: BTreeMap<String, Vec<f32>>,
    },
}

/// `λ·weight·sign(γ)` (times `mask` when given) for a `[C]` scale `gamma`.
pub fn l1_term(
    g: &mut Graph,
    opset: i64,
    gamma: ValueId,
    channels: usize,
    lambda: ValueId,
    weight: f32,
    mask: Option<&[f32]>,
) -> Result<ValueId> {
    let name = g.value(gamma).name.clone();
    let mut e = Builder::new(g, format!("reg/l1/{name}"), opset);
    let s = e.op("Sign", &[gamma], vec![]);
    super::emit::declare(e.g, s, DType::F32, &[channels]);
    let w = e.scalar(DType::F32, f64::from(weight))?;
    let lw = e.op("Mul", &[lambda, w], vec![]);
    let t = e.op("Mul", &[s, lw], vec![]);
    match mask {
        None => Ok(t),
        Some(m) => {
            if m.len() != channels {
                return Err(Error::Usage(format!(
                    "the L1 mask of '{name}' has {} entries, the scale has {channels}",
                    m.len()
                )));
            }
            let mv: Vec<f64> = m.iter().map(|&v| f64::from(v)).collect();
            let mc = e.fconst(DType::F32, vec![channels], &mv)?;
            Ok(e.op("Mul", &[t, mc], vec![]))
        }
    }
}

/// `λ·weight·W_f / (‖W_f‖ + eps)` for a filter bank `w` of static `shape` whose filters `W_f`
/// are its slices along `axis` (Conv `[F, C/g, k..]`: axis 0), times `mask[f]` when given.
#[allow(clippy::too_many_arguments)]
pub fn group_lasso_term(
    g: &mut Graph,
    opset: i64,
    w: ValueId,
    shape: &[usize],
    axis: usize,
    lambda: ValueId,
    weight: f32,
    eps: f32,
    mask: Option<&[f32]>,
) -> Result<ValueId> {
    let name = g.value(w).name.clone();
    if shape.len() < 2 || axis >= shape.len() {
        return Err(Error::Usage(format!(
            "group lasso needs a filter bank [F, C, ...]; '{name}' has shape {shape:?}"
        )));
    }
    let axes: Vec<i64> = (0..shape.len())
        .filter(|&a| a != axis)
        .map(|a| a as i64)
        .collect();
    let mut e = Builder::new(g, format!("reg/group_lasso/{name}"), opset);
    let sq = e.op("Mul", &[w, w], vec![]);
    let ss = e.reduce("ReduceSum", sq, &axes, true);
    let norm = e.op("Sqrt", &[ss], vec![]);
    let ev = e.scalar(DType::F32, f64::from(eps))?;
    let den = e.op("Add", &[norm, ev], vec![]);
    let q = e.op("Div", &[w, den], vec![]);
    let wv = e.scalar(DType::F32, f64::from(weight))?;
    let lw = e.op("Mul", &[lambda, wv], vec![]);
    let t = e.op("Mul", &[q, lw], vec![]);
    let Some(m) = mask else { return Ok(t) };
    if m.len() != shape[axis] {
        return Err(Error::Usage(format!(
            "the group-lasso mask of '{name}' has {} entries, the bank has {} filters",
            m.len(),
            shape[axis]
        )));
    }
    let mut mshape = vec![1; shape.len()];
    mshape[axis] = shape[axis];
    let mv: Vec<f64> = m.iter().map(|&v| f64::from(v)).collect();
    let mc = e.fconst(DType::F32, mshape, &mv)?;
    Ok(e.op("Mul", &[t, mc], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Tensor;
    use crate::runtime::{self, BackendKind};
    use crate::train::emit::{add_input, declare};

    #[test]
    fn terms_match_reference() {
        if crate::runtime::ort::find_library().is_none() {
            eprintln!("NOTICE: skipping: ONNX Runtime's library is missing");
            return;
        }
        let f = DType::F32;
        let wshape = vec![3usize, 2, 2, 2];
        let mut g = Graph::new();
        let gamma = add_input(&mut g, "gamma", f, &[4]);
        let w = add_input(&mut g, "w", f, &wshape);
        let lambda = add_input(&mut g, "l1_lambda", f, &[]);
        let mask = [1.0, 0.0, 1.0, 0.0];
        let t1 = l1_term(&mut g, 17, gamma, 4, lambda, 2.0, None).unwrap();
        let t2 = l1_term(&mut g, 17, gamma, 4, lambda, 1.0, Some(&mask)).unwrap();
        let t3 = group_lasso_term(&mut g, 17, w, &wshape, 0, lambda, 0.5, 1e-3, None).unwrap();
        let fmask = [0.0, 1.0, 1.0];
        let t4 =
            group_lasso_term(&mut g, 17, w, &wshape, 0, lambda, 0.5, 1e-3, Some(&fmask)).unwrap();
        for (t, s) in [
            (t1, vec![4]),
            (t2, vec![4]),
            (t3, wshape.clone()),
            (t4, wshape.clone()),
        ] {
            declare(&mut g, t, f, &s);
            g.outputs.push(t);
        }
        let m = crate::passes::testutil::model(g, 17);
        let dir = crate::temp_dir::TempDir::new("reg").unwrap();
        let path = dir.path().join("reg.onnx");
        m.save(&path, &Default::default()).unwrap();
        let mut sess = runtime::load(BackendKind::Ort, &path).unwrap();
        let gv = [0.5f32, -0.25, 0.0, -3.0];
        // Filter 1 is all zeros (eps keeps it finite).
        let wv: Vec<f32> = (0..24)
            .map(|i| {
                if (8..16).contains(&i) {
                    0.0
                } else {
                    (i as f32 - 11.0) / 7.0
                }
            })
            .collect();
        let lam = 0.3f32;
        let out = sess
            .run(&[
                ("gamma".into(), Tensor::from_f32(vec![4], &gv)),
                ("w".into(), Tensor::from_f32(wshape.clone(), &wv)),
                ("l1_lambda".into(), Tensor::from_f32(vec![], &[lam])),
            ])
            .unwrap();
        let got: Vec<Vec<f64>> = out.iter().map(|(_, t)| t.to_f64_vec().unwrap()).collect();
        let lam = f64::from(lam);
        let sign = |v: f32| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        let want1: Vec<f64> = gv.iter().map(|&v| lam * 2.0 * sign(v)).collect();
        let want2: Vec<f64> = gv
            .iter()
            .zip(&mask)
            .map(|(&v, &m)| lam * sign(v) * f64::from(m))
            .collect();
        let mut want3 = Vec::new();
        for fi in 0..3 {
            let row = &wv[fi * 8..(fi + 1) * 8];
            let norm = row
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            want3.extend(
                row.iter()
                    .map(|&v| lam * 0.5 * f64::from(v) / (norm + 1e-3)),
            );
        }
        let want4: Vec<f64> = want3
            .iter()
            .enumerate()
            .map(|(i, v)| v * f64::from(fmask[i / 8]))
            .collect();
        let mut worst = 0f64;
        for (a, b) in got.iter().zip([&want1, &want2, &want3, &want4]) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(worst < 1e-6, "max abs error {worst}");
        assert!(
            got[2][8..16].iter().all(|v| *v == 0.0),
            "zero filter stays zero"
        );
    }

    #[test]
    fn mask_length_is_checked() {
        let mut g = Graph::new();
        let gamma = add_input(&mut g, "gamma", DType::F32, &[4]);
        let lambda = add_input(&mut g, "l1_lambda", DType::F32, &[]);
        let e = l1_term(&mut g, 17, gamma, 4, lambda, 1.0, Some(&[1.0, 0.0])).unwrap_err();
        assert!(
            e.to_string().contains("'gamma'") && e.to_string().contains("2 entries"),
            "{e}"
        );
    }
}
