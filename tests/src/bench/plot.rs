//! Line charts as SVG files (plotters' SVG backend), for the figures `bench scale` sweeps.
//!
//! A logarithmic axis is drawn as the base-10 logarithm of the values on a linear axis, its
//! labels written back as the values, so one code path serves every chart.

use std::path::Path;

use anyhow::Context as _;
use plotters::{prelude::*, style::RGBColor};

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its legend.
    pub label: String,
    /// Its points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// An axis: its description and whether it is logarithmic.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// What the axis shows, with its unit.
    pub desc: String,
    /// Base-10 logarithmic.
    pub log: bool,
}

impl Axis {
    /// A linear axis.
    pub fn linear(desc: &str) -> Axis {
        Axis {
            desc: desc.to_owned(),
            log: false,
        }
    }

    /// A logarithmic axis.
    pub fn log(desc: &str) -> Axis {
        Axis {
            desc: desc.to_owned(),
            log: true,
        }
    }

    fn map(&self, v: f64) -> f64 {
        if self.log {
            v.max(f64::MIN_POSITIVE).log10()
        } else {
            v
        }
    }

    fn label(&self, v: f64) -> String {
        let v = if self.log { 10f64.powf(v) } else { v };
        if v.abs() >= 100.0 || (v - v.round()).abs() < 1e-9 {
            format!("{v:.0}")
        } else if v.abs() >= 1.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        }
    }

    /// How many labels to ask for over `range`: on a log axis one per power of ten in it, so
    /// the labels fall on 1, 10, 100...
    fn labels(&self, range: &std::ops::Range<f64>) -> usize {
        if self.log {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a handful of decades"
            )]
            let decades = (range.end.floor() - range.start.ceil() + 1.0).max(0.0) as usize;
            decades.clamp(2, 12)
        } else {
            8
        }
    }

    /// The axis range over `values` (mapped), with a margin; a flat range is widened.
    fn range(&self, values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
        let mapped: Vec<f64> = values
            .filter(|v| v.is_finite() && (!self.log || *v > 0.0))
            .map(|v| self.map(v))
            .collect();
        let lo = mapped.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mapped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return 0.0..1.0;
        }
        let pad = if hi > lo { (hi - lo) * 0.08 } else { 0.5 };
        let lo = if self.log || lo < 0.0 {
            lo - pad
        } else {
            (lo - pad).max(0.0)
        };
        lo..hi + pad
    }
}

/// A chart: a title, two axes, lines, and optionally a horizontal reference line.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// The title (also says which command made it).
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The lines.
    pub series: Vec<Series>,
    /// A horizontal line at this y, with its legend (a target, or the ideal).
    pub reference: Option<(f64, String)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

impl Chart {
    /// Writes the chart to `path` as SVG.
    ///
    /// # Errors
    /// When the file cannot be written or a chart element cannot be drawn.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        self.draw(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("drawing {}", path.display()))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.reference.iter().map(|r| r.0));
        let (x_range, y_range) = (self.x.range(xs), self.y.range(ys));
        let y_range_for_labels = y_range.clone();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 17))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range.clone(), y_range)?;
        let y_range = y_range_for_labels;
        chart
            .configure_mesh()
            .x_desc(&self.x.desc)
            .y_desc(&self.y.desc)
            .x_labels(self.x.labels(&x_range))
            .y_labels(self.y.labels(&y_range))
            .x_label_formatter(&|v| self.x.label(*v))
            .y_label_formatter(&|v| self.y.label(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Some((y, label)) = &self.reference {
            let y = self.y.map(*y);
            let style = BLACK.mix(0.5).stroke_width(1);
            chart
                .draw_series(LineSeries::new(
                    [(x_range.start, y), (x_range.end, y)],
                    style,
                ))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, y)| {
                    x.is_finite()
                        && y.is_finite()
                        && (!self.x.log || *x > 0.0)
                        && (!self.y.log || *y > 0.0)
                })
                .map(|(x, y)| (self.x.map(*x), self.y.map(*y)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_with_log_axes_is_written_as_svg_with_its_title_legend_and_value_labels() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("chart.svg");
        Chart {
            title: "ADD latency (cargo xtask bench scale)".to_owned(),
            x: Axis::log("attachments on the node"),
            y: Axis::linear("ms"),
            series: vec![Series {
                label: "p99".to_owned(),
                points: vec![(10.0, 20.0), (100.0, 30.0), (1000.0, 80.0)],
            }],
            reference: Some((50.0, "target".to_owned())),
        }
        .write_svg(&path)
        .expect("written");
        let svg = std::fs::read_to_string(&path).expect("read back");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // The SVG backend writes each text on a line of its own.
        for text in [
            "ADD latency",
            "\np99\n",
            "\ntarget\n",
            "attachments on the node",
            "\n100\n",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
    }

    #[test]
    fn log_axis_labels_are_the_values_and_ranges_skip_what_cannot_be_drawn() {
        let axis = Axis::log("x");
        assert_eq!(axis.label(3.0), "1000");
        assert_eq!(axis.label(-1.0), "0.100");
        let range = axis.range([10.0, 1000.0, 0.0, f64::NAN].into_iter());
        assert!(range.start < 1.0 && range.end > 3.0, "{range:?}");
        assert_eq!(Axis::linear("y").range(std::iter::empty()), 0.0..1.0);
    }
}
