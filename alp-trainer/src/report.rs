//! The end-of-run report: `summary.json`, `report.md`, and SVG plots of the metrics.

use crate::config::TrainConfig;
use crate::trainer::EvalResult;
use alp_core::{Error, Result};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

fn eval_brief(e: &Value) -> Value {
    json!({
        "accuracy": e["accuracy"],
        "accuracy_by_kind": e["accuracy_by_kind"],
        "tool_call_rate": e["tool_call_rate"],
        "tool_call_rate_sampled": e["tool_call_rate_sampled"],
        "sampled_accuracy": e["sampled_accuracy"],
        "pass_at_k": e["pass_at_k"],
        "k": e["k"],
        "tasks": e["tasks"],
    })
}

/// Writes `summary.json` and `report.md`.
pub fn write_summary(
    dir: &Path,
    cfg: &TrainConfig,
    before: Option<&Value>,
    after: Option<&EvalResult>,
    wall_seconds: f64,
    steps: u64,
    interrupted: bool,
) -> Result<()> {
    let after_v = after.map(|a| serde_json::to_value(a).unwrap_or(Value::Null));
    let gain = match (before, &after_v) {
        (Some(b), Some(a)) => a["accuracy"]
            .as_f64()
            .zip(b["accuracy"].as_f64())
            .map(|(a, b)| 100.0 * (a - b)),
        _ => None,
    };
    let summary = json!({
        "eval_before_rl": before.map(eval_brief),
        "eval_after_rl": after_v.as_ref().map(eval_brief),
        "accuracy_gain_points": gain,
        "wall_seconds": wall_seconds,
        "rl_steps": steps,
        "interrupted": interrupted,
        "method": cfg.rl.objective.name(),
        "off_policy": {"rollout_dtype": cfg.rl.rollout_dtype, "trainer_dtype": cfg.model.dtype, "max_staleness": cfg.rl.max_staleness, "ppo_epochs": cfg.rl.ppo_epochs},
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
    md.push_str("| held-out | greedy accuracy | per kind | hard: tool calls (greedy) | hard: tool calls (T=1) | pass@k |\n| --- | --- | --- | --- | --- | --- |\n");
    md.push_str(&row("before RL (after SFT)", before));
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

fn plot(path: &Path, title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let pts: Vec<&(f64, f64)> = curves.iter().flat_map(|c| c.1.iter()).collect();
    let (x0, x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.0), a.1.max(p.0))
    });
    let (y0, y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.1), a.1.max(p.1))
    });
    let (x0, x1) = if pts.is_empty() {
        (0.0, 1.0)
    } else if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let (y0, y1) = if pts.is_empty() {
        (0.0, 1.0)
    } else if y1 > y0 {
        (y0, y1 + 0.05 * (y1 - y0))
    } else {
        (y0 - 0.5, y1 + 0.5)
    };
    let err = |e: &dyn std::fmt::Display| Error::Msg(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("RL step")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))
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

/// Redraws `<run>/plots/*.svg` from `<run>/metrics.jsonl`.
pub fn plot_run(dir: &Path) -> Result<()> {
    let mp = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Parse {
                path: mp.clone(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect::<Result<_>>()?;
    let steps: Vec<Value> = lines
        .iter()
        .filter(|l| l.get("eval").is_none())
        .cloned()
        .collect();
    let evals: Vec<Value> = lines
        .iter()
        .filter_map(|l| Some(json!({"step": l["step"], "accuracy": l.get("eval")?["accuracy"], "tool": l.get("eval")?["tool_call_rate"]})))
        .collect();
    let out = dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    plot(
        &out.join("reward.svg"),
        "reward (mean over the batch)",
        &[
            ("reward".into(), series(&steps, "reward/mean")),
            ("train accuracy".into(), series(&steps, "accuracy")),
        ],
    )?;
    plot(
        &out.join("heldout_accuracy.svg"),
        "held-out greedy accuracy and hard-task tool-call rate",
        &[
            ("accuracy".into(), series(&evals, "accuracy")),
            ("tool-call rate".into(), series(&evals, "tool")),
        ],
    )?;
    plot(
        &out.join("ratio_tail.svg"),
        "importance ratio tail (token level)",
        &[
            ("p99.9".into(), series(&steps, "ratio/token/p99.9")),
            ("max".into(), series(&steps, "ratio/token/max")),
        ],
    )?;
    plot(
        &out.join("mismatch_kl.svg"),
        "KL(μ‖π) estimates",
        &[
            ("k1".into(), series(&steps, "kl_mu_pi/k1")),
            ("k3".into(), series(&steps, "kl_mu_pi/k3")),
        ],
    )?;
    let n_sigma = steps
        .last()
        .and_then(|l| l.as_object())
        .map(|o| o.keys().filter(|k| k.starts_with("sigma/layer")).count())
        .unwrap_or(0);
    let sig: Vec<(String, Vec<(f64, f64)>)> = (0..n_sigma)
        .map(|i| {
            (
                format!("layer {i}"),
                series(&steps, &format!("sigma/layer{i}")),
            )
        })
        .collect();
    plot(&out.join("sigma.svg"), "σ per layer", &sig)?;
    Ok(())
}
