//! The plot of a run: throughput (top) and latency percentiles (bottom)
//! per second, as SVG. plotters is built without font support (no system
//! font libraries here), so the SVG's text is left to the viewer's fonts.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Point, RunResult};

/// A line of the plot: its legend, colour, and value per second.
type Line = (&'static str, RGBColor, fn(&Point) -> u64);

pub fn write_svg(path: &Path, result: &RunResult) -> anyhow::Result<()> {
    let pts = &result.series;
    let t_max = pts.len().max(2) as f64;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(300);

    let rate_max = pts
        .iter()
        .map(|p| p.sent.max(p.done).max(p.delivered).max(p.receipts))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: per second", result.scenario),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max * 1.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("per second")
        .draw()
        .map_err(plot_err)?;
    let series: [Line; 4] = [
        ("sent", BLUE, |p| p.sent),
        ("done (acks, logins, echoes)", GREEN, |p| p.done),
        ("delivered", MAGENTA, |p| p.delivered),
        ("receipts", RED, |p| p.receipts),
    ];
    for (name, color, f) in series {
        if pts.iter().all(|p| f(p) == 0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t as f64 + 0.5, f(p) as f64)),
                color,
            ))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    let lat_max = pts.iter().map(|p| p.p999_us).max().unwrap_or(1).max(1) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency percentiles (ms)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..lat_max * 1.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    let lines: [Line; 3] = [
        ("p50", GREEN, |p| p.p50_us),
        ("p99", BLUE, |p| p.p99_us),
        ("p99.9", RED, |p| p.p999_us),
    ];
    for (name, color, f) in lines {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t as f64 + 0.5, f(p) as f64 / 1000.0)),
                color,
            ))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = RunResult::new("chat", "t", serde_json::Value::Null);
        r.series = (0..5)
            .map(|t| Point {
                t,
                sent: 100,
                done: 100,
                receipts: 90,
                p50_us: 400,
                p99_us: 2000,
                p999_us: 9000,
                ..Point::default()
            })
            .collect();
        let path = dir.path().join("x.svg");
        write_svg(&path, &r).expect("plots");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("polyline") || svg.contains("path"));
    }
}
