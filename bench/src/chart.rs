//! Charts (plotters), each written as SVG and PNG: seed throughput per path, small-request
//! latency CDFs, and scale throughput per client count.
//!
//! Text is rendered with ab_glyph from a TrueType file read at run time
//! (`$BLOBRING_BENCH_FONT`, else DejaVu Sans or Liberation Sans from the usual Debian paths —
//! package `fonts-dejavu-core`), so no fontconfig or freetype library is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;
use crate::worker::PathKind;

const FONT: &str = "sans-serif";
const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers the chart font once.
fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var_os("BLOBRING_BENCH_FONT")
            .map(PathBuf::from)
            .or_else(|| CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()))
            .ok_or_else(|| {
                "no TrueType font found for chart text: install one (`apt-get install \
                 fonts-dejavu-core`) or set BLOBRING_BENCH_FONT to a .ttf file"
                    .to_owned()
            })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

type Area<DB> = DrawingArea<DB, Shift>;

/// Draws one chart (`$draw(report, area)`, generic over the backend) into `<name>.svg` and
/// `<name>.png`; evaluates to the two paths.
macro_rules! both {
    ($dir:expr, $name:expr, $size:expr, $draw:ident, $report:expr) => {{
        let svg = $dir.join(format!("{}.svg", $name));
        let png = $dir.join(format!("{}.png", $name));
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            root.fill(&WHITE).map_err(de)?;
            $draw($report, root.clone())?;
            root.present().map_err(de)?;
        }
        {
            let root = BitMapBackend::new(&png, $size).into_drawing_area();
            root.fill(&WHITE).map_err(de)?;
            $draw($report, root.clone())?;
            root.present().map_err(de)?;
        }
        for f in [&svg, &png] {
            if std::fs::metadata(f).map_or(0, |m| m.len()) == 0 {
                bail!("chart {} was not written", f.display());
            }
        }
        [svg, png]
    }};
}

/// Writes every chart the report has data for into `dir`; returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut out = Vec::new();
    if !report.paths.is_empty() {
        out.extend(both!(dir, "seed-throughput", (900, 500), seed, report));
    }
    if !report.small.is_empty() {
        out.extend(both!(dir, "small-latency-cdf", (1000, 600), small, report));
    }
    if !report.scale.is_empty() {
        out.extend(both!(dir, "scale-throughput", (900, 500), scale, report));
    }
    Ok(out)
}

fn de<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 5] = [
        RGBColor(0x4c, 0x72, 0xb0),
        RGBColor(0xdd, 0x84, 0x52),
        RGBColor(0x55, 0xa8, 0x68),
        RGBColor(0xc4, 0x4e, 0x52),
        RGBColor(0x81, 0x72, 0xb3),
    ];
    C[i % C.len()]
}

fn seed<DB: DrawingBackend>(r: &Report, root: Area<DB>) -> Result<()> {
    let bars: Vec<(usize, PathKind, f64)> = PathKind::ALL
        .iter()
        .enumerate()
        .filter_map(|(i, k)| r.paths.get(k.name()).map(|p| (i, *k, p.gbps)))
        .collect();
    let max = bars.iter().map(|b| b.2).fold(0.0, f64::max).max(1e-3) * 1.2;
    let mut ch = ChartBuilder::on(&root)
        .caption("seed: read throughput per path (GB/s)", (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..PathKind::ALL.len() - 1).into_segmented(), 0.0..max)
        .map_err(de)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .y_desc("GB/s")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => PathKind::ALL
                .get(*i)
                .map_or(String::new(), |k| k.name().to_owned()),
            _ => String::new(),
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(de)?;
    ch.draw_series(bars.iter().map(|&(i, _, v)| {
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), v),
            ],
            color(i).filled(),
        );
        r.set_margin(0, 0, 12, 12);
        r
    }))
    .map_err(de)?;
    ch.draw_series(bars.iter().map(|&(i, _, v)| {
        Text::new(
            format!("{v:.2}"),
            (SegmentValue::CenterOf(i), v + max * 0.03),
            (FONT, 14).into_font(),
        )
    }))
    .map_err(de)?;
    Ok(())
}

/// (label, colour index, CDF points).
type Series<'a> = (String, usize, &'a Vec<(f64, f64)>);

fn small<DB: DrawingBackend>(r: &Report, root: Area<DB>) -> Result<()> {
    let series: Vec<Series<'_>> = PathKind::ALL
        .iter()
        .enumerate()
        .filter_map(|(i, k)| r.small.get(k.name()).map(|m| (i, k, m)))
        .flat_map(|(i, k, m)| {
            let mut v: Vec<_> = m.values().collect();
            v.sort_by_key(|f| f.depth);
            v.into_iter()
                .map(move |f| (format!("{} depth {}", k.name(), f.depth), i, &f.cdf))
        })
        .collect();
    let pts = series.iter().flat_map(|s| s.2.iter().map(|p| p.0));
    let (lo, hi) = pts.fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = ((lo.max(0.1) * 0.8), (hi.max(1.0) * 1.25));
    let mut ch = ChartBuilder::on(&root)
        .caption("small: 4 KiB GET latency CDF (µs, log scale)", (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(de)?;
    ch.configure_mesh()
        .x_desc("latency µs")
        .y_desc("fraction of requests ≤ x")
        .label_style((FONT, 14))
        .draw()
        .map_err(de)?;
    let depths: Vec<usize> = {
        let mut d: Vec<usize> = r
            .small
            .values()
            .flat_map(|m| m.values().map(|f| f.depth))
            .collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    for (name, i, cdf) in &series {
        let depth_idx = depths
            .iter()
            .position(|d| name.ends_with(&format!(" {d}")))
            .unwrap_or(0);
        let c = color(*i);
        let style = ShapeStyle {
            color: c.to_rgba(),
            filled: false,
            stroke_width: 1 + depth_idx as u32,
        };
        ch.draw_series(LineSeries::new(cdf.iter().copied(), style))
            .map_err(de)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(de)?;
    Ok(())
}

fn scale<DB: DrawingBackend>(r: &Report, root: Area<DB>) -> Result<()> {
    let max_n = r.scale.iter().map(|s| s.clients).max().unwrap_or(1) as f64;
    let max_g = r.scale.iter().map(|s| s.gbps).fold(0.0, f64::max).max(1e-3) * 1.2;
    let mut ch = ChartBuilder::on(&root)
        .caption("scale: native SDK aggregate throughput (GB/s)", (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8..max_n * 1.25).log_scale(), 0.0..max_g)
        .map_err(de)?;
    ch.configure_mesh()
        .x_desc("client processes")
        .y_desc("GB/s")
        .label_style((FONT, 14))
        .draw()
        .map_err(de)?;
    let pts: Vec<(f64, f64)> = r.scale.iter().map(|s| (s.clients as f64, s.gbps)).collect();
    ch.draw_series(LineSeries::new(
        pts.iter().copied(),
        color(3).stroke_width(2),
    ))
    .map_err(de)?;
    ch.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color(3).filled())))
        .map_err(de)?;
    Ok(())
}
