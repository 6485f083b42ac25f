//! Loading math datasets from JSONL: GSM8K (`question`, `answer` ending in `#### N`),
//! MATH (`problem`, `solution` with `\boxed{}`, or an `answer` field) and a plain
//! `prompt`/`answer` form, with configurable field names.

use super::extract::last_boxed;
use super::generators::format_prompt;
use alp_core::{Error, Result, Task};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

/// The shape of each JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// GSM8K: the gold answer is what follows `####` in the answer field.
    Gsm8k {
        /// Question field (default `question`).
        #[serde(default = "q_question")]
        question: String,
        /// Answer field (default `answer`).
        #[serde(default = "q_answer")]
        answer: String,
    },
    /// MATH: the gold answer is the `answer` field if present, else the last `\boxed{}` of
    /// the solution field.
    Math {
        /// Problem field (default `problem`).
        #[serde(default = "q_problem")]
        problem: String,
        /// Solution field (default `solution`).
        #[serde(default = "q_solution")]
        solution: String,
        /// Answer field (default `answer`), used first when present.
        #[serde(default = "q_answer")]
        answer: String,
    },
    /// Plain: the prompt and the answer as they are.
    Plain {
        /// Prompt field (default `prompt`).
        #[serde(default = "q_prompt")]
        prompt: String,
        /// Answer field (default `answer`).
        #[serde(default = "q_answer")]
        answer: String,
    },
}

fn q_question() -> String {
    "question".into()
}
fn q_answer() -> String {
    "answer".into()
}
fn q_problem() -> String {
    "problem".into()
}
fn q_solution() -> String {
    "solution".into()
}
fn q_prompt() -> String {
    "prompt".into()
}

impl DatasetFormat {
    /// GSM8K with its usual field names.
    pub fn gsm8k() -> Self {
        DatasetFormat::Gsm8k {
            question: q_question(),
            answer: q_answer(),
        }
    }
    /// MATH with its usual field names.
    pub fn math() -> Self {
        DatasetFormat::Math {
            problem: q_problem(),
            solution: q_solution(),
            answer: q_answer(),
        }
    }
    /// Plain `prompt` / `answer`.
    pub fn plain() -> Self {
        DatasetFormat::Plain {
            prompt: q_prompt(),
            answer: q_answer(),
        }
    }
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Skip it and report it in the returned list.
    #[default]
    Skip,
    /// Fail the whole load with an error naming the line.
    Reject,
}

/// A skipped line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

fn field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> std::result::Result<&'a str, String> {
    match obj.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) if other.is_number() => {
            Err(format!("field `{name}` is a number; write it as a string"))
        }
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

fn parse_line(line: &str, format: &DatasetFormat) -> std::result::Result<(String, String), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("the line is not a JSON object")?;
    // Numbers are accepted as answers (plain datasets often store them so).
    let answer_of = |name: &str| -> std::result::Result<String, String> {
        match obj.get(name) {
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => field(obj, name).map(str::to_string),
        }
    };
    match format {
        DatasetFormat::Gsm8k { question, answer } => {
            let q = field(obj, question)?;
            let a = field(obj, answer)?;
            let gold = a
                .rsplit_once("####")
                .map(|(_, g)| g.trim().to_string())
                .ok_or_else(|| format!("field `{answer}` has no `#### N` final answer"))?;
            Ok((q.to_string(), gold))
        }
        DatasetFormat::Math {
            problem,
            solution,
            answer,
        } => {
            let q = field(obj, problem)?;
            if let Ok(a) = answer_of(answer) {
                return Ok((q.to_string(), a));
            }
            let s = field(obj, solution)?;
            let gold = last_boxed(s).filter(|b| !b.is_empty()).ok_or_else(|| {
                format!("no `{answer}` field and no \\boxed{{}} answer in field `{solution}`")
            })?;
            Ok((q.to_string(), gold))
        }
        DatasetFormat::Plain { prompt, answer } => {
            Ok((field(obj, prompt)?.to_string(), answer_of(answer)?))
        }
    }
}

/// Loads tasks from a JSONL file. Malformed lines are skipped and listed, or rejected with an
/// error naming the file and line, as `on_error` says. Empty lines are ignored.
///
/// Each task's `kind` is `kind`, its id `<file stem>-<line>`, its prompt the boxed-answer
/// instruction plus the question.
pub fn load_jsonl(
    path: &Path,
    format: &DatasetFormat,
    kind: &str,
    on_error: OnError,
) -> Result<(Vec<Task>, Vec<LineError>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("data")
        .to_string();
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let message = format!("unreadable line: {e}");
                if on_error == OnError::Reject {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        message: format!("line {n}: {message}"),
                    });
                }
                errors.push(LineError { line: n, message });
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, format) {
            Ok((q, a)) => tasks.push(Task {
                id: format!("{stem}-{n}"),
                kind: kind.to_string(),
                messages: format_prompt(&q, None),
                answer: a,
            }),
            Err(message) => {
                if on_error == OnError::Reject {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        message: format!(
                            "line {n}: {message} (set on_error = skip to skip bad lines)"
                        ),
                    });
                }
                errors.push(LineError { line: n, message });
            }
        }
    }
    Ok((tasks, errors))
}
