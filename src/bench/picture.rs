//! The benchmark's picture: an SVG with the lateness distribution of the
//! spread jobs and the sends per second over the dispatch runs, drawn with
//! plotters (its SVG backend only: no fonts or image libraries).

use anyhow::Context as _;
use plotters::prelude::*;
use std::path::Path;

/// One dispatch run: its name and how many jobs had been sent at each
/// moment, in seconds since the daemon started.
pub struct Run {
    pub name: String,
    pub sent: Vec<(f64, u64)>,
}

/// How many bars the lateness histogram has.
const BINS: usize = 40;
/// The window sends per second are counted over.
const WINDOW: f64 = 0.1;

/// Writes the picture to `path`. `lateness_ms` is sorted.
pub fn write(path: &Path, title: &str, lateness_ms: &[f64], runs: &[Run]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (top, bottom) = root.split_vertically(380);
    lateness(&top, title, lateness_ms)?;
    sends(&bottom, runs)?;
    root.present()
        .map_err(draw_error)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the picture: {e}")
}

/// A histogram of lateness up to the 99.9th percentile (the rest is
/// counted in the caption), so one slow outlier does not squash the bars.
fn lateness(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    values: &[f64],
) -> anyhow::Result<()> {
    let cut = values
        .get((values.len() as f64 * 0.999) as usize)
        .or(values.last())
        .copied()
        .unwrap_or(1.0)
        .max(0.1);
    let width = cut / BINS as f64;
    let mut counts = [0u32; BINS];
    let mut beyond = 0;
    for &v in values {
        if v <= cut {
            counts[((v.max(0.0) / width) as usize).min(BINS - 1)] += 1;
        } else {
            beyond += 1;
        }
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    let caption = format!(
        "Lateness at the simulator, {title} ({} jobs; {beyond} beyond {cut:.1} ms)",
        values.len()
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..cut, 0u32..most + most / 10 + 1)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("ms after scheduled_at")
        .y_desc("jobs")
        .disable_x_mesh()
        .draw()
        .map_err(draw_error)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &n)| {
            let x = i as f64 * width;
            Rectangle::new([(x, 0), (x + width * 0.9, n)], BLUE.mix(0.7).filled())
        }))
        .map_err(draw_error)?;
    Ok(())
}

/// Sends per second over each dispatch run, in windows of 100 ms.
fn sends(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    runs: &[Run],
) -> anyhow::Result<()> {
    let rates: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| per_second(&r.sent)).collect();
    let end = rates
        .iter()
        .flat_map(|r| r.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let top = rates.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Sends per second over the dispatch runs",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..end, 0f64..top * 1.1)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the daemon started")
        .y_desc("sends/s")
        .draw()
        .map_err(draw_error)?;
    let colours = [RED, GREEN, BLUE, MAGENTA, CYAN];
    for (i, (run, points)) in runs.iter().zip(rates).enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(run.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

/// Sends per second in consecutive windows of [`WINDOW`], at each
/// window's end.
fn per_second(sent: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut from = (0.0, 0u64);
    for &(t, n) in sent {
        if t - from.0 >= WINDOW {
            out.push((t, n.saturating_sub(from.1) as f64 / (t - from.0)));
            from = (t, n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_counted_per_window() {
        let sent = [(0.05, 5), (0.1, 10), (0.15, 20), (0.2, 30)];
        assert_eq!(per_second(&sent), [(0.1, 100.0), (0.2, 200.0)]);
    }

    #[test]
    fn the_picture_is_an_svg() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.svg");
        let runs = [Run {
            name: "0 ms".into(),
            sent: (1..=20u32)
                .map(|i| (f64::from(i) * 0.05, u64::from(i) * 50))
                .collect(),
        }];
        write(&path, "test", &[0.5, 1.0, 1.5, 2.0, 40.0], &runs).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("Sends per second"), "{svg}");
    }
}
