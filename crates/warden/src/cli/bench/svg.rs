//! `--plot FILE.svg`: latency percentile curves drawn as a hand-written SVG
//! document, in the style of HdrHistogram's plots: latency (ms, linear) up
//! the y axis against percentile along the x axis, where the x axis counts
//! nines (0 %, 90 %, 99 %, 99.9 %, 99.99 %, ...) so the tail gets as much
//! room as the body.
//!
//! Owns: the layout (axes, grid, one polyline and one legend entry per
//! series). Must never: emit text that is not escaped for XML (series names
//! come from the command line), or fail on empty or degenerate input (it then
//! draws empty axes).

use super::report::nines;

/// One curve: its legend name and its points (percentile 0–100, latency ms).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 800.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// `s` escaped for XML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for an axis showing values up to `max` (1, 2 or 5
/// times a power of ten), and the step between its 5 grid lines.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow);
    ((max / step).ceil() * step, step)
}

/// The percentile label of the tick at `x` nines: 0%, 90%, 99%, 99.9%, ...
fn tick_label(x: u32) -> String {
    match x {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99.{}%", "9".repeat(n as usize - 2)).replace("99.%", "99%"),
    }
}

/// The SVG document: `title` on top, one curve per series. Points at 100 %
/// (the maximum) are drawn at the right edge of the axis.
pub fn plot(title: &str, series: &[Series]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let deepest = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite))
        .filter(|p| p.0 < 100.0)
        .map(|p| nines(p.0))
        .fold(0.0f64, f64::max);
    // At least up to 99.9 %, and a whole number of nines.
    let x_max = deepest.ceil().clamp(3.0, 6.0);
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite))
        .map(|p| p.1)
        .fold(0.0f64, f64::max);
    let (y_max, y_step) = nice_axis(y_top);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |pct: f64| {
        let x = if pct >= 100.0 {
            x_max
        } else {
            nines(pct).min(x_max)
        };
        LEFT + pw * x / x_max
    };
    let py = |ms: f64| TOP + ph * (1.0 - (ms / y_max).clamp(0.0, 1.0));

    let mut s = String::new();
    s.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        escape(title)
    ));
    // Grid and y labels.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let y = py(v);
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            trim_number(v)
        ));
        v += y_step;
    }
    // x ticks at every nine.
    for n in 0..=(x_max as u32) {
        let x = LEFT + pw * f64::from(n) / x_max;
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            TOP + ph,
            TOP + ph + 16.0,
            tick_label(n)
        ));
    }
    s.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">latency (ms)</text>\n",
        LEFT + pw / 2.0,
        H - 10.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    ));
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(finite)
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        if !pts.is_empty() {
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            ));
        }
        let ly = TOP + 16.0 + 18.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&se.name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// `v` without trailing zeros (axis labels: 0, 2.5, 10).
fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn axes() {
        assert_eq!(nice_axis(9.3), (10.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(130.0), (150.0, 50.0));
        assert_eq!(tick_label(0), "0%");
        assert_eq!(tick_label(1), "90%");
        assert_eq!(tick_label(2), "99%");
        assert_eq!(tick_label(4), "99.99%");
        assert_eq!(trim_number(2.5), "2.5");
        assert_eq!(trim_number(10.0), "10");
    }

    #[test]
    fn plot_has_both_series_and_balanced_tags() {
        let a = Series {
            name: "warden <A>".into(),
            points: vec![(0.0, 1.0), (90.0, 2.0), (99.0, 5.0), (100.0, 9.0)],
        };
        let b = Series {
            name: "etcd".into(),
            points: vec![(0.0, 0.5), (99.9, 3.0), (f64::NAN, 1.0)],
        };
        let svg = plot("put & co", &[a, b]);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("warden &lt;A&gt;"));
        assert!(svg.contains(">etcd<"));
        assert!(svg.contains("put &amp; co"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!svg.contains("NaN"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
        // Every element is self-closed or closed.
        let opened = svg.matches("<text").count();
        assert_eq!(opened, svg.matches("</text>").count());
        // Empty input draws empty axes.
        let empty = plot("none", &[]);
        assert!(empty.contains("</svg>") && !empty.contains("<polyline"));
    }
}
