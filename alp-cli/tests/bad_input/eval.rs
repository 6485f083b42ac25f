//! `alp eval`.
use super::*;

#[test]
fn models_task_files_and_sizes() {
    let m = model_dir();
    let mp = arg(m.path());
    let d = tempfile::tempdir().unwrap();
    let absent = d.path().join("absent");
    refuses(
        &["eval", "--model", &arg(&absent)],
        &["absent"],
        &[d.path()],
    );
    let bare = bare_model_dir();
    refuses(
        &["eval", "--model", &arg(bare.path())],
        &["tokenizer.json"],
        &[bare.path()],
    );
    let missing = d.path().join("tasks.jsonl");
    refuses(
        &["eval", "--model", &mp, "--tasks", &arg(&missing)],
        &["tasks.jsonl"],
        &[m.path()],
    );
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    refuses(
        &["eval", "--model", &mp, "--tasks", &arg(&empty)],
        &["empty.jsonl", "no task"],
        &[m.path(), d.path()],
    );
    let junk = d.path().join("junk.jsonl");
    std::fs::write(&junk, "{\"colour\": 3}\nnot json\n").unwrap();
    refuses(
        &["eval", "--model", &mp, "--tasks", &arg(&junk)],
        &["junk.jsonl", "no task"],
        &[m.path(), d.path()],
    );
    refuses(
        &["eval", "--model", &mp, "--n", "1000000000"],
        &["--n"],
        &[m.path()],
    );
    refuses(
        &["eval", "--model", &mp, "--set", "eval.tasks=abc"],
        &["eval.tasks"],
        &[m.path()],
    );
    refuses(
        &["eval", "--model", &mp, "--set", "model.dtype=f8"],
        &["model.dtype"],
        &[m.path()],
    );
}
