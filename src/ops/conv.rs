//! `Conv`: X [N, C, D1..Dn] * W [M, C/group, k1..kn] (+ B [M]) → [N, M, O1..On].
//! MACs = N·M·ΠO·(C/group)·Πk.
//!
//! Channels: output channels are created by the filters (W axis 0, bias); input channels are
//! consumed by W axis 1. Depthwise (group = C = M) passes channels through instead, and its
//! `group` attribute follows the new width. Other group counts keep `group` and remove channels
//! uniformly in every group (coupled positions). Weights that are not constants block.

use crate::error::Result;
use crate::ir::{Dim, Fact};

use super::channel::{Link, LinkCx, Map, Rewrite, RewriteCx, Slot};
use super::util::Window;
use super::{numel_or_one, Cost, Cx, Op};
use crate::ir::graph::attr_int;

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

    fn channel_links(&self, cx: &LinkCx) -> Vec<Link> {
        let Some(wd) = cx.in_dims(1).filter(|w| w.len() >= 3) else {
            return cx.block_all("weight shape unknown");
        };
        if !cx.is_const(1) || (cx.node.input(2).is_some() && !cx.is_const(2)) {
            return cx.block_all("weights are not constants");
        }
        let group = cx.node.attr_i("group").unwrap_or(1).max(1) as usize;
        let (m, cg) = (wd[0], wd[1]);
        let c = cg * group;
        let out = Slot::output(0, 1);
        let input = Slot::input(0, 1);
        let tracked_in = cx.tracked_axes(0).any(|(a, _)| a == 1);
        let mut links: Vec<Link> = cx
            .tracked_axes(0)
            .filter(|(a, _)| *a != 1)
            .map(|(a, _)| Link::Block {
                slot: Slot::input(0, a),
                reason: "channels on a spatial or batch axis".into(),
            })
            .collect();
        let producer = |links: &mut Vec<Link>| {
            links.push(Link::Member {
                input: 1,
                axis: 0,
                slot: out,
                map: Map::Identity,
            });
            if cx.node.input(2).is_some() {
                links.push(Link::Member {
                    input: 2,
                    axis: 0,
                    slot: out,
                    map: Map::Identity,
                });
            }
        };
        if group > 1 && group == c && m == c {
            // Depthwise: channel i in → channel i out.
            if tracked_in {
                links.push(Link::Pass {
                    from: input,
                    to: out,
                    map: Map::Identity,
                });
            } else {
                links.push(Link::Create { to: out, len: m });
                links.push(Link::Block {
                    slot: out,
                    reason: "depthwise convolution of an untracked input".into(),
                });
            }
            producer(&mut links);
            return links;
        }
        links.push(Link::Create { to: out, len: m });
        producer(&mut links);
        if group > 1 {
            let per = m / group;
            links.push(Link::Couple {
                slot: out,
                sets: (0..per)
                    .map(|j| (0..group).map(|g| g * per + j).collect())
                    .collect(),
            });
        }
        if tracked_in {
            links.push(Link::Consume { from: input });
            let map = if group > 1 {
                links.push(Link::Couple {
                    slot: input,
                    sets: (0..cg)
                        .map(|k| (0..group).map(|g| g * cg + k).collect())
                        .collect(),
                });
                Map::Index((0..c).map(|p| Some(p % cg)).collect())
            } else {
                Map::Identity
            };
            links.push(Link::Member {
                input: 1,
                axis: 1,
                slot: input,
                map,
            });
        }
        links
    }

    fn rewrite_channels(&self, cx: &RewriteCx) -> Result<Rewrite> {
        let group = cx.node.attr_i("group").unwrap_or(1);
        let mut rw = Rewrite::default();
        // Depthwise: the group count is the (new) channel count.
        if group > 1 {
            if let (Some(m), Some(c)) = (cx.mask(Slot::output(0, 1)), cx.mask(Slot::input(0, 1))) {
                let c_old = c.len() as i64;
                if group == c_old && m.len() as i64 == c_old {
                    rw.attrs
                        .push(attr_int("group", c.iter().filter(|k| **k).count() as i64));
                }
            }
        }
        Ok(rw)
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
