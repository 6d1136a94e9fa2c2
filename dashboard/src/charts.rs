//! Charts drawn on the server as SVG with `plotters` (its SVG backend: no fonts, no
//! JavaScript, nothing fetched). Each function takes plain numbers and returns one
//! `<svg>` element that scales to its container; the page puts a caption and a table
//! with the same figures beside it, so the chart is never the only way to read them.

use std::ops::Range;

use chrono::{TimeZone, Utc};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Size the charts are drawn at; CSS scales them to the column's width.
const W: u32 = 480;
const H: u32 = 250;
/// Label size at the drawn size: about 13 px on a desktop column, 11 px on a phone.
const LABEL_PX: u32 = 16;

/// Colours for series, distinguishable for the common colour-vision deficiencies
/// (Okabe–Ito).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(80, 80, 80),
];

/// The colour of series number `i`, as CSS (for legends drawn in HTML).
pub fn color_css(i: usize) -> String {
    let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
    format!("rgb({r},{g},{b})")
}

/// One line: a connection class's percentile over time.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// (bucket start, unix seconds; value, in the chart's unit: milliseconds for the
    /// phases).
    pub points: Vec<(i64, f64)>,
    /// Index into the palette, so a class keeps its colour across charts.
    pub color: usize,
}

/// Time on the x axis (`from`..`to`, unix seconds), milliseconds on the y axis; each
/// bucket is a dot, joined by lines, so a single bucket still shows. `title` names the
/// chart for screen readers.
pub fn time_chart(title: &str, series: &[Series], from: i64, to: i64) -> String {
    time_chart_in(title, series, from, to, "ms")
}

/// [`time_chart`] with the values in `unit` ("Mbit/s" for a goodput).
pub fn time_chart_in(title: &str, series: &[Series], from: i64, to: i64, y_unit: &str) -> String {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ymax = values().fold(0.0_f64, f64::max);
    let ymin = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    // Lines ten times apart (dial-up against fibre) would squash the fast ones flat on a
    // linear axis: then the axis is logarithmic, a decade per grid line.
    let log = ymin.is_finite() && ymax / ymin > 10.0;
    let (y_range, y_of, decades): (Range<f64>, fn(f64) -> f64, usize) = if log {
        let (lo, hi) = (ymin.log10().floor(), (ymax * 1.1).log10().ceil());
        (
            lo..hi.max(lo + 1.0),
            |v| v.max(1e-3).log10(),
            (hi - lo).max(1.0) as usize + 1,
        )
    } else {
        (0.0..nice_ceiling(ymax.max(1.0) * 1.1), |v| v, 5)
    };
    let (from, to) = if to > from {
        (from, to)
    } else {
        (from, from + 3600)
    };
    let span = to - from;
    // The x axis counts hours (or days, past two days) from the window's start, which
    // is on a whole hour: round tick numbers then fall on whole hours or days.
    let unit: i64 = if span > 2 * 86_400 { 86_400 } else { 3_600 };
    let x_of = |t: i64| (t - from) as f64 / unit as f64;
    let x_max = x_of(to);
    let x_label = |x: &f64| time_label(from + (x * unit as f64).round() as i64, span);
    let y_label = |y: &f64| {
        let value = if log { 10f64.powf(*y) } else { *y };
        if value < 1.0 {
            format!("{value:.1} {y_unit}")
        } else {
            format!("{value:.0} {y_unit}")
        }
    };
    let frame = Frame {
        x: 0.0..x_max,
        y: y_range,
        x_labels: 5,
        y_labels: decades,
        x_label: &x_label,
        y_label: &y_label,
        y_label_area: 62,
    };
    let svg = framed(frame, |chart| {
        for s in series {
            let color = PALETTE[s.color % PALETTE.len()];
            let points: Vec<(f64, f64)> =
                s.points.iter().map(|(t, v)| (x_of(*t), y_of(*v))).collect();
            chart.draw_series(LineSeries::new(
                points.clone(),
                ShapeStyle::from(&color).stroke_width(2),
            ))?;
            chart.draw_series(
                points
                    .iter()
                    .map(|p| Circle::new(*p, 5, ShapeStyle::from(&color).filled())),
            )?;
        }
        Ok(())
    });
    let name = if log {
        format!("{title} (logarithmic time axis)")
    } else {
        title.to_owned()
    };
    accessible(svg, &name)
}

/// A latency distribution: `samples` are (value µs, count) pairs from the merged
/// histogram. Returns the histogram (share of samples per equal-width bin, up to the
/// 99th percentile so one outlier does not flatten the rest) and the CDF (share of
/// samples at or below each value, all of them), as two SVGs.
pub fn distribution(title: &str, samples: &[(u64, u64)]) -> (String, String) {
    let total: u64 = samples.iter().map(|s| s.1).sum();
    if total == 0 {
        return (String::new(), String::new());
    }
    let mut sorted: Vec<(u64, u64)> = samples.iter().copied().filter(|s| s.1 > 0).collect();
    sorted.sort_unstable();
    // The histogram's x range: the smallest value to the 99th percentile.
    let mut seen = 0;
    let mut p99 = sorted.last().map_or(0, |s| s.0);
    for (v, n) in &sorted {
        seen += n;
        if seen * 100 >= total * 99 {
            p99 = *v;
            break;
        }
    }
    let lo = sorted.first().map_or(0, |s| s.0) as f64 / 1000.0;
    let hi = (p99 as f64 / 1000.0).max(lo + 0.001);
    const BINS: usize = 30;
    let width = (hi - lo) / BINS as f64;
    let mut bins = [0u64; BINS];
    for (v, n) in &sorted {
        let ms = *v as f64 / 1000.0;
        if ms > hi {
            continue;
        }
        let i = (((ms - lo) / width) as usize).min(BINS - 1);
        bins[i] += n;
    }
    let shares: Vec<f64> = bins
        .iter()
        .map(|n| *n as f64 * 100.0 / total as f64)
        .collect();
    let top = nice_ceiling(shares.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1);

    let ms_label = |x: &f64| format!("{} ms", short(*x));
    let share_label = |y: &f64| format!("{y:.0} %");
    let hist_frame = Frame {
        x: lo..hi,
        y: 0.0..top,
        x_labels: 6,
        y_labels: 5,
        x_label: &ms_label,
        y_label: &share_label,
        y_label_area: 52,
    };
    let hist_svg = framed(hist_frame, |chart| {
        chart.draw_series(shares.iter().enumerate().filter(|(_, s)| **s > 0.0).map(
            |(i, share)| {
                let x0 = lo + width * i as f64;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, *share)],
                    ShapeStyle::from(&PALETTE[0]).filled(),
                )
            },
        ))?;
        Ok(())
    });

    let max_ms = (sorted.last().map_or(0, |s| s.0) as f64 / 1000.0).max(lo + 0.001);
    let mut cdf = Vec::with_capacity(sorted.len() + 1);
    let mut below = 0;
    cdf.push((lo, 0.0));
    for (v, n) in &sorted {
        below += n;
        cdf.push((*v as f64 / 1000.0, below as f64 * 100.0 / total as f64));
    }
    let cdf_frame = Frame {
        x: lo..max_ms,
        y: 0.0..100.0,
        x_labels: 6,
        y_labels: 5,
        x_label: &ms_label,
        y_label: &share_label,
        y_label_area: 52,
    };
    let cdf_svg = framed(cdf_frame, |chart| {
        // A step function: the share jumps at each recorded value.
        let mut steps = Vec::with_capacity(cdf.len() * 2);
        let mut prev = 0.0;
        for (x, y) in &cdf {
            steps.push((*x, prev));
            steps.push((*x, *y));
            prev = *y;
        }
        chart.draw_series(LineSeries::new(
            steps,
            ShapeStyle::from(&PALETTE[1]).stroke_width(2),
        ))?;
        Ok(())
    });
    (
        accessible(hist_svg, &format!("{title}: histogram")),
        accessible(cdf_svg, &format!("{title}: cumulative distribution")),
    )
}

/// One class's latency samples: (value µs, count) pairs of its merged histogram.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub label: String,
    /// Index into the palette, as in [`Series`].
    pub color: usize,
    pub samples: Vec<(u64, u64)>,
}

/// The cumulative distribution of each class, one coloured step line each (share of its
/// samples at or below each value), on a shared axis: logarithmic, a decade per grid
/// line, when the classes are more than ten times apart. Empty without samples.
pub fn class_cdf(title: &str, classes: &[Distribution]) -> String {
    let values = || {
        classes
            .iter()
            .flat_map(|c| c.samples.iter().filter(|s| s.1 > 0).map(|s| s.0))
    };
    let (Some(min), Some(max)) = (values().min(), values().max()) else {
        return String::new();
    };
    let (lo, hi) = (
        min as f64 / 1000.0,
        (max as f64 / 1000.0).max(min as f64 / 1000.0 + 0.001),
    );
    let log = lo > 0.0 && hi / lo > 10.0;
    let (x_range, x_of, labels): (Range<f64>, fn(f64) -> f64, usize) = if log {
        let (a, b) = (lo.log10().floor(), hi.log10().ceil());
        (
            a..b.max(a + 1.0),
            |v| v.max(1e-3).log10(),
            (b - a).max(1.0) as usize + 1,
        )
    } else {
        (lo..hi, |v| v, 6)
    };
    let x_label = |x: &f64| {
        let ms = if log { 10f64.powf(*x) } else { *x };
        format!("{} ms", short(ms))
    };
    let share_label = |y: &f64| format!("{y:.0} %");
    let frame = Frame {
        x: x_range.clone(),
        y: 0.0..100.0,
        x_labels: labels,
        y_labels: 5,
        x_label: &x_label,
        y_label: &share_label,
        y_label_area: 52,
    };
    let svg = framed(frame, |chart| {
        for class in classes {
            let mut sorted: Vec<(u64, u64)> =
                class.samples.iter().copied().filter(|s| s.1 > 0).collect();
            sorted.sort_unstable();
            let total: u64 = sorted.iter().map(|s| s.1).sum();
            if total == 0 {
                continue;
            }
            // A step function: the share jumps at each recorded value.
            let mut steps = vec![(x_range.start, 0.0)];
            let (mut below, mut prev) = (0, 0.0);
            for (v, n) in &sorted {
                let x = x_of(*v as f64 / 1000.0);
                below += n;
                let y = below as f64 * 100.0 / total as f64;
                steps.push((x, prev));
                steps.push((x, y));
                prev = y;
            }
            steps.push((x_range.end, 100.0));
            let color = PALETTE[class.color % PALETTE.len()];
            chart.draw_series(LineSeries::new(
                steps,
                ShapeStyle::from(&color).stroke_width(2),
            ))?;
        }
        Ok(())
    });
    let name = if log {
        format!("{title} (logarithmic time axis)")
    } else {
        title.to_owned()
    };
    accessible(svg, &name)
}

/// The axes of one chart: their ranges, how many labels the x axis gets and how they
/// read, and the width the y labels need.
struct Frame<'a> {
    x: Range<f64>,
    y: Range<f64>,
    x_labels: usize,
    y_labels: usize,
    x_label: &'a dyn Fn(&f64) -> String,
    y_label: &'a dyn Fn(&f64) -> String,
    y_label_area: u32,
}

/// A chart's drawing area, on which `plot` draws its series.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one chart in the frame every chart here shares (white ground, margins, a grid
/// and axes in the page's greys, labels at [`LABEL_PX`]), then what `plot` draws in
/// it. The SVG, or nothing when drawing failed.
fn framed(
    frame: Frame<'_>,
    plot: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), DrawingAreaErrorKind<std::io::Error>>,
) -> String {
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(18)
            .x_label_area_size(28)
            .y_label_area_size(frame.y_label_area)
            .build_cartesian_2d(frame.x, frame.y)?;
        chart
            .configure_mesh()
            .x_labels(frame.x_labels)
            .y_labels(frame.y_labels)
            .x_label_formatter(frame.x_label)
            .y_label_formatter(frame.y_label)
            .label_style(
                ("sans-serif", LABEL_PX)
                    .into_font()
                    .color(&RGBColor(70, 84, 98)),
            )
            .bold_line_style(RGBColor(225, 230, 235))
            .light_line_style(RGBColor(243, 245, 247))
            .axis_style(RGBColor(180, 188, 196))
            .draw()?;
        plot(&mut chart)?;
        root.present()?;
        Ok(())
    })();
    if drawn.is_err() {
        svg.clear();
    }
    svg
}

/// Makes the SVG scale to its container and announces it as one image with a name.
fn accessible(svg: String, title: &str) -> String {
    if svg.is_empty() {
        return svg;
    }
    let title = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;");
    let svg = svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{title}\" preserveAspectRatio=\"xMidYMid meet\" "),
        1,
    );
    // Drop the fixed size: the stylesheet sets the width, the viewBox keeps the shape.
    svg.replacen(&format!("width=\"{W}\" height=\"{H}\" "), "", 1)
}

/// `14:00` for spans under two days, `Nov 28` beyond.
fn time_label(unix_s: i64, span: i64) -> String {
    match Utc.timestamp_opt(unix_s, 0).single() {
        Some(t) if span <= 2 * 86_400 => t.format("%H:%M").to_string(),
        Some(t) => t.format("%b %d").to_string(),
        None => String::new(),
    }
}

/// `12`, `1.5`, `0.25`: few digits, enough to tell ticks apart.
fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// The next "round" number at or above `x` (1, 2, 2.5, 5 times a power of ten).
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_ten_times_apart_get_a_logarithmic_axis_a_decade_per_line() {
        let class = |label: &str, ms: f64, color| Series {
            label: label.into(),
            points: vec![(1_700_000_000, ms), (1_700_003_600, ms * 1.1)],
            color,
        };
        let svg = time_chart(
            "ttfb p50",
            &[class("dialup", 900.0, 0), class("fibre", 12.0, 1)],
            1_700_000_000,
            1_700_007_200,
        );
        assert!(svg.contains("ttfb p50 (logarithmic time axis)"), "{svg}");
        for tick in ["\n10 ms\n", "\n100 ms\n", "\n1000 ms\n"] {
            assert!(svg.contains(tick), "{tick} missing: {svg}");
        }
        // Within a factor of ten, the axis stays linear from zero.
        let svg = time_chart(
            "ttfb p50",
            &[class("dsl", 50.0, 0), class("fibre", 12.0, 1)],
            1_700_000_000,
            1_700_007_200,
        );
        assert!(!svg.contains("logarithmic"), "{svg}");
        assert!(
            svg.contains("\n0 ms\n") || svg.contains("\n0.0 ms\n"),
            "{svg}"
        );
    }

    #[test]
    fn a_time_chart_in_another_unit_labels_its_axis_with_it() {
        let series = [Series {
            label: "dsl".into(),
            points: vec![(1_700_000_000, 16.0), (1_700_003_600, 15.5)],
            color: 0,
        }];
        let svg = time_chart_in(
            "goodput p10",
            &series,
            1_700_000_000,
            1_700_007_200,
            "Mbit/s",
        );
        assert!(svg.contains(" Mbit/s\n"), "{svg}");
        assert!(!svg.contains(" ms\n"), "{svg}");
    }

    #[test]
    fn a_time_chart_is_a_scalable_named_svg_with_one_dot_per_bucket() {
        let svg = time_chart(
            "ttfb p95",
            &[Series {
                label: "dsl".into(),
                points: vec![(1_700_000_000, 120.0), (1_700_003_600, 180.0)],
                color: 0,
            }],
            1_700_000_000,
            1_700_007_200,
        );
        assert!(
            svg.starts_with("<svg role=\"img\" aria-label=\"ttfb p95\""),
            "{svg}"
        );
        let tag = svg.lines().next().unwrap_or_default();
        assert!(!tag.contains("width="), "{tag}");
        assert!(tag.contains("viewBox"), "{tag}");
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
    }

    #[test]
    fn each_class_gets_its_own_cumulative_line_in_its_colour() {
        let class = |label: &str, color, ms: u64| Distribution {
            label: label.into(),
            color,
            samples: vec![(ms * 1000, 3), (ms * 1100, 1)],
        };
        let svg = class_cdf("ttfb", &[class("dialup", 0, 400), class("fibre", 3, 12)]);
        assert!(svg.contains("ttfb (logarithmic time axis)"), "{svg}");
        for color in [PALETTE[0], PALETTE[3]] {
            let hex = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
            assert!(svg.contains(&hex), "no line in {hex}: {svg}");
        }
        assert_eq!(class_cdf("ttfb", &[]), String::new());
    }

    #[test]
    fn distributions_cover_every_sample() {
        let (hist, cdf) = distribution("ttfb", &[(1_000, 5), (2_000, 10), (50_000, 1)]);
        assert!(hist.contains("<rect"), "{hist}");
        assert!(cdf.contains("<polyline") || cdf.contains("<path"), "{cdf}");
        assert_eq!(distribution("ttfb", &[]), (String::new(), String::new()));
    }

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(87.0), 100.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
    }
}
