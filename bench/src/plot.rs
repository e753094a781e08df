//! The latency plot: each set-up's ping-pong round trip by percentile, as a hand-written SVG
//! (no plotting dependency). The x axis counts "nines" (`-log10(1 - p/100)`: 0 → p0, 1 → p90,
//! 2 → p99, 3 → p99.9), so the tail gets as much room as the body; the y axis is the round
//! trip in microseconds on a log scale. Each curve is the median, point by point, of the
//! set-up's runs.

use std::fmt::Write as _;

/// One curve: a set-up's name, its style and its `[percentile, µs]` points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour (`#rrggbb`).
    pub colour: &'static str,
    /// Dashed (the same-node set-ups, to tell the topologies apart).
    pub dashed: bool,
    /// `[percentile 0..100, µs]`, ascending in percentile; the 100th (the maximum) is left out
    /// of the curve, whose x axis cannot reach it.
    pub points: Vec<[f64; 2]>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
/// Plot area inside the margins.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 260.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// `-log10(1 - p/100)`, the "nines" of percentile `p`.
pub fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// The plot as an SVG document. `title` and names are escaped.
pub fn latency_svg(title: &str, series: &[Series]) -> String {
    let curves: Vec<(&Series, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .filter(|[p, us]| *p < 100.0 && *us > 0.0)
                .map(|[p, us]| (nines(*p), *us))
                .collect();
            (s, points)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, points)| points.iter());
    let (mut max_x, mut low, mut high) = (1.0_f64, f64::INFINITY, 0.0_f64);
    for (x, us) in all {
        max_x = max_x.max(*x);
        low = low.min(*us);
        high = high.max(*us);
    }
    if !low.is_finite() {
        (low, high) = (1.0, 10.0);
    }
    // A point at p99.9 is 3 nines give or take a rounding error: not a fourth.
    let max_x = (max_x - 1e-6).ceil();
    let (y_lo, y_hi) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / max_x * plot_w;
    let sy = |us: f64| TOP + (y_hi - us.log10()) / (y_hi - y_lo) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and x ticks: one per nine.
    for k in 0..=(max_x as u32) {
        let x = sx(f64::from(k));
        let label = format!("p{}", percentile_label(k));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    // y ticks: 1, 2 and 5 of every decade.
    for decade in (y_lo as i32)..=(y_hi as i32) {
        for m in [1.0, 2.0, 5.0] {
            let us = m * 10f64.powi(decade);
            if us.log10() > y_hi + 1e-9 {
                continue;
            }
            let y = sy(us);
            let stroke = if m == 1.0 { "#bbbbbb" } else { "#eeeeee" };
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                format_us(us)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1 / (1 - p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">round trip, µs (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, (series, points)) in curves.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, us)| format!("{:.1},{:.1}", sx(*x), sy(*us)))
            .collect();
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            series.colour,
            path.join(" ")
        );
        let y = TOP + 10.0 + 22.0 * i as f64;
        let x = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 24.0,
            series.colour,
            x + 30.0,
            y + 4.0,
            escape(&series.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// `90`, `99`, `99.9`, … for k ≥ 1 nines.
fn percentile_label(k: u32) -> String {
    match k {
        0 => "0".to_owned(),
        1 => "90".to_owned(),
        k => {
            let mut label = "9".repeat(k as usize);
            if k > 2 {
                label.insert(2, '.');
            }
            label
        }
    }
}

/// A tick value without needless decimals: `1`, `20`, `500`, `1000`, `0.5`.
fn format_us(us: f64) -> String {
    if us >= 1.0 {
        format!("{us:.0}")
    } else {
        format!("{us}")
    }
}

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_and_labels() {
        assert!(nines(0.0).abs() < 1e-12);
        assert!((nines(90.0) - 1.0).abs() < 1e-12);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(0), "0");
        assert_eq!(percentile_label(1), "90");
        assert_eq!(percentile_label(2), "99");
        assert_eq!(percentile_label(3), "99.9");
        assert_eq!(percentile_label(5), "99.999");
        assert_eq!(format_us(1000.0), "1000");
        assert_eq!(format_us(0.5), "0.5");
    }

    #[test]
    fn one_curve_per_series_within_the_plot() {
        let series = [
            Series {
                name: "direct-x <base>".to_owned(),
                colour: "#555555",
                dashed: false,
                points: vec![[0.0, 40.0], [90.0, 60.0], [99.9, 150.0], [100.0, 9000.0]],
            },
            Series {
                name: "hbone".to_owned(),
                colour: "#1f77b4",
                dashed: true,
                points: vec![[0.0, 80.0], [99.0, 300.0]],
            },
        ];
        let svg = latency_svg("a & b", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &amp; b") && svg.contains("direct-x &lt;base&gt;"));
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains(">p99.9<"), "x runs to the deepest tail: {svg}");
        assert!(!svg.contains(">p99.99<"));
        assert!(!svg.contains("9000"), "the maximum is not on the curve");
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let points = line.split("points=\"").nth(1).unwrap();
            for pair in points.trim_end_matches("\"/>").split(' ') {
                let (x, y) = pair.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
            }
        }
        let empty = latency_svg("nothing", &[]);
        assert!(!empty.contains("<polyline") && empty.contains("</svg>"));
    }
}
