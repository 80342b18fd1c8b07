//! The replay plot (SVG, plotters): demand, forecast band and ready capacity per policy.

use std::path::Path;

use plotters::prelude::*;

use super::{PolicyName, Row};

/// Most points drawn per series; longer replays are bucketed (max per bucket, so peaks and
/// shortfalls stay visible).
const MAX_POINTS: usize = 3000;

fn bucket(n: usize) -> usize {
    n.div_ceil(MAX_POINTS).max(1)
}

fn bucketed(xs: &[f64], ys: &[f64]) -> Vec<(f64, f64)> {
    let b = bucket(xs.len());
    xs.chunks(b)
        .zip(ys.chunks(b))
        .map(|(x, y)| (x[0], y.iter().copied().fold(f64::NEG_INFINITY, f64::max)))
        .collect()
}

/// Draws the replay of `policies` (rows per policy) over the trace.
///
/// # Errors
/// When the file cannot be written.
pub fn write_plot(
    path: &Path,
    title: &str,
    capacity: f64,
    policies: &[(PolicyName, Vec<Row>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let Some((_, base)) = policies.first() else {
        return Ok(());
    };
    if base.is_empty() {
        return Ok(());
    }
    let t0 = base[0].timestamp;
    let xs: Vec<f64> = base
        .iter()
        .map(|r| (r.timestamp - t0) as f64 / 3600.0)
        .collect();
    let demand: Vec<f64> = base.iter().map(|r| r.demand).collect();
    let x_max = xs.last().copied().unwrap_or(1.0).max(1e-6);
    let mut y_max = demand.iter().copied().fold(0.0, f64::max);
    for (_, rows) in policies {
        for r in rows {
            y_max = y_max.max(f64::from(r.ready_replicas) * capacity);
        }
    }
    let y_max = (y_max * 1.05).max(1e-6);

    let root = SVGBackend::new(path, (1600, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hours since start")
        .y_desc("demand / ready capacity")
        .draw()?;

    // Forecast band: the lead-window peak issued at row i covers rows i+1.., drawn at i+1.
    if let Some((_, rows)) = policies.iter().find(|(p, _)| *p == PolicyName::Predictive) {
        let upper: Vec<f64> = rows
            .iter()
            .map(|r| r.forecast_upper.unwrap_or(f64::NAN))
            .collect();
        let point: Vec<f64> = rows
            .iter()
            .map(|r| r.forecast_point.unwrap_or(f64::NAN))
            .collect();
        let shifted_x: Vec<f64> = xs.iter().skip(1).copied().collect();
        let up = bucketed(&shifted_x, &upper[..upper.len() - 1]);
        let pt = bucketed(&shifted_x, &point[..point.len() - 1]);
        let band: Vec<(f64, f64)> = up
            .iter()
            .chain(pt.iter().rev())
            .copied()
            .filter(|(_, y)| y.is_finite())
            .collect();
        if band.len() > 2 {
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    RGBColor(255, 165, 0).mix(0.3),
                )))?
                .label("forecast band (point..upper quantile)")
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 15, y + 5)],
                        RGBColor(255, 165, 0).mix(0.3).filled(),
                    )
                });
        }
    }
    chart
        .draw_series(LineSeries::new(
            bucketed(&xs, &demand),
            BLACK.stroke_width(1),
        ))?
        .label("demand")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
    for (name, rows) in policies {
        let color = match name {
            PolicyName::Predictive => BLUE,
            PolicyName::Hpa => RED,
            PolicyName::Oracle => GREEN,
            PolicyName::Foresight => MAGENTA,
        };
        let cap: Vec<f64> = rows
            .iter()
            .map(|r| f64::from(r.ready_replicas) * capacity)
            .collect();
        chart
            .draw_series(LineSeries::new(bucketed(&xs, &cap), color.stroke_width(1)))?
            .label(format!("{} ready capacity", name.as_str()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
