//! `alp plot`.
use super::*;

#[test]
fn missing_empty_and_malformed_metrics() {
    let d = tempfile::tempdir().unwrap();
    let absent = d.path().join("absent-run");
    refuses(&["plot", &arg(&absent)], &["metrics.jsonl"], &[d.path()]);
    assert!(!absent.exists(), "plot created the run directory");
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    refuses(
        &["plot", &arg(&run)],
        &["metrics.jsonl", "no step"],
        &[d.path()],
    );
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\": 1, \"loss\": 0.5}\n{not json\n",
    )
    .unwrap();
    refuses(
        &["plot", &arg(&run)],
        &["metrics.jsonl", "line 2"],
        &[d.path()],
    );
    // A finished run's plots stay as they are when its metrics are damaged.
    let (_root, fin) = finished_run();
    std::fs::write(fin.join("metrics.jsonl"), "\u{0}\u{1}").unwrap();
    refuses(&["plot", &arg(&fin)], &["metrics.jsonl"], &[&fin]);
}
