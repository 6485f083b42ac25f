//! Deciding whether two answers are mathematically the same.
//!
//! An answer is normalised (LaTeX spacing, `\left`/`\right`, `\dfrac`, units in `\text{}`,
//! `\$`, `%`, degrees, thousands separators, a leading `x =`) and parsed into a [`Value`]:
//! a scalar expression, a tuple or interval (brackets matter), an unordered set, a union of
//! intervals, a matrix, an equation, a multiple-choice letter or plain text. Scalars are
//! compared numerically: exactly written values (integers, fractions, radicals, π) to a
//! relative 1e-10, anything written with a decimal point after rounding to 6 decimals (what
//! math-verify does); expressions with variables at several random points.

use super::expr::{parse_expr, Expr};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// One number or expression.
    Scalar(Expr),
    /// `(a, b, ...)` / `[a, b]` / `[a, b)`: ordered, and the brackets must match.
    Tuple {
        /// Opening bracket.
        open: char,
        /// Closing bracket.
        close: char,
        /// Elements.
        items: Vec<Value>,
    },
    /// `\{a, b\}`, `a, b` or `a \pm b`: unordered.
    Set(Vec<Value>),
    /// `A \cup B`: unordered union.
    Union(Vec<Value>),
    /// `\begin{pmatrix}...\end{pmatrix}`: rows of entries.
    Matrix(Vec<Vec<Value>>),
    /// `lhs = rhs` where the left side is more than a name.
    Equation(Expr, Expr),
    /// A multiple-choice letter: `B`, `(B)`, `\text{B}`.
    Choice(char),
    /// Anything else, compared as normalised text.
    Text(String),
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static regex"))
}

/// Normalises a LaTeX answer string (see the module docs).
pub fn normalize(s: &str) -> String {
    let mut s = s.trim().to_string();
    // Units: a \text{...} (or \mbox, \mathrm) word right after a number goes, with a power
    // (`15\text{ cm}^2`). Bare words are not stripped (math-verify does not either).
    static UNITS: OnceLock<Regex> = OnceLock::new();
    let units = re(
        &UNITS,
        r"(\d|\})\s*\\(?:text|textnormal|textrm|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?",
    );
    s = units.replace_all(&s, "$1").to_string();
    // Text wrappers: keep the content.
    static TEXT: OnceLock<Regex> = OnceLock::new();
    let text_re = re(
        &TEXT,
        r"\\(?:text|textbf|textit|textnormal|textrm|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}",
    );
    for _ in 0..4 {
        let next = text_re.replace_all(&s, " $1 ").to_string();
        if next == s {
            break;
        }
        s = next;
    }
    // Protect row breaks (`\\`) from the one-backslash rules below.
    s = s.replace("\\\\", "\u{0}");
    for (from, to) in [
        ("\\displaystyle", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\bigl", ""),
        ("\\bigr", ""),
        ("\\Bigl", ""),
        ("\\Bigr", ""),
        ("\\big", ""),
        ("\\Big", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\qquad", " "),
        ("\\quad", " "),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("~", " "),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("{,}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("\\lt", "<"),
        ("\\gt", ">"),
        ("\\leq", "≤"),
        ("\\le", "≤"),
        ("<=", "≤"),
        ("\\geq", "≥"),
        ("\\ge", "≥"),
        (">=", "≥"),
        ("\\neq", "≠"),
        ("\\ne", "≠"),
        ("!=", "≠"),
        ("\\approx", "="),
        ("\\dots", ""),
        ("\\ldots", ""),
    ] {
        s = s.replace(from, to);
    }
    s = s.replace('\u{0}', "\\\\");
    // "x \in [0,1)" is the set.
    if let Some(i) = s
        .rfind("\\in ")
        .or_else(|| s.rfind("\\in["))
        .or_else(|| s.rfind("\\in("))
    {
        s = s[i + 3..].to_string();
    }
    let s = s.trim().trim_end_matches(['.', ',', ';']).trim();
    // Thousands separators: 1,234,567 (three-digit groups) and "1 000".
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    let th = re(
        &THOUSANDS,
        r"(^|[^\d.,])([1-9]\d{0,2}(?:,\d{3})+)(?:$|[^\d,])",
    );
    let mut out = s.to_string();
    for _ in 0..8 {
        let Some(c) = th.captures(&out) else { break };
        let m = c.get(2).expect("group 2");
        let digits = m.as_str().replace(',', "");
        out.replace_range(m.range(), &digits);
    }
    out.trim().to_string()
}

/// Splits at top-level occurrences of `sep` (outside any brackets).
fn split_top(s: &str, sep: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let c = bytes[i];
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && bytes[i..].starts_with(sep.as_bytes()) {
            parts.push(s[start..i].to_string());
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(s[start..].to_string());
    parts
}

fn brackets_balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// True when `s` is one bracket group from its first to its last character.
fn is_single_group(s: &str) -> bool {
    if s.len() < 2 {
        return false;
    }
    let inner = &s[1..s.len() - 1];
    brackets_balanced(inner)
}

fn is_name(s: &str) -> bool {
    static NAME: OnceLock<Regex> = OnceLock::new();
    re(
        &NAME,
        r"^(?:[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?|\\[a-zA-Z]+|[A-Za-z]\([^()]*\)|\([A-Za-z](?:,\s*[A-Za-z])*\))$",
    )
    .is_match(s.trim())
}

const MAX_ITEMS: usize = 64;

/// Set elements that are sets themselves (`1 \\pm \\sqrt{5}`) contribute their elements.
fn flatten(items: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in items {
        match v {
            Value::Set(inner) => out.extend(inner),
            v => out.push(v),
        }
    }
    out
}

/// Parses a normalised answer into a [`Value`].
pub fn parse_value(s: &str) -> Value {
    parse_value_depth(s, 0)
}

fn parse_value_depth(s: &str, depth: usize) -> Value {
    let s = s.trim();
    let text = || {
        Value::Text(
            s.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_lowercase(),
        )
    };
    if depth > 8 || s.is_empty() {
        return text();
    }
    // Multiple choice.
    static CHOICE: OnceLock<Regex> = OnceLock::new();
    if let Some(c) = re(&CHOICE, r"^\(?\s*([A-E])\s*\)?$").captures(s) {
        return Value::Choice(c[1].chars().next().expect("letter"));
    }
    // Matrices.
    static MATRIX: OnceLock<Regex> = OnceLock::new();
    if let Some(c) = re(
        &MATRIX,
        r"(?s)^\\begin\{([pbvB]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{(?:[pbvB]?matrix|array)\}$",
    )
    .captures(s)
    {
        let rows: Vec<Vec<Value>> = c[2]
            .split("\\\\")
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .take(MAX_ITEMS)
            .map(|r| {
                r.split('&')
                    .take(MAX_ITEMS)
                    .map(|x| parse_value_depth(x, depth + 1))
                    .collect()
            })
            .collect();
        return Value::Matrix(rows);
    }
    if !brackets_balanced(s) {
        return text();
    }
    // Unions of intervals.
    let union = split_top(s, "\\cup");
    if union.len() > 1 {
        return Value::Union(
            union
                .iter()
                .take(MAX_ITEMS)
                .map(|p| parse_value_depth(p, depth + 1))
                .collect(),
        );
    }
    // Relations.
    if s.contains(['<', '>', '≤', '≥', '≠']) {
        return text();
    }
    // Bare lists; `x = 2, y = -1` is the point (2, -1).
    let parts = split_top(s, ",");
    if parts.len() > 1
        && parts.iter().all(|p| {
            let kv = split_top(p, "=");
            kv.len() == 2 && is_name(&kv[0])
        })
    {
        return Value::Tuple {
            open: '(',
            close: ')',
            items: parts
                .iter()
                .take(MAX_ITEMS)
                .map(|p| parse_value_depth(&split_top(p, "=")[1], depth + 1))
                .collect(),
        };
    }
    let eq = split_top(s, "=");
    if eq.len() > 2 {
        return parse_value_depth(eq.last().expect("parts"), depth + 1);
    }
    if eq.len() == 2 {
        if is_name(&eq[0]) {
            return match parse_value_depth(&eq[1], depth + 1) {
                // `x = B` names choice B; `x = (B)` is not a choice (as math-verify reads it).
                Value::Choice(c) if eq[1].trim().starts_with('(') => {
                    Value::Text(format!("{}={c}", eq[0].trim()))
                }
                v => v,
            };
        }
        return match (parse_expr(&eq[0]), parse_expr(&eq[1])) {
            (Some(l), Some(r)) => Value::Equation(l, r),
            _ => text(),
        };
    }
    // Sets.
    if s.starts_with("\\{") && s.ends_with("\\}") {
        let inner = &s[2..s.len() - 2];
        if inner.trim().is_empty() {
            return Value::Set(vec![]);
        }
        return Value::Set(flatten(
            split_top(inner, ",")
                .iter()
                .take(MAX_ITEMS)
                .map(|p| parse_value_depth(p, depth + 1)),
        ));
    }
    // Tuples and intervals.
    let first = s.chars().next().expect("non-empty");
    let last = s.chars().next_back().expect("non-empty");
    if matches!(first, '(' | '[') && matches!(last, ')' | ']') && is_single_group(s) {
        let inner = &s[1..s.len() - 1];
        let parts = split_top(inner, ",");
        if parts.len() > 1 {
            return Value::Tuple {
                open: first,
                close: last,
                items: parts
                    .iter()
                    .take(MAX_ITEMS)
                    .map(|p| parse_value_depth(p, depth + 1))
                    .collect(),
            };
        }
    }
    let parts = split_top(s, ",");
    if parts.len() > 1 {
        return Value::Set(flatten(
            parts
                .iter()
                .take(MAX_ITEMS)
                .map(|p| parse_value_depth(p, depth + 1)),
        ));
    }
    // a \pm b.
    if let Some((a, b)) = s.split_once("\\pm") {
        if let (Some(p), Some(m)) = (
            parse_expr(&format!("{a}+{b}")),
            parse_expr(&format!("{a}-{b}")),
        ) {
            return Value::Set(vec![Value::Scalar(p), Value::Scalar(m)]);
        }
    }
    match parse_expr(s) {
        Some(e) => Value::Scalar(e),
        None => text(),
    }
}

/// Whether two numbers are the same answer. `inexact`: one of them was written with a
/// decimal point, so the comparison rounds to 6 decimals.
fn numbers_equal(a: f64, b: f64, inexact: bool) -> bool {
    if a == b {
        return true;
    }
    if !a.is_finite() || !b.is_finite() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    if (a - b).abs() <= 1e-10 * scale {
        return true;
    }
    if inexact && scale < 1e9 {
        return (a * 1e6).round() == (b * 1e6).round();
    }
    false
}

/// A small deterministic generator for evaluation points.
fn points(seed: u64, n: usize) -> impl Iterator<Item = f64> {
    let mut x = seed;
    (0..n).map(move |_| {
        let z = alp_core::splitmix64(x);
        x = x.wrapping_add(alp_core::GOLDEN_GAMMA);
        0.31 + 2.37 * (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// ±∞ written as such (not a number too large for f64).
fn infinity_sign(e: &Expr) -> Option<i8> {
    match e {
        Expr::Inf => Some(1),
        Expr::Neg(a) => infinity_sign(a).map(|s| -s),
        _ => None,
    }
}

/// Two constant expressions: integers and rationals compare exactly (any size); a value too
/// large for f64 is never equal to another by overflow; otherwise the numeric tolerance.
fn constants_equal(a: &Expr, b: &Expr, inexact: bool) -> bool {
    if let (Some(x), Some(y)) = (a.exact_value(), b.exact_value()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (infinity_sign(a), infinity_sign(b)) {
        return x == y;
    }
    let empty = BTreeMap::new();
    match (a.eval(&empty), b.eval(&empty)) {
        (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
            // An exact rational against an irrational form (√2, π) keeps the tolerance.
            numbers_equal(x, y, inexact)
        }
        _ => a == b,
    }
}

fn exprs_equal(a: &Expr, b: &Expr) -> bool {
    let va = a.variables();
    let vb = b.variables();
    let inexact = !a.is_exact() || !b.is_exact();
    if va.is_empty() && vb.is_empty() {
        return constants_equal(a, b, inexact);
    }
    if va != vb {
        return false;
    }
    let mut agreed = 0;
    for k in 0..8u64 {
        let vars: BTreeMap<String, f64> = va
            .iter()
            .cloned()
            .zip(points(k * 7919 + 1, va.len()))
            .collect();
        match (a.eval(&vars), b.eval(&vars)) {
            (Some(x), Some(y)) => {
                let scale = x.abs().max(y.abs()).max(1e-12);
                if (x - y).abs() > 1e-8 * scale && !(inexact && numbers_equal(x, y, true)) {
                    return false;
                }
                agreed += 1;
            }
            (None, None) => {}
            _ => return false,
        }
    }
    agreed >= 3
}

/// `l1 = r1` and `l2 = r2` describe the same relation: l − r proportional.
fn equations_equal(l1: &Expr, r1: &Expr, l2: &Expr, r2: &Expr) -> bool {
    let d1 = Expr::Sub(Box::new(l1.clone()), Box::new(r1.clone()));
    let d2 = Expr::Sub(Box::new(l2.clone()), Box::new(r2.clone()));
    let vars = d1.variables();
    if vars != d2.variables() {
        return false;
    }
    let mut ratio: Option<f64> = None;
    let mut agreed = 0;
    for k in 0..8u64 {
        let at: BTreeMap<String, f64> = vars
            .iter()
            .cloned()
            .zip(points(k * 104_729 + 3, vars.len()))
            .collect();
        let (Some(x), Some(y)) = (d1.eval(&at), d2.eval(&at)) else {
            continue;
        };
        if x.abs() < 1e-12 && y.abs() < 1e-12 {
            continue;
        }
        if x.abs() < 1e-12 || y.abs() < 1e-12 {
            return false;
        }
        let r = x / y;
        match ratio {
            None => ratio = Some(r),
            Some(r0) if (r - r0).abs() > 1e-8 * r0.abs() => return false,
            _ => {}
        }
        agreed += 1;
    }
    agreed >= 3
}

fn unordered_equal(a: &[Value], b: &[Value]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && values_equal(x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

/// Whether a gold value and a predicted value are the same answer.
pub fn values_equal(gold: &Value, pred: &Value) -> bool {
    use Value::*;
    match (gold, pred) {
        (Scalar(a), Scalar(b)) => exprs_equal(a, b),
        (
            Tuple {
                open: o1,
                close: c1,
                items: a,
            },
            Tuple {
                open: o2,
                close: c2,
                items: b,
            },
        ) => {
            o1 == o2
                && c1 == c2
                && a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| values_equal(x, y))
        }
        (Set(a), Set(b)) | (Union(a), Union(b)) => unordered_equal(a, b),
        (Set(a), x) | (x, Set(a)) if a.len() == 1 && !matches!(x, Set(_)) => values_equal(&a[0], x),
        (Matrix(a), Matrix(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(r, s)| {
                    r.len() == s.len() && r.iter().zip(s).all(|(x, y)| values_equal(x, y))
                })
        }
        (Equation(l1, r1), Equation(l2, r2)) => equations_equal(l1, r1, l2, r2),
        (Choice(a), Choice(b)) => a == b,
        (Choice(a), Scalar(Expr::Var(v))) | (Scalar(Expr::Var(v)), Choice(a)) => {
            v.len() == 1 && v.starts_with(*a)
        }
        (Text(a), Text(b)) => !a.is_empty() && a == b,
        _ => false,
    }
}

/// Whether two answer strings (already extracted) are equivalent.
pub fn answers_equal(gold: &str, pred: &str) -> bool {
    let (gold_raw, pred_raw) = (gold, pred);
    let g = normalize(gold);
    let p = normalize(pred);
    if g.is_empty() || p.is_empty() {
        return false;
    }
    let gold = parse_value(&g);
    let pred = parse_value(&p);
    if values_equal(&gold, &pred) {
        return true;
    }
    // A percentage also matches its fraction (28% = 0.28), as in math-verify.
    let hundredth = |v: &Value| match v {
        Value::Scalar(e) => Some(Value::Scalar(Expr::Div(
            Box::new(e.clone()),
            Box::new(Expr::Num {
                value: 100.0,
                exact: true,
            }),
        ))),
        _ => None,
    };
    let pct = |s: &str| s.contains('%') || s.contains("percent");
    if pct(gold_raw) {
        if let Some(g100) = hundredth(&gold) {
            if values_equal(&g100, &pred) {
                return true;
            }
        }
    }
    if pct(pred_raw) {
        if let Some(p100) = hundredth(&pred) {
            if values_equal(&gold, &p100) {
                return true;
            }
        }
    }
    // A gold equation against `y = ...`: compare the prediction as the equation it is.
    if matches!(gold, Value::Equation(..)) {
        let parts = split_top(&p, "=");
        if parts.len() == 2 {
            if let (Some(l), Some(r)) = (parse_expr(&parts[0]), parse_expr(&parts[1])) {
                return values_equal(&gold, &Value::Equation(l, r));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize("7,425,000"), "7425000");
        assert_eq!(normalize("\\$1,000.99"), "1000.99");
        assert_eq!(normalize("90^\\circ"), "90");
        assert_eq!(normalize("15\\mbox{ cm}^2"), "15");
        assert_eq!(
            normalize("\\left( 3, \\dfrac{\\pi}{2} \\right)"),
            "( 3, \\frac{\\pi}{2} )"
        );
        assert_eq!(normalize("0,111"), "0,111");
        assert_eq!(normalize("28\\%"), "28");
    }

    #[test]
    fn values() {
        assert!(answers_equal("\\frac{1}{2}", "0.5"));
        assert!(!answers_equal("\\frac{1}{3}", "\\frac{1}{2}"));
        assert!(answers_equal("(1,2)", "(1, 2)"));
        assert!(!answers_equal("(1,2)", "(2,1)"));
        assert!(!answers_equal("[0,1)", "(0,1)"));
        assert!(answers_equal("\\{1,2\\}", "\\{2,1\\}"));
        assert!(answers_equal("x^2+2x+1", "(x+1)^2"));
        assert!(!answers_equal("x^2+1", "(x+1)^2"));
        assert!(answers_equal("k=1", "1"));
        assert!(!answers_equal("7 = 11a+c", "11a+c"));
        assert!(answers_equal("x^2/4 + y^2/3 = 1", "x^2/16 + y^2/12 = 1/4"));
    }
}
