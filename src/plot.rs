//! Learning curves of training runs as SVG: `mezo plot`.
//!
//! A run is a directory with a `metrics.jsonl` (what `mezo train` writes): its step lines give the
//! training loss against the step, its dev lines each dev metric against the step. One chart per
//! quantity, one line per run, labelled by the run directory's path below the common parent of
//! all runs (a sweep's grid point, a seed's run). SVG is written by plotters' SVG backend into
//! memory and then atomically into place, so a failed plot leaves no half file behind.

use crate::error::InputError;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The curves of one run: training loss by step, and each dev metric by step.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCurves {
    pub dir: PathBuf,
    pub loss: Vec<(f64, f64)>,
    pub dev: BTreeMap<String, Vec<(f64, f64)>>,
}

/// A chart's SVG rasterised as PNG, its text in the system's sans-serif font (loaded once).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    static OPTIONS: std::sync::OnceLock<usvg::Options<'static>> = std::sync::OnceLock::new();
    let options = OPTIONS.get_or_init(|| {
        let mut options = usvg::Options::default();
        let fonts = options.fontdb_mut();
        fonts.load_system_fonts();
        // fontdb's generic sans-serif is Arial, which Linux rarely has: take a sans face that is there.
        let families: Vec<String> =
            fonts.faces().flat_map(|face| face.families.iter().map(|(name, _)| name.clone())).collect();
        let sans = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
            .into_iter()
            .find(|wanted| families.iter().any(|f| f == wanted))
            .map(str::to_string)
            .or_else(|| families.first().cloned());
        match sans {
            Some(family) => fonts.set_sans_serif_family(family),
            None => log::warn!("no system fonts found: PNG charts have no text (install fonts-dejavu-core)"),
        }
        options
    });
    let tree = usvg::Tree::from_str(svg, options).context("reading a chart's SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).context("a chart has no pixels to rasterise")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding a chart as PNG")
}

/// Reads `dir/metrics.jsonl`; a line that is not JSON (a torn last line) is an error naming it.
pub fn read_run(dir: &Path) -> Result<RunCurves> {
    let path = dir.join(crate::train::run_dir::METRICS);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let mut curves = RunCurves { dir: dir.to_owned(), loss: Vec::new(), dev: BTreeMap::new() };
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| InputError(format!("{} line {}: {e}", path.display(), number + 1)))?;
        let Some(step) = value["step"].as_f64() else { continue };
        if let Some(loss) = value["loss"].as_f64() {
            curves.loss.push((step, loss));
        }
        if let Some(dev) = value["dev"].as_object() {
            for (key, v) in dev {
                if let Some(v) = v.as_f64() {
                    curves.dev.entry(key.clone()).or_default().push((step, v));
                }
            }
        }
    }
    if curves.loss.is_empty() && curves.dev.is_empty() {
        return Err(InputError(format!("{}: no step or dev evaluation is logged", path.display())).into());
    }
    Ok(curves)
}

/// The run directories at `path`: itself when it holds a `metrics.jsonl`, else every directory
/// below it that does (sorted by path).
pub fn find_runs(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !path.is_dir() {
        return Err(InputError(format!("{}: not a directory", path.display())).into());
    }
    if path.join(crate::train::run_dir::METRICS).is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for entry in entries {
        find_runs(&entry, out)?;
    }
    Ok(())
}

/// Labels of `dirs`: their paths below the deepest directory they all share.
pub fn labels(dirs: &[PathBuf]) -> Vec<String> {
    let parts: Vec<Vec<_>> = dirs.iter().map(|d| d.components().collect()).collect();
    let common = (0..parts.iter().map(Vec::len).min().unwrap_or(0))
        .take_while(|&i| parts.iter().all(|p| p[i] == parts[0][i]))
        .count();
    dirs.iter()
        .zip(&parts)
        .map(|(dir, p)| {
            let below: PathBuf = p[common.min(p.len().saturating_sub(1))..].iter().collect();
            if below.as_os_str().is_empty() {
                dir.display().to_string()
            } else {
                below.display().to_string()
            }
        })
        .collect()
}

/// An SVG line chart of `series` (at least one point in all).
pub fn line_chart_svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String> {
    let points = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Err(InputError(format!("{title}: no finite values to plot")).into());
    }
    // A flat series still gets an axis of some height; a single step, one of some width.
    let pad = |lo: f64, hi: f64| {
        let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
        (lo - 0.05 * span, hi + 0.05 * span)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).stroke_width(2);
            let finite: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            // Markers too: a run evaluated once is a point, not an invisible line.
            chart
                .draw_series(finite.iter().map(|&p| Circle::new(p, 3, Palette99::pick(i).filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(LineSeries::new(finite, color))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i).stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// The charts of `runs`: `train_loss.svg` and one `dev_<metric>.svg` per dev metric any run
/// logged, as (file name, SVG).
pub fn learning_curves(runs: &[RunCurves]) -> Result<Vec<(String, String)>> {
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.dir.clone()).collect();
    let names = labels(&dirs);
    let mut charts = Vec::new();
    let losses: Vec<Series> = runs
        .iter()
        .zip(&names)
        .filter(|(r, _)| !r.loss.is_empty())
        .map(|(r, label)| Series { label: label.clone(), points: r.loss.clone() })
        .collect();
    if !losses.is_empty() {
        charts
            .push(("train_loss.svg".to_string(), line_chart_svg("training loss", "step", "loss", &losses)?));
    }
    let metrics: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.dev.keys()).collect();
    for metric in metrics {
        let series: Vec<Series> = runs
            .iter()
            .zip(&names)
            .filter_map(|(r, label)| {
                r.dev.get(metric).map(|p| Series { label: label.clone(), points: p.clone() })
            })
            .collect();
        let file = format!("dev_{}.svg", metric.replace(['/', ' '], "_"));
        charts.push((file, line_chart_svg(&format!("dev {metric}"), "step", metric, &series)?));
    }
    Ok(charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_paths_below_the_common_parent() {
        let dirs = [PathBuf::from("/s/lr=1e-3/seed=1"), PathBuf::from("/s/lr=1e-2/seed=1")];
        assert_eq!(labels(&dirs), ["lr=1e-3/seed=1", "lr=1e-2/seed=1"]);
        assert_eq!(labels(&[PathBuf::from("/s/run")]), ["run"]);
    }

    #[test]
    fn a_chart_is_svg_with_a_line_per_series() {
        let series = [
            Series { label: "a".into(), points: vec![(1.0, 0.5), (2.0, 0.25)] },
            Series { label: "b".into(), points: vec![(1.0, 0.7)] },
        ];
        let svg = line_chart_svg("t", "step", "loss", &series).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("\na\n</text>") && svg.contains("\nb\n</text>"), "legend entries");
        // Each series' line and its legend mark; a point marker per value.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 3);
        let flat = [Series { label: "c".into(), points: vec![(3.0, 1.0)] }];
        assert!(line_chart_svg("t", "step", "loss", &flat).is_ok());
        let empty = [Series { label: "d".into(), points: vec![(1.0, f64::NAN)] }];
        assert!(line_chart_svg("t", "step", "loss", &empty).is_err());
    }
}
