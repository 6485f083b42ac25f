//! `alp grade`.
use super::*;

#[test]
fn missing_empty_and_unusable_inputs() {
    let d = tempfile::tempdir().unwrap();
    let absent = d.path().join("absent.jsonl");
    refuses(
        &["grade", "--input", &arg(&absent)],
        &["absent.jsonl"],
        &[d.path()],
    );
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    refuses(
        &["grade", "--input", &arg(&empty)],
        &["empty.jsonl", "no lines"],
        &[d.path()],
    );
    let junk = d.path().join("junk.jsonl");
    std::fs::write(&junk, "not json\n{\"answer\": 3}\n[1]\n").unwrap();
    refuses(
        &["grade", "--input", &arg(&junk)],
        &["junk.jsonl", "line 1", "line 2", "prediction"],
        &[d.path()],
    );
    refuses_with(
        &["grade", "--input", "-"],
        Some(b""),
        &["no lines"],
        &[d.path()],
    );
    let dir_input = d.path().join("a-dir");
    std::fs::create_dir(&dir_input).unwrap();
    refuses(
        &["grade", "--input", &arg(&dir_input)],
        &["a-dir"],
        &[d.path()],
    );
}

#[test]
fn one_bad_line_among_good_ones_is_reported_and_the_rest_graded() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("mixed.jsonl");
    let mut bytes = b"{\"answer\": \"4\", \"prediction\": \"\\\\boxed{4}\"}\n".to_vec();
    bytes.extend_from_slice(b"\xff\xfe\n");
    bytes.extend_from_slice(b"{\"answer\": \"5\", \"prediction\": \"\\\\boxed{6}\"}\n");
    std::fs::write(&f, bytes).unwrap();
    let o = run(&["grade", "--input", &arg(&f)], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("line 2") && err.contains("1 malformed"),
        "{err}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let correct: Vec<bool> = lines
        .iter()
        .map(|v| v["correct"].as_bool().unwrap())
        .collect();
    assert_eq!(correct, [true, false, false]);
}
