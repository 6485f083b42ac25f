//! Math: procedural task generators, a JSONL dataset loader, and the answer verifier.

pub mod dataset;
pub mod equivalence;
pub mod expr;
pub mod extract;
pub mod generators;

pub use dataset::{
    load_jsonl, load_parquet, load_tasks, DatasetFormat, LineError, OnError, TaskList,
};
pub use equivalence::{answers_equal, normalize, parse_value, Value};
pub use extract::{extract_answer, extract_gold, AnswerSource, ExtractMode, Extracted};
pub use generators::{
    format_prompt, MathGenerator, MathTaskKind, Split, TaskStream, BOXED_INSTRUCTION,
};

use serde::{Deserialize, Serialize};

/// The verifier's decision on one prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when the extracted answer equals the gold answer.
    pub correct: bool,
    /// The answer found in the prediction, if any.
    pub extracted: Option<String>,
    /// Where it was found.
    pub source: Option<AnswerSource>,
    /// The gold answer as extracted from the dataset's answer field.
    pub gold: String,
}

/// Grades `prediction` against `answer` with lenient extraction (a `\boxed{}` first, then
/// `#### N`, "the answer is", the last LaTeX span or number). See [`grade_with`].
///
/// ```
/// use alp_envs::math::grade;
/// assert!(grade("\\frac{1}{2}", "so the answer is \\boxed{0.5}").correct);
/// assert!(!grade("1/2", "\\boxed{1/3}").correct);
/// // The last box counts, even when an earlier one was right.
/// assert!(!grade("4", "first \\boxed{4}, no wait: \\boxed{5}").correct);
/// ```
pub fn grade(answer: &str, prediction: &str) -> Verdict {
    grade_with(answer, prediction, ExtractMode::Lenient)
}

/// Grades with the chosen extraction mode; [`ExtractMode::Strict`] accepts boxed answers only.
/// Never panics; every step is bounded in time by caps on lengths, depth and exponents.
pub fn grade_with(answer: &str, prediction: &str, mode: ExtractMode) -> Verdict {
    let gold = extract_gold(answer).text;
    let found = extract_answer(prediction, mode);
    let correct = found
        .as_ref()
        .is_some_and(|e| answers_equal(&gold, &e.text));
    Verdict {
        correct,
        source: found.as_ref().map(|e| e.source),
        extracted: found.map(|e| e.text),
        gold,
    }
}
