//! Finding the final answer in a model's text.
//!
//! The order follows what graders such as math-verify do: the last `\boxed{...}` (or
//! `\fbox`) wins; in lenient mode, without a box, a GSM8K `#### N` line, then "the (final)
//! answer is ...", then the last LaTeX span or number, whichever ends later.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Longest text the extractor looks at; longer texts are cut to their last part.
pub const MAX_TEXT_LEN: usize = 100_000;
/// Longest extracted answer kept.
pub const MAX_ANSWER_LEN: usize = 1_000;

/// How hard the extractor tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtractMode {
    /// Only a `\boxed{}` / `\fbox{}` answer counts.
    Strict,
    /// Box first, then `#### N`, "the answer is ...", then the last LaTeX span or number.
    #[default]
    Lenient,
}

/// Where an extracted answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerSource {
    /// `\boxed{...}` or `\fbox{...}`.
    Boxed,
    /// A GSM8K-style `#### N` line.
    Hashes,
    /// "the answer is ..." / "answer: ...".
    AnswerIs,
    /// The last `$...$`, `\(...\)` or `\[...\]` span.
    Latex,
    /// The last number in the text.
    Number,
    /// The whole text (used for gold answers written bare).
    Whole,
}

/// An extracted answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// The answer text (LaTeX, not yet normalised).
    pub text: String,
    /// Where it came from.
    pub source: AnswerSource,
}

/// The part of a long text the extractor reads: its last `MAX_TEXT_LEN` bytes, but starting
/// no later than the last `\boxed`/`\fbox` (so a cut never drops the box that decides the
/// answer; the box is found with one linear scan).
fn tail(text: &str) -> &str {
    if text.len() <= MAX_TEXT_LEN {
        return text;
    }
    let mut start = text.len() - MAX_TEXT_LEN;
    let last_box = [r"\boxed", r"\fbox"]
        .iter()
        .filter_map(|b| text.rfind(b))
        .max();
    if let Some(b) = last_box {
        start = start.min(b);
    }
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn cap(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_ANSWER_LEN {
        return s.to_string();
    }
    let mut end = MAX_ANSWER_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The content of the last `\boxed{...}` / `\boxed x` / `\fbox{...}`; `Some("")` for an
/// empty box, `None` when there is no (well-formed) box.
pub fn last_boxed(text: &str) -> Option<String> {
    let text = tail(text);
    let idx = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|m| text.rfind(m).map(|i| (i, m.len())))
        .max_by_key(|(i, _)| *i)?;
    let rest = &text[idx.0 + idx.1..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        let mut depth = 1usize;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                '\\' if !escaped => {
                    escaped = true;
                    continue;
                }
                '{' if !escaped => depth += 1,
                '}' if !escaped => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(cap(&inner[..i]));
                    }
                }
                _ => {}
            }
            escaped = false;
        }
        None
    } else if rest.starts_with(char::is_whitespace) {
        // \boxed 5 : the next token.
        let tok: String = trimmed
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        let tok = tok.trim_end_matches(['.', ',']);
        (!tok.is_empty()).then(|| cap(tok))
    } else {
        None
    }
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static regex"))
}

/// The last LaTeX span and its end offset.
fn last_latex(text: &str) -> Option<(String, usize)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &RE,
        r"(?s)\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$((?:\\\$|[^\n$])+?)\$|(-?\\frac\{-?\d+(?:[.,]\d+)?\}\{-?\d+(?:[.,]\d+)?\})",
    );
    let mut best = None;
    for c in r.captures_iter(text) {
        let whole = c.get(0).expect("group 0");
        let inner = (1..=5).find_map(|i| c.get(i)).map(|m| m.as_str());
        if let Some(inner) = inner {
            if !inner.trim().is_empty() {
                best = Some((inner.to_string(), whole.end()));
            }
        }
    }
    best
}

/// The last number (integers with thousands separators, decimals, simple fractions `a/b`)
/// and its end offset.
fn last_number(text: &str) -> Option<(String, usize)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &RE,
        r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?",
    );
    let mut best = None;
    for m in r.find_iter(text) {
        let s = m.as_str();
        if s.chars().any(|c| c.is_ascii_digit()) {
            // A number must start a word: after the start, a space, `=`, `$`, `*` or a
            // currency sign (so AZYUK2A, x2 and `{5` give nothing).
            let mut prev = text[..m.start()].chars().rev();
            let before = prev.next();
            // A currency sign counts only where it starts a word itself (not `\$`).
            let ok = match before {
                None => true,
                Some(c) if c.is_whitespace() || c == '=' || c == '*' => true,
                Some(c) if "$€£¥₹".contains(c) => prev
                    .next()
                    .is_none_or(|p| p.is_whitespace() || p == '=' || p == '*'),
                _ => false,
            };
            if !ok {
                continue;
            }
            let after = text[m.end()..].chars().next();
            if after.is_some_and(|c| {
                c.is_alphabetic() && !matches!(c, 'm' | 'k' | 'c' | 'g' | 's' | 'h')
            }) {
                continue;
            }
            best = Some((s.to_string(), m.end()));
        }
    }
    best
}

/// Extracts the final answer of a model's text.
pub fn extract_answer(text: &str, mode: ExtractMode) -> Option<Extracted> {
    let text = tail(text);
    if let Some(b) = last_boxed(text) {
        return Some(Extracted {
            text: b,
            source: AnswerSource::Boxed,
        });
    }
    if mode == ExtractMode::Strict {
        return None;
    }
    static HASH: OnceLock<Regex> = OnceLock::new();
    if let Some(c) = re(&HASH, r"####\s*([^\n]+)").captures_iter(text).last() {
        let s = c[1].trim();
        if !s.is_empty() {
            return Some(Extracted {
                text: cap(s.trim_end_matches('.')),
                source: AnswerSource::Hashes,
            });
        }
    }
    static ANSWER_IS: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &ANSWER_IS,
        r"(?i)(?:final answer|the answer|answer)\s*(?:is|:)\s*:?\s*([^\n]{1,300})",
    );
    if let Some(c) = r.captures_iter(text).last() {
        let span = c[1].trim();
        // Prefer a LaTeX span inside the phrase. Outside math delimiters only a plain number
        // or arithmetic counts (as in math-verify): bare LaTeX there is prose, not an answer.
        static PLAIN: OnceLock<Regex> = OnceLock::new();
        let plain = re(
            &PLAIN,
            r"^[-+]?[$€£]?\(?[-+]?\d(?:[\d.\s+\-*×/()÷]|\^\d|,\d{3})*(?:\^\{?\\circ\}?|%|\s*percent)?",
        );
        let ans = if let Some((l, _)) = last_latex(span) {
            l
        } else if let Some(m) = plain.find(span) {
            let m = m.as_str().trim_end();
            // "42. Done" / "42, so": sentence punctuation is not part of the number.
            m.trim_end_matches(['.', ',']).to_string()
        } else {
            String::new()
        };
        if !ans.trim().is_empty() {
            return Some(Extracted {
                text: cap(&ans),
                source: AnswerSource::AnswerIs,
            });
        }
    }
    let latex = last_latex(text);
    let number = last_number(text);
    match (latex, number) {
        (Some((l, le)), Some((n, ne))) => Some(if ne > le {
            Extracted {
                text: cap(&n),
                source: AnswerSource::Number,
            }
        } else {
            Extracted {
                text: cap(&l),
                source: AnswerSource::Latex,
            }
        }),
        (Some((l, _)), None) => Some(Extracted {
            text: cap(&l),
            source: AnswerSource::Latex,
        }),
        (None, Some((n, _))) => Some(Extracted {
            text: cap(&n),
            source: AnswerSource::Number,
        }),
        (None, None) => None,
    }
}

/// The gold answer of a dataset entry: the last box or `#### N` if present, the last LaTeX
/// span if the answer is written in `$...$`, else the whole string.
pub fn extract_gold(answer: &str) -> Extracted {
    let answer = tail(answer);
    if let Some(b) = last_boxed(answer) {
        return Extracted {
            text: b,
            source: AnswerSource::Boxed,
        };
    }
    if let Some(i) = answer.rfind("####") {
        return Extracted {
            text: cap(&answer[i + 4..]),
            source: AnswerSource::Hashes,
        };
    }
    if answer.contains('$') || answer.contains("\\(") || answer.contains("\\[") {
        if let Some((l, _)) = last_latex(answer) {
            return Extracted {
                text: cap(&l),
                source: AnswerSource::Latex,
            };
        }
    }
    Extracted {
        text: cap(answer),
        source: AnswerSource::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_forms() {
        assert_eq!(
            last_boxed("a \\boxed{\\frac{1}{2}} b").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            last_boxed("\\boxed{1} then \\boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(last_boxed("\\boxed 5.").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\fbox{7}").as_deref(), Some("7"));
        assert_eq!(last_boxed("\\boxed{}").as_deref(), Some(""));
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(
            last_boxed("\\boxed{\\{1,2\\}}").as_deref(),
            Some("\\{1,2\\}")
        );
    }

    #[test]
    fn lenient_fallbacks() {
        let e = extract_answer("so\n#### 1,234", ExtractMode::Lenient).unwrap();
        assert_eq!((e.text.as_str(), e.source), ("1,234", AnswerSource::Hashes));
        let e = extract_answer("The answer is 42. Done", ExtractMode::Lenient).unwrap();
        assert_eq!(e.text, "42");
        let e = extract_answer("we get 3 then 17 apples", ExtractMode::Lenient).unwrap();
        assert_eq!(e.text, "17");
        assert!(extract_answer("we get 3 then 17", ExtractMode::Strict).is_none());
        let e = extract_answer("so $x = 5$", ExtractMode::Lenient).unwrap();
        assert_eq!((e.text.as_str(), e.source), ("x = 5", AnswerSource::Latex));
    }
}
