//! Loading math datasets from JSONL or Parquet (as Hugging Face datasets ship them; feature
//! `parquet`, on by default): GSM8K (`question`, `answer` ending in `#### N`), MATH
//! (`problem`, `solution` with `\boxed{}`, or an `answer` field) and a plain `prompt`/`answer`
//! form, with configurable field names; [`TaskList`] serves the tasks as a resumable stream.

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
    /// The shape a record's field names say: GSM8K with `question`, MATH with `problem`,
    /// else plain.
    pub fn detect(record: &serde_json::Map<String, serde_json::Value>) -> Self {
        if record.contains_key("question") {
            Self::gsm8k()
        } else if record.contains_key("problem") {
            Self::math()
        } else {
            Self::plain()
        }
    }

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
    parse_record(obj, format)
}

/// The question and gold answer of one record (a JSON line or a Parquet row).
fn parse_record(
    obj: &serde_json::Map<String, serde_json::Value>,
    format: &DatasetFormat,
) -> std::result::Result<(String, String), String> {
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
    let mut records = Records::new(path, kind, on_error, "line");
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                records.take(n, Err(format!("unreadable line: {e}")), false)?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        records.take(n, parse_line(&line, format), true)?;
    }
    Ok(records.finish())
}

/// The tasks made from a file's records one by one, and the records skipped, as `on_error`
/// says: a task's id is `<file stem>-<n>`, its prompt the boxed-answer instruction plus the
/// question.
struct Records<'a> {
    path: &'a Path,
    stem: String,
    kind: &'a str,
    on_error: OnError,
    /// What a record is called in messages (`line`, `row`).
    unit: &'static str,
    tasks: Vec<Task>,
    errors: Vec<LineError>,
}

impl<'a> Records<'a> {
    fn new(path: &'a Path, kind: &'a str, on_error: OnError, unit: &'static str) -> Self {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("data")
            .to_string();
        Records {
            path,
            stem,
            kind,
            on_error,
            unit,
            tasks: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Record `n` (1-based): its question and gold answer, or what is wrong with it (an error
    /// naming the file and the record under `OnError::Reject`, with how to skip instead when
    /// `hint`).
    fn take(
        &mut self,
        n: usize,
        parsed: std::result::Result<(String, String), String>,
        hint: bool,
    ) -> Result<()> {
        match parsed {
            Ok((q, a)) => self.tasks.push(Task {
                id: format!("{}-{n}", self.stem),
                kind: self.kind.to_string(),
                messages: format_prompt(&q, None),
                answer: a,
            }),
            Err(message) => {
                if self.on_error == OnError::Reject {
                    let unit = self.unit;
                    let how = if hint {
                        format!(" (set on_error = skip to skip bad {unit}s)")
                    } else {
                        String::new()
                    };
                    return Err(Error::Parse {
                        path: self.path.to_path_buf(),
                        message: format!("{unit} {n}: {message}{how}"),
                    });
                }
                self.errors.push(LineError { line: n, message });
            }
        }
        Ok(())
    }

    fn finish(self) -> (Vec<Task>, Vec<LineError>) {
        (self.tasks, self.errors)
    }
}

/// Loads tasks from a dataset file: Parquet (`.parquet`) or JSONL (anything else), in
/// `format`, or with `None` the shape the first record's field names say
/// ([`DatasetFormat::detect`]). Bad records are skipped and listed, or rejected with an error
/// naming the file, the line or row, and the field, as `on_error` says.
pub fn load_tasks(
    path: &Path,
    format: Option<&DatasetFormat>,
    kind: &str,
    on_error: OnError,
) -> Result<(Vec<Task>, Vec<LineError>)> {
    let is_parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if is_parquet {
        return load_parquet(path, format, kind, on_error);
    }
    let format = match format {
        Some(f) => f.clone(),
        None => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let first = std::io::BufReader::new(file)
                .lines()
                .map_while(|l| l.ok())
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&first) {
                Ok(serde_json::Value::Object(o)) => DatasetFormat::detect(&o),
                _ => DatasetFormat::plain(),
            }
        }
    };
    load_jsonl(path, &format, kind, on_error)
}

/// Loads tasks from a Parquet file (each row a record; string and integer columns read as
/// JSON values), as [`load_tasks`] describes.
#[cfg(feature = "parquet")]
pub fn load_parquet(
    path: &Path,
    format: Option<&DatasetFormat>,
    kind: &str,
    on_error: OnError,
) -> Result<(Vec<Task>, Vec<LineError>)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |m: String| Error::Parse {
        path: path.to_path_buf(),
        message: m,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad(format!("cannot read its rows: {e}")))?;
    let mut format = format.cloned();
    let mut records = Records::new(path, kind, on_error, "row");
    for (i, row) in rows.enumerate() {
        let parsed = row
            .map_err(|e| format!("unreadable row: {e}"))
            .and_then(|r| match r.to_json_value() {
                serde_json::Value::Object(o) => {
                    let f = format.get_or_insert_with(|| DatasetFormat::detect(&o));
                    parse_record(&o, f)
                }
                _ => Err("the row is not a record".into()),
            });
        records.take(i + 1, parsed, true)?;
    }
    Ok(records.finish())
}

/// Without the `parquet` feature: an error that says how to get it.
#[cfg(not(feature = "parquet"))]
pub fn load_parquet(
    path: &Path,
    _format: Option<&DatasetFormat>,
    _kind: &str,
    _on_error: OnError,
) -> Result<(Vec<Task>, Vec<LineError>)> {
    Err(Error::Parse {
        path: path.to_path_buf(),
        message: "this build reads no Parquet: build alp-envs with its `parquet` feature (on by default), or convert the file to JSONL".into(),
    })
}

/// A dataset's tasks as a resumable [`alp_core::TaskSource`]: once through in order
/// ([`TaskList::once`], held-out evaluation), or endlessly, each pass in its own seeded
/// order ([`TaskList::cycled`], training). The cursor is the index of the next task.
#[derive(Debug, Clone)]
pub struct TaskList {
    tasks: Vec<Task>,
    /// The seed of each pass's order (None: in file order, one pass).
    seed: Option<u64>,
    next: u64,
    /// The order of the pass `next` is in: (pass, permutation).
    order: Option<(u64, Vec<usize>)>,
}

impl TaskList {
    /// The tasks once, in order (then `None`).
    pub fn once(tasks: Vec<Task>) -> Self {
        TaskList {
            tasks,
            seed: None,
            next: 0,
            order: None,
        }
    }

    /// The tasks without end, each pass shuffled by `seed` and the pass number.
    pub fn cycled(tasks: Vec<Task>, seed: u64) -> Self {
        TaskList {
            tasks,
            seed: Some(seed),
            next: 0,
            order: None,
        }
    }

    /// How many tasks one pass holds.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it holds no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl alp_core::TaskSource for TaskList {
    fn next_task(&mut self) -> Option<Task> {
        let n = self.tasks.len() as u64;
        if n == 0 {
            return None;
        }
        let (pass, at) = (self.next / n, (self.next % n) as usize);
        let i = match self.seed {
            None if pass > 0 => return None,
            None => at,
            Some(seed) => {
                if self.order.as_ref().map(|o| o.0) != Some(pass) {
                    use rand::seq::SliceRandom;
                    let mut perm: Vec<usize> = (0..n as usize).collect();
                    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                        seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    perm.shuffle(&mut rng);
                    self.order = Some((pass, perm));
                }
                self.order.as_ref().map_or(at, |o| o.1[at])
            }
        };
        self.next += 1;
        Some(self.tasks[i].clone())
    }

    fn cursor(&self) -> u64 {
        self.next
    }

    fn seek(&mut self, cursor: u64) {
        self.next = cursor;
    }
}
