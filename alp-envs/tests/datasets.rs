#![cfg(feature = "parquet")]
//! Dataset files as Hugging Face ships them: Parquet read like JSONL (format detected from
//! the field names, bad rows named), and the resumable task stream over them.

use alp_core::TaskSource;
use alp_envs::math::{load_tasks, OnError, TaskList};

#[path = "common/parquet.rs"]
mod parquet_fixture;
use parquet_fixture::write_parquet;

#[test]
fn parquet_and_jsonl_give_the_same_tasks_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("What is 2 + 3?", "2 + 3 = 5\n#### 5"),
        ("What is 7 * 6?", "7 * 6 = 42\n#### 42"),
    ];
    let pq = dir.path().join("gsm.parquet");
    write_parquet(
        &pq,
        &["question", "answer"],
        &rows
            .iter()
            .map(|(q, a)| vec![Some(*q), Some(*a)])
            .collect::<Vec<_>>(),
    );
    let js = dir.path().join("gsm.jsonl");
    let text: String = rows
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string() + "\n")
        .collect();
    std::fs::write(&js, text).unwrap();
    // The GSM8K shape is detected from the field names in both.
    let (a, _) = load_tasks(&pq, None, "d", OnError::Reject).unwrap();
    let (b, _) = load_tasks(&js, None, "d", OnError::Reject).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].answer, "42");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.messages, &x.answer), (&y.messages, &y.answer));
    }
    // A row without its answer: rejected naming the file, the row and the field; skipped
    // and listed otherwise.
    let bad = dir.path().join("bad.parquet");
    write_parquet(
        &bad,
        &["question", "answer"],
        &[
            vec![Some("What is 1 + 1?"), Some("#### 2")],
            vec![Some("What is 2 + 2?"), None],
        ],
    );
    let e = load_tasks(&bad, None, "d", OnError::Reject)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.parquet") && e.contains("row 2") && e.contains("`answer`"),
        "{e}"
    );
    let (ok, skipped) = load_tasks(&bad, None, "d", OnError::Skip).unwrap();
    assert_eq!((ok.len(), skipped.len(), skipped[0].line), (1, 1, 2));
    // Not a Parquet file at all.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, "not parquet").unwrap();
    let e = load_tasks(&junk, None, "d", OnError::Reject)
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.parquet") && e.contains("Parquet"), "{e}");
}

#[test]
fn a_task_list_cycles_in_a_seeded_order_per_pass_and_resumes_at_its_cursor() {
    let tasks: Vec<alp_core::Task> = (0..5)
        .map(|i| alp_core::Task {
            id: format!("t{i}"),
            kind: "d".into(),
            messages: vec![],
            answer: i.to_string(),
        })
        .collect();
    let mut once = TaskList::once(tasks.clone());
    let ids: Vec<String> = std::iter::from_fn(|| once.next_task())
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"]);
    let mut cyc = TaskList::cycled(tasks, 7);
    let all: Vec<String> = (0..15).map(|_| cyc.next_task().unwrap().id).collect();
    // Every pass holds every task once, and the passes' orders differ.
    let mut passes: Vec<Vec<String>> = all.chunks(5).map(|c| c.to_vec()).collect();
    assert!(passes[0] != passes[1] || passes[1] != passes[2]);
    for p in passes.iter_mut() {
        p.sort();
        assert_eq!(*p, ["t0", "t1", "t2", "t3", "t4"]);
    }
    // Seeking back replays exactly.
    cyc.seek(6);
    let again: Vec<String> = (0..9).map(|_| cyc.next_task().unwrap().id).collect();
    assert_eq!(again, all[6..]);
    assert_eq!(cyc.cursor(), 15);
}
