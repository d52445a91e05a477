//! The before/after text table for the terminal: per layer its output and input channels, MACs
//! and parameters with after/before ratios, then the model totals. It only formats; the numbers
//! come from [`super::layer_report`].

use std::fmt::Write as _;

use super::{LayerRow, Totals};

/// Longest layer name shown in full; longer names keep their end (the most specific part).
const NAME_WIDTH: usize = 40;

/// A count with an SI suffix and two decimals (`1234567` → `1.23M`); below 1000 as is.
pub fn si(v: u64) -> String {
    if v == u64::MAX {
        // A saturated count (see `analysis::cost`).
        return "too large".into();
    }
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut x = v as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < UNITS.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        v.to_string()
    } else {
        format!("{x:.2}{}", UNITS[u])
    }
}

/// `after / before` as `x0.688`; empty when `before` is 0.
fn ratio(before: u64, after: u64) -> String {
    if before == 0 {
        String::new()
    } else {
        format!("x{:.3}", after as f64 / before as f64)
    }
}

/// `name` cut to [`NAME_WIDTH`] characters, keeping its end.
fn short_name(name: &str) -> String {
    let n = name.chars().count();
    if n <= NAME_WIDTH {
        name.to_string()
    } else {
        let tail: String = name.chars().skip(n - (NAME_WIDTH - 2)).collect();
        format!("..{tail}")
    }
}

/// Cells of one line, one per sub-column (missing trailing cells are empty).
type Line = Vec<String>;

/// Column layout: header and the alignment of each sub-column (`true` = right).
const COLUMNS: [(&str, &[bool]); 7] = [
    ("#", &[true]),
    ("layer", &[false]),
    ("op", &[false]),
    ("out ch", &[true, false, true]),
    ("in ch", &[true, false, true]),
    ("MACs", &[true, false, true, true]),
    ("params", &[true, false, true, true]),
];

fn pair(b: String, a: String) -> [String; 3] {
    [b, "->".to_string(), a]
}

/// Renders `rows` and `totals` as an aligned table (one line per layer, a header and a totals
/// line, ending with a newline). With `only_changed`, layers whose channels and costs did not
/// change are left out and counted in a closing note. Layer numbers are positions in `rows`.
pub fn render_table(rows: &[LayerRow], totals: &Totals, only_changed: bool) -> String {
    let mut lines: Vec<Line> = Vec::new();
    let mut hidden = 0;
    for (i, r) in rows.iter().enumerate() {
        if only_changed && !r.changed() {
            hidden += 1;
            continue;
        }
        let mut l = vec![i.to_string(), short_name(&r.name), r.op.clone()];
        l.extend(pair(
            r.out_channels.0.to_string(),
            r.out_channels.1.to_string(),
        ));
        l.extend(pair(
            r.in_channels.0.to_string(),
            r.in_channels.1.to_string(),
        ));
        l.extend(pair(si(r.macs.0), si(r.macs.1)));
        l.push(ratio(r.macs.0, r.macs.1));
        l.extend(pair(si(r.params.0), si(r.params.1)));
        l.push(ratio(r.params.0, r.params.1));
        lines.push(l);
    }
    let mut total = vec![String::new(), "total (whole model)".to_string()];
    total.extend(std::iter::repeat_n(String::new(), 7));
    total.extend(pair(si(totals.macs.0), si(totals.macs.1)));
    total.push(ratio(totals.macs.0, totals.macs.1));
    total.extend(pair(si(totals.params.0), si(totals.params.1)));
    total.push(ratio(totals.params.0, totals.params.1));

    // Widths of every sub-column over all lines, then of each column (with its header).
    let aligns: Vec<bool> = COLUMNS
        .iter()
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    let mut widths = vec![0usize; aligns.len()];
    for l in lines.iter().chain(std::iter::once(&total)) {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut spans = Vec::new();
    let mut k = 0;
    for (head, subs) in COLUMNS.iter() {
        let n = subs.len();
        let inner: usize = widths[k..k + n].iter().sum::<usize>() + (n - 1);
        let span = inner.max(head.chars().count());
        // Give extra room from a long header to the first sub-column.
        widths[k] += span - inner;
        spans.push(span);
        k += n;
    }

    let mut out = String::new();
    let header: Vec<String> = COLUMNS
        .iter()
        .zip(&spans)
        .map(|((h, subs), w)| {
            if subs.len() == 1 && subs[0] {
                format!("{h:>w$}")
            } else {
                format!("{h:<w$}")
            }
        })
        .collect();
    let _ = writeln!(out, "{}", header.join("  ").trim_end());
    let sep = spans.iter().sum::<usize>() + 2 * (spans.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(sep));
    let fmt_line = |l: &Line| -> String {
        let mut s = String::new();
        let mut k = 0;
        for (ci, (_, subs)) in COLUMNS.iter().enumerate() {
            if ci > 0 {
                s.push_str("  ");
            }
            for (si_, right) in subs.iter().enumerate() {
                if si_ > 0 {
                    s.push(' ');
                }
                let w = widths[k];
                let c = l.get(k).map_or("", String::as_str);
                if *right {
                    let _ = write!(s, "{c:>w$}");
                } else {
                    let _ = write!(s, "{c:<w$}");
                }
                k += 1;
            }
        }
        s.trim_end().to_string()
    };
    for l in &lines {
        let _ = writeln!(out, "{}", fmt_line(l));
    }
    let _ = writeln!(out, "{}", "-".repeat(sep));
    let _ = writeln!(out, "{}", fmt_line(&total));
    let _ = writeln!(
        out,
        "{} of {} layers changed{}",
        totals.changed_layers,
        totals.layers,
        if hidden > 0 {
            format!(" ({hidden} unchanged not shown)")
        } else {
            String::new()
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, out: (usize, usize), macs: (u64, u64)) -> LayerRow {
        LayerRow {
            name: name.into(),
            op: "Conv".into(),
            out_channels: out,
            in_channels: (3, 3),
            macs,
            params: (432, 432 * out.1 as u64 / out.0 as u64),
        }
    }

    #[test]
    fn si_suffixes() {
        assert_eq!(si(999), "999");
        assert_eq!(si(1234), "1.23K");
        assert_eq!(si(40_812_000), "40.81M");
        assert_eq!(si(3_000_000_000), "3.00G");
    }

    #[test]
    fn table_aligns_and_filters() {
        let rows = vec![
            row("conv1", (16, 8), (1_000_000, 500_000)),
            row(
                "a/very/long/name/that/goes/on/and/on/and/on/conv2",
                (64, 64),
                (9, 9),
            ),
        ];
        let totals = Totals {
            macs: (1_000_009, 500_009),
            flops: (0, 0),
            params: (900, 700),
            layers: 2,
            changed_layers: 1,
        };
        let all = render_table(&rows, &totals, false);
        let lines: Vec<&str> = all.lines().collect();
        // header, rule, 2 rows, rule, total, note
        assert_eq!(lines.len(), 7, "{all}");
        assert!(lines[2].contains("16 ->  8"), "{all}");
        assert_eq!(lines[1].len(), lines[2].len(), "the rule spans the table");
        assert!(lines[2].contains("1.00M -> 500.00K x0.500"), "{all}");
        assert!(
            lines[3].contains("..") && !lines[3].contains("a/very"),
            "{all}"
        );
        assert!(lines[5].contains("total (whole model)"), "{all}");
        assert!(lines[5].contains("x0.778"), "{all}");
        // The "->" of the out-channel column lines up in both rows.
        let col = |l: &str| l.find(" -> ");
        assert_eq!(col(lines[2]), col(lines[3]), "{all}");
        assert_eq!(lines[6], "1 of 2 layers changed");

        let changed = render_table(&rows, &totals, true);
        assert_eq!(changed.lines().count(), 6, "{changed}");
        assert!(!changed.contains("conv2"), "{changed}");
        assert!(changed.ends_with("1 of 2 layers changed (1 unchanged not shown)\n"));
    }
}
