//! `alp bench rollout` and `alp bench train`.
use super::*;

#[test]
fn absurd_sizes_and_missing_models() {
    let d = tempfile::tempdir().unwrap();
    refuses(
        &[
            "bench",
            "rollout",
            "--preset",
            "tiny",
            "--batch",
            "1000000000",
        ],
        &["--batch", "available"],
        &[d.path()],
    );
    refuses(
        &[
            "bench",
            "rollout",
            "--preset",
            "tiny",
            "--new-tokens",
            "1000000000000",
        ],
        &["--batch", "available"],
        &[d.path()],
    );
    refuses(
        &[
            "bench",
            "train",
            "--preset",
            "tiny",
            "--batch",
            "1000000000",
        ],
        &["--batch", "available"],
        &[d.path()],
    );
    refuses(
        &["bench", "train", "--preset", "tiny", "--seq-len", "1"],
        &["--seq-len"],
        &[d.path()],
    );
    refuses(
        &["bench", "rollout", "--preset", "tiny", "--repeats", "0"],
        &["--repeats", "positive"],
        &[d.path()],
    );
    refuses(&["bench", "rollout"], &["--model", "--preset"], &[d.path()]);
    refuses(
        &["bench", "rollout", "--preset", "nope"],
        &["nope", "tiny"],
        &[d.path()],
    );
    let absent = d.path().join("absent");
    refuses(
        &["bench", "train", "--model", &arg(&absent)],
        &["absent"],
        &[d.path()],
    );
}
