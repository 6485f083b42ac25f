//! A safe calculator: `+ - * / ^` (also `×`, `÷`, `**`), parentheses, integers and decimals.
//! Arithmetic is exact (rationals over i128) while it fits, and falls back to f64 when it
//! does not. Cost is bounded: the input is capped at [`MAX_INPUT_LEN`] characters and
//! [`MAX_DEPTH`] nesting levels, exponents are evaluated by squaring with overflow checks, and
//! results beyond f64 range are errors — `9^9^9^9` fails in microseconds. No code is executed.

use super::registry::{Tool, ToolError};
use serde_json::Value;
use std::fmt;

/// Longest expression accepted (characters).
pub const MAX_INPUT_LEN: usize = 1000;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    /// Longer than [`MAX_INPUT_LEN`].
    #[error("expression too long ({0} characters; at most {MAX_INPUT_LEN})")]
    TooLong(usize),
    /// Not a valid expression.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Division by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// The result is too large or not a real number.
    #[error("result out of range")]
    OutOfRange,
}

/// A calculator result: an exact fraction or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// `num / den` in lowest terms, `den > 0`.
    Exact(i128, i128),
    /// An approximation.
    Approx(f64),
}

/// Greatest common divisor (non-negative).
pub(crate) fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Number {
    fn exact(n: i128, d: i128) -> Number {
        if d == 0 {
            return Number::Approx(f64::NAN);
        }
        let g = gcd(n, d).max(1);
        let (n, d) = (n / g, d / g);
        if d < 0 {
            match (n.checked_neg(), d.checked_neg()) {
                (Some(n), Some(d)) => Number::Exact(n, d),
                _ => Number::Approx(n as f64 / d as f64),
            }
        } else {
            Number::Exact(n, d)
        }
    }

    /// The value as f64.
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Exact(n, d) => n as f64 / d as f64,
            Number::Approx(x) => x,
        }
    }

    fn checked(self) -> Result<Number, CalcError> {
        match self {
            Number::Approx(x) if !x.is_finite() => Err(CalcError::OutOfRange),
            n => Ok(n),
        }
    }

    fn add(self, o: Number) -> Number {
        if let (Number::Exact(a, b), Number::Exact(c, d)) = (self, o) {
            let num = a
                .checked_mul(d)
                .zip(c.checked_mul(b))
                .and_then(|(x, y)| x.checked_add(y));
            if let (Some(n), Some(den)) = (num, b.checked_mul(d)) {
                return Number::exact(n, den);
            }
        }
        Number::Approx(self.to_f64() + o.to_f64())
    }

    fn neg(self) -> Number {
        match self {
            Number::Exact(n, d) => match n.checked_neg() {
                Some(n) => Number::Exact(n, d),
                None => Number::Approx(-(n as f64) / d as f64),
            },
            Number::Approx(x) => Number::Approx(-x),
        }
    }

    fn mul(self, o: Number) -> Number {
        if let (Number::Exact(a, b), Number::Exact(c, d)) = (self, o) {
            if let (Some(n), Some(den)) = (a.checked_mul(c), b.checked_mul(d)) {
                return Number::exact(n, den);
            }
        }
        Number::Approx(self.to_f64() * o.to_f64())
    }

    fn div(self, o: Number) -> Result<Number, CalcError> {
        if o.to_f64() == 0.0 {
            return Err(CalcError::DivisionByZero);
        }
        Ok(match o {
            Number::Exact(c, d) => self.mul(Number::exact(d, c)),
            Number::Approx(y) => Number::Approx(self.to_f64() / y),
        })
    }

    fn pow(self, e: Number) -> Result<Number, CalcError> {
        if let (Number::Exact(n, d), Number::Exact(k, 1)) = (self, e) {
            if n == 0 && k < 0 {
                return Err(CalcError::DivisionByZero);
            }
            // Exact by squaring while it fits; give up to f64 the moment it overflows.
            let mut exact = Some((1i128, 1i128));
            let (mut bn, mut bd) = (Some(n), Some(d));
            let mut k_abs = k.unsigned_abs();
            while k_abs > 0 && exact.is_some() {
                if k_abs & 1 == 1 {
                    exact =
                        exact.and_then(|(a, b)| Some((a.checked_mul(bn?)?, b.checked_mul(bd?)?)));
                }
                k_abs >>= 1;
                if k_abs > 0 {
                    bn = bn.and_then(|x| x.checked_mul(x));
                    bd = bd.and_then(|x| x.checked_mul(x));
                }
            }
            if let Some((a, b)) = exact {
                return Ok(if k < 0 {
                    Number::exact(b, a)
                } else {
                    Number::exact(a, b)
                });
            }
        }
        let base = self.to_f64();
        let exp = e.to_f64();
        let v = base.powf(exp);
        if v.is_nan() {
            return Err(CalcError::Syntax(
                "a negative number to a fractional power".into(),
            ));
        }
        Number::Approx(v).checked()
    }
}

impl fmt::Display for Number {
    /// Integers in full; fractions with a terminating decimal as that decimal, others as
    /// `a/b`; approximations with up to 12 significant digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Number::Exact(n, 1) => write!(f, "{n}"),
            Number::Exact(n, d) => {
                let mut dd = d;
                while dd % 2 == 0 {
                    dd /= 2;
                }
                while dd % 5 == 0 {
                    dd /= 5;
                }
                if dd == 1 {
                    // Exact decimal from integer arithmetic.
                    let (int, mut rem) = (n / d, (n % d).abs());
                    let mut digits = String::new();
                    while rem != 0 && digits.len() < 40 {
                        rem *= 10;
                        digits.push(char::from(b'0' + (rem / d) as u8));
                        rem %= d;
                    }
                    let sign = if n < 0 && int == 0 { "-" } else { "" };
                    write!(f, "{sign}{int}.{digits}")
                } else {
                    write!(f, "{n}/{d}")
                }
            }
            Number::Approx(x) => {
                let s = format!("{x:.12e}");
                let v: f64 = s.parse().unwrap_or(x);
                if v.abs() >= 1e15 || (v != 0.0 && v.abs() < 1e-6) {
                    write!(f, "{v:e}")
                } else {
                    write!(f, "{v}")
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Number),
    Op(char),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, CalcError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
                let lit: String = chars[start..i].iter().filter(|c| **c != '_').collect();
                out.push(Tok::Num(parse_literal(&lit)?));
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push(Tok::Op('^'));
                i += 2;
            }
            '+' | '-' | '*' | '/' | '^' => {
                out.push(Tok::Op(c));
                i += 1;
            }
            '×' | 'x' | 'X' | '·' => {
                out.push(Tok::Op('*'));
                i += 1;
            }
            '÷' | ':' => {
                out.push(Tok::Op('/'));
                i += 1;
            }
            '−' | '–' => {
                out.push(Tok::Op('-'));
                i += 1;
            }
            '(' | '[' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' | ']' => {
                out.push(Tok::Close);
                i += 1;
            }
            other => return Err(CalcError::Syntax(format!("unexpected character `{other}`"))),
        }
    }
    Ok(out)
}

/// Parses `093`, `12.5`, `.5` exactly (leading zeros are fine).
fn parse_literal(lit: &str) -> Result<Number, CalcError> {
    let bad = || CalcError::Syntax(format!("bad number `{lit}`"));
    let (int, frac) = match lit.split_once('.') {
        Some((a, b)) => (a, b),
        None => (lit, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(bad());
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let scale = frac.len() as u32;
    if digits.len() <= 30 && scale <= 30 {
        let n: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| bad())?
        };
        return Ok(Number::exact(n, 10i128.pow(scale)));
    }
    lit.parse::<f64>().map(Number::Approx).map_err(|_| bad())
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn expr(&mut self) -> Result<Number, CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CalcError::Syntax(format!(
                "nesting deeper than {MAX_DEPTH}"
            )));
        }
        let mut acc = self.term()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.term()?;
            acc = if op == '+' {
                acc.add(rhs)
            } else {
                acc.add(rhs.neg())
            }
            .checked()?;
        }
        self.depth -= 1;
        Ok(acc)
    }

    fn term(&mut self) -> Result<Number, CalcError> {
        let mut acc = self.unary()?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.unary()?;
            acc = if op == '*' {
                acc.mul(rhs)
            } else {
                acc.div(rhs)?
            }
            .checked()?;
        }
        Ok(acc)
    }

    fn unary(&mut self) -> Result<Number, CalcError> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(CalcError::Syntax(format!(
                        "nesting deeper than {MAX_DEPTH}"
                    )));
                }
                let v = self.unary()?.neg();
                self.depth -= 1;
                Ok(v)
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    /// Right-associative: 2^3^2 = 2^9.
    fn power(&mut self) -> Result<Number, CalcError> {
        let base = self.atom()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(CalcError::Syntax(format!(
                    "nesting deeper than {MAX_DEPTH}"
                )));
            }
            let exp = self.unary()?;
            self.depth -= 1;
            return base.pow(exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Number, CalcError> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let v = self.expr()?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    _ => Err(CalcError::Syntax("missing `)`".into())),
                }
            }
            Some(t) => Err(CalcError::Syntax(format!("unexpected {}", describe(&t)))),
            None => Err(CalcError::Syntax("unexpected end of expression".into())),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Op(c) => format!("`{c}`"),
        Tok::Open => "`(`".into(),
        Tok::Close => "`)`".into(),
    }
}

/// Evaluates an arithmetic expression.
///
/// ```
/// use alp_envs::tools::evaluate;
/// assert_eq!(evaluate("093*82").unwrap().to_string(), "7626");
/// assert_eq!(evaluate("1/3 + 1/4").unwrap().to_string(), "7/12");
/// assert_eq!(evaluate("1/4 + 1/4").unwrap().to_string(), "0.5");
/// assert_eq!(evaluate("2^-2").unwrap().to_string(), "0.25");
/// assert!(evaluate("9^9^9^9").is_err());
/// ```
pub fn evaluate(expression: &str) -> Result<Number, CalcError> {
    let n = expression.chars().count();
    if n > MAX_INPUT_LEN {
        return Err(CalcError::TooLong(n));
    }
    let toks = tokenize(expression)?;
    if toks.is_empty() {
        return Err(CalcError::Syntax("empty expression".into()));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(CalcError::Syntax(format!(
            "unexpected {}",
            describe(&p.toks[p.pos])
        )));
    }
    v.checked()
}

/// The built-in `calculator` tool: `{"expression": "942*59"}` → `"55578"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calculator;

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn schema(&self) -> Value {
        serde_json::json!({
            "name": "calculator",
            "description": "Evaluate an arithmetic expression exactly: + - * / ^ and parentheses on integers and decimals.",
            "parameters": {
                "type": "object",
                "properties": {
                    "expression": {"type": "string", "description": "e.g. \"942*59\" or \"(3+4)/7\""}
                },
                "required": ["expression"]
            }
        })
    }

    fn call(&self, arguments: &Value) -> Result<String, ToolError> {
        let expr = match arguments.get("expression") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ToolError::BadArguments(
                    "expected {\"expression\": \"<arithmetic>\"}".into(),
                ))
            }
        };
        evaluate(&expr)
            .map(|n| n.to_string())
            .map_err(|e| ToolError::Failed(e.to_string()))
    }
}
