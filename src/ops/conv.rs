//! `Conv`: X [N, C, D1..Dn] * W [M, C/group, k1..kn] (+ B [M]) → [N, M, O1..On].
//! MACs = N·M·ΠO·(C/group)·Πk.

use crate::error::Result;
use crate::ir::{Dim, Fact};

use super::util::Window;
use super::{numel_or_one, Cost, Cx, Op};

/// `Conv`.
pub struct Conv;
/// `Conv`.
pub static CONV: Conv = Conv;

impl Op for Conv {
    fn op_type(&self) -> &'static str {
        "Conv"
    }

    fn infer(&self, cx: &Cx) -> Result<Option<Vec<Fact>>> {
        let x = cx.input(0)?;
        let w = cx.input(1)?;
        let (Some(xs), Some(ws)) = (&x.shape, &w.shape) else {
            return Ok(None);
        };
        if ws.len() < 3 || xs.len() != ws.len() {
            return Err(cx.err(format!(
                "input rank {} and weight rank {} do not fit a convolution",
                xs.len(),
                ws.len()
            )));
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        if let (Some(c), Some(wc)) = (xs[1].known(), ws[1].known()) {
            if c != wc * group {
                return Err(cx.err(format!(
                    "input has {c} channels, weight expects {wc}×group {group}"
                )));
            }
        }
        let kernel: Vec<usize> = match cx.node.attr_ints("kernel_shape") {
            Some(k) => k.iter().map(|&v| v.max(0) as usize).collect(),
            None => match ws[2..].iter().map(Dim::known).collect::<Option<Vec<_>>>() {
                Some(k) => k,
                None => return Ok(None),
            },
        };
        let win = Window::read(cx, kernel)?;
        let mut out = vec![xs[0].clone(), ws[0].clone()];
        for (i, d) in xs[2..].iter().enumerate() {
            out.push(win.out_dim(i, d, cx)?);
        }
        Ok(Some(vec![Fact::new(x.dtype, out)]))
    }

    fn cost(&self, cx: &Cx, outputs: &[Option<&Fact>]) -> Cost {
        let (Some(Some(w)), Some(Some(y))) = (
            cx.inputs.get(1).map(|f| f.and_then(|f| f.shape.as_ref())),
            outputs.first().map(|f| f.and_then(|f| f.shape.as_ref())),
        ) else {
            return Cost::default();
        };
        // y = [N, M, O...]; per output element: (C/group)·Πk = Π w[1..].
        let macs = numel_or_one(y) * numel_or_one(&w[1..]);
        Cost {
            macs,
            flops: 2 * macs,
        }
    }
}
