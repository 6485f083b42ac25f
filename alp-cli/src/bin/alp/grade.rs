//! `alp grade`: grade a JSONL file of `{"answer": ..., "prediction": ...}` lines.
use std::io::{BufRead, Write};
use std::path::Path;

use alp_envs::math::{grade_with, ExtractMode};
use anyhow::{Context, Result};
use serde_json::{json, Value};

fn text_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> std::result::Result<String, String> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("field `{name}` must be a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

/// Writes one JSON line per input line to stdout and the accuracy to stderr.
pub fn run(input: &Path, strict: bool) -> Result<()> {
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open --input {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mode = if strict {
        ExtractMode::Strict
    } else {
        ExtractMode::Lenient
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut total, mut correct, mut bad) = (0usize, 0usize, 0usize);
    for (i, bytes) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = bytes.with_context(|| format!("reading line {n} of {}", input.display()))?;
        // A line that is not UTF-8 is one bad line, not the end of the run.
        let text = String::from_utf8(bytes);
        if text.as_ref().is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        total += 1;
        let parsed: std::result::Result<(String, String), String> = text
            .map_err(|_| "the line is not valid UTF-8".to_string())
            .and_then(|line| {
                serde_json::from_str::<Value>(&line).map_err(|e| format!("invalid JSON: {e}"))
            })
            .and_then(|v| {
                let obj = v
                    .as_object()
                    .ok_or("the line is not a JSON object")?
                    .clone();
                Ok((text_field(&obj, "answer")?, text_field(&obj, "prediction")?))
            });
        let record = match parsed {
            Ok((answer, prediction)) => {
                let v = grade_with(&answer, &prediction, mode);
                correct += v.correct as usize;
                json!({"line": n, "correct": v.correct, "extracted": v.extracted, "source": v.source, "gold": v.gold})
            }
            Err(e) => {
                bad += 1;
                eprintln!("line {n}: {e}; graded as incorrect");
                json!({"line": n, "correct": false, "extracted": null, "error": e})
            }
        };
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    if total == 0 {
        anyhow::bail!(
            "--input {} has no lines to grade (each line: {{\"answer\": ..., \"prediction\": ...}})",
            input.display()
        );
    }
    let acc = correct as f64 / total as f64;
    eprintln!(
        "graded {total} lines ({} mode): {correct} correct, accuracy {:.4}{}",
        if strict { "strict" } else { "lenient" },
        acc,
        if bad > 0 {
            format!(", {bad} malformed lines")
        } else {
            String::new()
        }
    );
    if bad == total {
        anyhow::bail!(
            "no line of --input {} could be graded (each line: {{\"answer\": ..., \"prediction\": ...}})",
            input.display()
        );
    }
    Ok(())
}
