//! The end-of-run report: `summary.json`, `report.md`, and SVG plots of the metrics.

use alp_core::{Error, Result};
use alp_trainer::config::TrainConfig;
use alp_trainer::metrics::{self as names, loss};
use alp_trainer::EvalResult;
use plotters::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// Writes `summary.json` and `report.md`. (Each argument is one field of the summary.)
#[allow(clippy::too_many_arguments)]
pub fn write_summary(
    dir: &Path,
    cfg: &TrainConfig,
    before: Option<&EvalResult>,
    after: Option<&EvalResult>,
    wall_seconds: f64,
    steps: u64,
    interrupted: bool,
    phase: &str,
) -> Result<()> {
    let gain = match (before, after) {
        (Some(b), Some(a)) => Some(100.0 * (a.accuracy - b.accuracy)),
        _ => None,
    };
    let before_v = before.map(|b| serde_json::to_value(b).unwrap_or(Value::Null));
    let after_v = after.map(|a| serde_json::to_value(a).unwrap_or(Value::Null));
    let summary = json!({
        "eval_before_rl": before_v,
        "eval_after_rl": after_v,
        "accuracy_gain_points": gain,
        "wall_seconds": wall_seconds,
        "rl_steps": steps,
        "interrupted": interrupted,
        "phase": phase,
        "method": cfg.rl.objective.name(),
        "off_policy": {"rollout_dtype": cfg.rl.rollout_dtype, "trainer_dtype": cfg.model.dtype, "max_staleness": cfg.rl.max_staleness, "ppo_epochs": cfg.rl.ppo_epochs, "sampling": cfg.rl.sampling, "ratio_biased_by_truncation": cfg.rl.sampling.truncates() && !cfg.rl.sampling.keep_mask},
    });
    let p = dir.join("summary.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(&summary).map_err(|e| Error::Msg(e.to_string()))?,
    )
    .map_err(|e| Error::io(&p, e))?;
    let pct = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:.1}%", 100.0 * x))
            .unwrap_or_else(|| "–".into())
    };
    let row = |name: &str, e: Option<&Value>| match e {
        Some(e) => format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            pct(&e["accuracy"]),
            e["accuracy_by_kind"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, v)| format!("{k} {}", pct(v)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            pct(&e["tool_call_rate"]),
            pct(&e["tool_call_rate_sampled"]),
            pct(&e["pass_at_k"]),
        ),
        None => format!("| {name} | – | – | – | – | – |\n"),
    };
    let mut md = format!(
        "# alp run report\n\nMethod `{}`; {} RL steps; rollouts in {} (trainer {}), max staleness {}; wall time {:.0} s{}.\n\n",
        cfg.rl.objective.name(),
        steps,
        cfg.rl.rollout_dtype,
        cfg.model.dtype,
        cfg.rl.max_staleness,
        wall_seconds,
        if interrupted { " (interrupted)" } else { "" }
    );
    let note = cfg.sampling_note();
    if !note.is_empty() {
        md.push_str(&format!("Rollouts: {}.\n\n", note.trim_start_matches("; ")));
    }
    md.push_str("| held-out | greedy accuracy | per kind | hard: tool calls (greedy) | hard: tool calls (T=1) | pass@k |\n| --- | --- | --- | --- | --- | --- |\n");
    md.push_str(&row("before RL (after SFT)", before_v.as_ref()));
    md.push_str(&row("after RL", after_v.as_ref()));
    if let Some(g) = gain {
        md.push_str(&format!("\nAccuracy gain: {g:+.1} points.\n"));
    }
    md.push_str("\nPlots: `plots/reward.svg`, `plots/heldout_accuracy.svg`, `plots/ratio_tail.svg`, `plots/mismatch_kl.svg`, `plots/sigma.svg`; every step's metrics are in `metrics.jsonl`.\n");
    let p = dir.join("report.md");
    std::fs::write(&p, md).map_err(|e| Error::io(&p, e))
}

fn series(lines: &[Value], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l["step"].as_f64()?, l.get(key)?.as_f64()?)))
        .collect()
}

/// Largest magnitude plotted: beyond it a value (an overflowed ratio) would make the axis range
/// infinite; such points are left out and the title says so.
const PLOT_LIMIT: f64 = 1e100;

/// A named curve of (x, y, spread) points; a spread > 0 draws a band of y ± spread.
pub type Curve = (String, Vec<(f64, f64, f64)>);

fn plot(path: &Path, title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let curves: Vec<Curve> = curves
        .iter()
        .map(|(n, c)| (n.clone(), c.iter().map(|p| (p.0, p.1, 0.0)).collect()))
        .collect();
    plot_curves(path, title, &curves)
}

/// The axis ranges of `curves` (bands included), never empty or infinite.
fn ranges(curves: &[Curve]) -> ((f64, f64), (f64, f64)) {
    let pts: Vec<&(f64, f64, f64)> = curves.iter().flat_map(|c| c.1.iter()).collect();
    type Point = (f64, f64, f64);
    let fold = |f: &dyn Fn(&Point) -> (f64, f64)| {
        pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            let (lo, hi) = f(p);
            (a.0.min(lo), a.1.max(hi))
        })
    };
    let (x0, x1) = fold(&|p| (p.0, p.0));
    let (y0, y1) = fold(&|p| (p.1 - p.2, p.1 + p.2));
    let x = if pts.is_empty() {
        (0.0, 1.0)
    } else if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let y = if pts.is_empty() {
        (0.0, 1.0)
    } else if y1 > y0 {
        (y0, y1 + 0.05 * (y1 - y0))
    } else {
        (y0 - 0.5, y1 + 0.5)
    };
    (x, y)
}

/// Draws named curves (with their bands) against the RL step into an SVG.
pub fn plot_curves(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let curves: Vec<BandCurve> = curves
        .iter()
        .map(|(n, c)| {
            let pts = c.iter().map(|p| (p.0, p.1, p.1 - p.2, p.1 + p.2)).collect();
            (n.clone(), pts)
        })
        .collect();
    plot_bands(path, title, "RL step", None, &curves)
}

/// A named curve of (x, y, band low, band high) points; a band wider than zero is drawn.
pub type BandCurve = (String, Vec<(f64, f64, f64, f64)>);

/// Draws named curves with (possibly asymmetric) bands into an SVG; `x_names`, when given,
/// labels x = 0, 1, 2, … with those names (categories such as mismatch settings).
pub fn plot_bands(
    path: &Path,
    title: &str,
    x_desc: &str,
    x_names: Option<&[String]>,
    curves: &[BandCurve],
) -> Result<()> {
    let ok = |p: &&(f64, f64, f64, f64)| {
        [p.0, p.1, p.2, p.3].iter().all(|v| v.is_finite()) && p.2.abs().max(p.3.abs()) <= PLOT_LIMIT
    };
    let dropped = curves
        .iter()
        .flat_map(|c| c.1.iter())
        .filter(|p| !ok(p))
        .count();
    let curves: Vec<BandCurve> = curves
        .iter()
        .map(|(n, c)| (n.clone(), c.iter().filter(ok).copied().collect()))
        .collect();
    let title = if dropped > 0 {
        format!("{title} ({dropped} points beyond ±1e100 left out)")
    } else {
        title.to_string()
    };
    // The axis ranges go through `ranges` as symmetric bands that cover both ends.
    let sym: Vec<Curve> = curves
        .iter()
        .map(|(n, c)| {
            let pts = c
                .iter()
                .map(|p| ((p.0), (p.2 + p.3) / 2.0, (p.3 - p.2) / 2.0))
                .collect();
            (n.clone(), pts)
        })
        .collect();
    let ((x0, x1), (y0, y1)) = ranges(&sym);
    let (x0, x1) = match x_names {
        Some(_) => (x0 - 0.3, x1 + 0.3),
        None => (x0, x1),
    };
    let err = |e: &dyn std::fmt::Display| Error::Msg(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let name_of = |x: &f64| match x_names {
        Some(names) => {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        }
        None => format!("{x}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc);
    if let Some(names) = x_names {
        mesh.x_labels(names.len() * 4 + 1)
            .x_label_formatter(&name_of);
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if c.iter().any(|p| p.3 > p.2) {
            let mut band: Vec<(f64, f64)> = c.iter().map(|p| (p.0, p.3)).collect();
            band.extend(c.iter().rev().map(|p| (p.0, p.2)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.12).filled(),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                c.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One plot: its file, title and named curves.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// File name under `plots/`.
    pub file: &'static str,
    /// Title.
    pub title: &'static str,
    /// Legend name and (step, value) points of every curve.
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

/// Reads `<run>/metrics.jsonl`: the step records and the evaluation records.
fn read_metrics(dir: &Path) -> Result<(Vec<Value>, Vec<Value>)> {
    let mp = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    let mut steps = Vec::new();
    let mut evals = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(l).map_err(|e| Error::Parse {
            path: mp.clone(),
            message: format!("line {}: {e}", i + 1),
        })?;
        match v.get("eval") {
            Some(e) => evals.push(
                json!({"step": v["step"], "accuracy": e["accuracy"], "tool": e["tool_call_rate"]}),
            ),
            None => steps.push(v),
        }
    }
    Ok((steps, evals))
}

/// The plots of a run and the series behind each of their curves, from `metrics.jsonl`; the
/// metric names are the writer's constants.
pub fn plot_specs(dir: &Path) -> Result<Vec<PlotSpec>> {
    let (steps, evals) = read_metrics(dir)?;
    let c = |name: &str, rows: &[Value], key: &str| (name.to_string(), series(rows, key));
    let n_sigma = steps
        .last()
        .and_then(|l| l.as_object())
        .map(|o| {
            o.keys()
                .filter(|k| k.starts_with(names::SIGMA_LAYER))
                .count()
        })
        .unwrap_or(0);
    Ok(vec![
        PlotSpec {
            file: "reward.svg",
            title: "reward (mean over the batch)",
            curves: vec![
                c("reward", &steps, names::REWARD_MEAN),
                c("train accuracy", &steps, names::ACCURACY),
            ],
        },
        PlotSpec {
            file: "heldout_accuracy.svg",
            title: "held-out greedy accuracy and hard-task tool-call rate",
            curves: vec![
                c("accuracy", &evals, "accuracy"),
                c("tool-call rate", &evals, "tool"),
            ],
        },
        PlotSpec {
            file: "ratio_tail.svg",
            title: "importance ratio tail (token level)",
            curves: vec![
                c("p99.9", &steps, loss::RATIO_TOKEN_P99_9),
                c("max", &steps, loss::RATIO_TOKEN_MAX),
            ],
        },
        PlotSpec {
            file: "mismatch_kl.svg",
            title: "KL(μ‖π) estimates",
            curves: vec![
                c("k1", &steps, loss::KL_MU_PI_K1),
                c("k3", &steps, loss::KL_MU_PI_K3),
            ],
        },
        PlotSpec {
            file: "sigma.svg",
            title: "σ per layer",
            curves: (0..n_sigma)
                .map(|i| c(&format!("layer {i}"), &steps, &names::sigma_layer(i)))
                .collect(),
        },
    ])
}

/// Redraws `<run>/plots/*.svg` from `<run>/metrics.jsonl`.
pub fn plot_run(dir: &Path) -> Result<()> {
    // Read first: a missing or malformed metrics file creates nothing.
    let specs = plot_specs(dir)?;
    let out = dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    for p in specs {
        plot(&out.join(p.file), p.title, &p.curves)?;
    }
    Ok(())
}
