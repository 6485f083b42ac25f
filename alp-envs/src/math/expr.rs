//! A small LaTeX-flavoured expression parser and evaluator, used by the verifier to compare
//! answers numerically (constants) or at random points (expressions with variables).
//!
//! It understands `+ - * / ^ !`, `\cdot`, `\times`, `\div`, implicit multiplication (`2\pi`,
//! `3\sqrt{13}`, `2x`), `\frac{a}{b}` and its malformed forms (`\frac12`, `\frac3{3}`),
//! mixed numbers (`2\frac{1}{2}`), `\sqrt{x}`, `\sqrt[n]{x}`, `\sqrt3`, `\pi`, `\infty`,
//! scientific notation (`1.5\times10^{3}`, `1.5e3`), the usual functions (`\sin`, `\ln`, ...)
//! and `|x|`. Every step is bounded: input length, nesting depth and factorial size are capped,
//! and evaluation is plain f64 arithmetic, so no input can make it hang.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Pow, Signed, Zero};
use std::collections::{BTreeMap, BTreeSet};

/// Longest input the parser accepts (characters).
pub const MAX_EXPR_LEN: usize = 2000;
/// Deepest nesting the parser accepts.
pub const MAX_DEPTH: usize = 100;

/// A parsed expression.
/// Largest numerator or denominator (in bits) that exact comparison computes; beyond it the
/// comparison says "not equal" unless the expressions are identical.
pub const MAX_EXACT_BITS: u64 = 4_000_000;

/// `base^exp` for an integer exponent, within [`MAX_EXACT_BITS`].
fn exact_pow(base: &BigRational, exp: &BigRational) -> Option<BigRational> {
    if !exp.is_integer() {
        return None;
    }
    let e: i64 = exp.to_integer().try_into().ok()?;
    let size = base.numer().bits().max(base.denom().bits()).max(1);
    if size.saturating_mul(e.unsigned_abs()) > MAX_EXACT_BITS {
        return None;
    }
    if e < 0 && base.is_zero() {
        return None;
    }
    Some(Pow::pow(base, e as i32))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal; `exact` is false for literals written with a decimal point.
    Num {
        /// Its value.
        value: f64,
        /// True for integer literals.
        exact: bool,
    },
    /// An integer literal too large for f64 to hold exactly (its decimal digits).
    BigInt(String),
    /// A free variable.
    Var(String),
    /// π.
    Pi,
    /// Euler's number (`\exp` is separate).
    E,
    /// +∞.
    Inf,
    /// −x.
    Neg(Box<Expr>),
    /// a + b.
    Add(Box<Expr>, Box<Expr>),
    /// a − b.
    Sub(Box<Expr>, Box<Expr>),
    /// a · b.
    Mul(Box<Expr>, Box<Expr>),
    /// a / b.
    Div(Box<Expr>, Box<Expr>),
    /// a ^ b.
    Pow(Box<Expr>, Box<Expr>),
    /// n!.
    Factorial(Box<Expr>),
    /// A named function of one argument (`sin`, `sqrt`, `abs`, `ln`, ...).
    Func(String, Box<Expr>),
}

impl Expr {
    fn num(v: f64) -> Expr {
        Expr::Num {
            value: v,
            exact: v.fract() == 0.0,
        }
    }

    /// Evaluates at the given variable values; `None` when a variable is unbound or the
    /// result is not a real number.
    pub fn eval(&self, vars: &BTreeMap<String, f64>) -> Option<f64> {
        let v = match self {
            Expr::Num { value, .. } => *value,
            Expr::BigInt(d) => d.parse().ok()?,
            Expr::Var(name) => *vars.get(name)?,
            Expr::Pi => std::f64::consts::PI,
            Expr::E => std::f64::consts::E,
            Expr::Inf => f64::INFINITY,
            Expr::Neg(a) => -a.eval(vars)?,
            Expr::Add(a, b) => a.eval(vars)? + b.eval(vars)?,
            Expr::Sub(a, b) => a.eval(vars)? - b.eval(vars)?,
            Expr::Mul(a, b) => a.eval(vars)? * b.eval(vars)?,
            Expr::Div(a, b) => {
                let d = b.eval(vars)?;
                if d == 0.0 {
                    return None;
                }
                a.eval(vars)? / d
            }
            Expr::Pow(a, b) => {
                let base = a.eval(vars)?;
                let exp = b.eval(vars)?;
                if base < 0.0 && exp.fract() != 0.0 {
                    // Odd roots of negatives are real: (-8)^(1/3) = -2.
                    let inv = 1.0 / exp;
                    if (inv.round() - inv).abs() < 1e-9 && (inv.round() as i64) % 2 != 0 {
                        -(-base).powf(exp)
                    } else {
                        return None;
                    }
                } else {
                    base.powf(exp)
                }
            }
            Expr::Factorial(a) => {
                let n = a.eval(vars)?;
                if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
                    return None;
                }
                (1..=n as u64).fold(1.0, |acc, k| acc * k as f64)
            }
            Expr::Func(name, a) => {
                let x = a.eval(vars)?;
                match name.as_str() {
                    "sqrt" => {
                        if x < 0.0 {
                            return None;
                        }
                        x.sqrt()
                    }
                    "abs" => x.abs(),
                    "sin" => x.sin(),
                    "cos" => x.cos(),
                    "tan" => x.tan(),
                    "sec" => 1.0 / x.cos(),
                    "csc" => 1.0 / x.sin(),
                    "cot" => 1.0 / x.tan(),
                    "arcsin" => x.asin(),
                    "arccos" => x.acos(),
                    "arctan" => x.atan(),
                    "sinh" => x.sinh(),
                    "cosh" => x.cosh(),
                    "tanh" => x.tanh(),
                    "ln" => x.ln(),
                    "log" => x.log10(),
                    "lg" => x.log10(),
                    "exp" => x.exp(),
                    _ => return None,
                }
            }
        };
        if v.is_nan() {
            None
        } else {
            Some(v)
        }
    }

    /// The free variables.
    pub fn variables(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_vars(&mut out);
        out
    }

    fn collect_vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Var(v) => {
                out.insert(v.clone());
            }
            Expr::Neg(a) | Expr::Factorial(a) | Expr::Func(_, a) => a.collect_vars(out),
            Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) => {
                a.collect_vars(out);
                b.collect_vars(out);
            }
            Expr::Pow(a, b) => {
                a.collect_vars(out);
                b.collect_vars(out);
            }
            _ => {}
        }
    }

    /// The exact rational value of an expression built from integer literals with `+ − × ÷`,
    /// factorials and integer powers; `None` for anything else (π, roots, variables, decimal
    /// literals, division by zero) or when the result would exceed [`MAX_EXACT_BITS`] bits.
    pub fn exact_value(&self) -> Option<BigRational> {
        let r = match self {
            Expr::Num { value, exact: true } if value.fract() == 0.0 && value.abs() < 9.1e15 => {
                BigRational::from_integer(BigInt::from(*value as i64))
            }
            Expr::BigInt(d) => BigRational::from_integer(d.parse::<BigInt>().ok()?),
            Expr::Neg(a) => -a.exact_value()?,
            Expr::Add(a, b) => a.exact_value()? + b.exact_value()?,
            Expr::Sub(a, b) => a.exact_value()? - b.exact_value()?,
            Expr::Mul(a, b) => a.exact_value()? * b.exact_value()?,
            Expr::Div(a, b) => {
                let d = b.exact_value()?;
                if d.is_zero() {
                    return None;
                }
                a.exact_value()? / d
            }
            Expr::Pow(a, b) => exact_pow(&a.exact_value()?, &b.exact_value()?)?,
            Expr::Factorial(a) => {
                let n = a.exact_value()?;
                if !n.is_integer() || n.is_negative() || n > BigRational::from_integer(5000.into())
                {
                    return None;
                }
                let n: u64 = n.to_integer().try_into().ok()?;
                BigRational::from_integer((1..=n).map(BigInt::from).product())
            }
            _ => return None,
        };
        let bits = r.numer().bits().max(r.denom().bits());
        (bits <= MAX_EXACT_BITS).then_some(r)
    }

    /// True when no literal was written with a decimal point (the value is exact, as a
    /// rational or an exact irrational such as √2 or π).
    pub fn is_exact(&self) -> bool {
        match self {
            Expr::Num { exact, .. } => *exact,
            Expr::Neg(a) | Expr::Factorial(a) | Expr::Func(_, a) => a.is_exact(),
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b) => a.is_exact() && b.is_exact(),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Letter(char),
    Cmd(String),
    Op(char),
    Open(char),
    Close(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            let mut seen_dot = false;
            while i < chars.len() && (chars[i].is_ascii_digit() || (chars[i] == '.' && !seen_dot)) {
                if chars[i] == '.' {
                    // "5." at the end of a sentence is not a decimal point.
                    if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                        break;
                    }
                    seen_dot = true;
                }
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() {
            out.push(Tok::Letter(c));
            i += 1;
        } else if c == '\\' {
            let start = i + 1;
            let mut j = start;
            while j < chars.len() && chars[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == start {
                // "\{" "\}" "\," etc.
                match chars.get(start) {
                    Some('{') => out.push(Tok::Open('{')),
                    Some('}') => out.push(Tok::Close('}')),
                    Some('|') => out.push(Tok::Op('|')),
                    Some(',') | Some(';') | Some('!') | Some(' ') | Some(':') => {}
                    _ => return None,
                }
                i = start + 1;
            } else {
                out.push(Tok::Cmd(chars[start..j].iter().collect()));
                i = j;
            }
        } else {
            match c {
                '+' | '-' | '*' | '/' | '^' | '!' | '|' | '_' => out.push(Tok::Op(c)),
                '−' | '–' => out.push(Tok::Op('-')),
                '×' | '·' => out.push(Tok::Op('*')),
                '÷' => out.push(Tok::Op('/')),
                'π' => out.push(Tok::Cmd("pi".into())),
                '∞' => out.push(Tok::Cmd("infty".into())),
                '√' => out.push(Tok::Cmd("sqrt".into())),
                '(' | '{' | '[' => out.push(Tok::Open(c)),
                ')' | '}' | ']' => out.push(Tok::Close(c)),
                _ => return None,
            }
            i += 1;
        }
    }
    Some(out)
}

const FUNCS: &[&str] = &[
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "ln", "log", "lg", "exp",
];

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

fn closing(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Expr> {
        self.enter()?;
        let mut left = self.term()?;
        loop {
            match self.peek() {
                Some(Tok::Op('+')) => {
                    self.pos += 1;
                    left = Expr::Add(Box::new(left), Box::new(self.term()?));
                }
                Some(Tok::Op('-')) => {
                    self.pos += 1;
                    left = Expr::Sub(Box::new(left), Box::new(self.term()?));
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Some(left)
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) | Some(Tok::Letter(_)) | Some(Tok::Open(_)) => true,
            Some(Tok::Cmd(c)) => !matches!(c.as_str(), "cdot" | "times" | "div"),
            _ => false,
        }
    }

    fn term(&mut self) -> Option<Expr> {
        let mut left = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    left = Expr::Mul(Box::new(left), Box::new(self.unary()?));
                }
                Some(Tok::Cmd(c)) if c == "cdot" || c == "times" => {
                    self.pos += 1;
                    left = Expr::Mul(Box::new(left), Box::new(self.unary()?));
                }
                Some(Tok::Op('/')) => {
                    self.pos += 1;
                    left = Expr::Div(Box::new(left), Box::new(self.unary()?));
                }
                Some(Tok::Cmd(c)) if c == "div" => {
                    self.pos += 1;
                    left = Expr::Div(Box::new(left), Box::new(self.unary()?));
                }
                _ if self.starts_primary() => {
                    // Implicit multiplication: 2x, 3\sqrt{2}, (a)(b).
                    left = Expr::Mul(Box::new(left), Box::new(self.power()?));
                }
                _ => break,
            }
        }
        Some(left)
    }

    fn unary(&mut self) -> Option<Expr> {
        self.enter()?;
        let out = match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Expr::Neg(Box::new(self.unary()?))
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()?
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Some(out)
    }

    fn power(&mut self) -> Option<Expr> {
        let base = self.postfix()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            let exp = self.exponent()?;
            return Some(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// The exponent after `^`: a braced group, a number, or one signed atom.
    fn exponent(&mut self) -> Option<Expr> {
        self.enter()?;
        let out = match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Expr::Neg(Box::new(self.exponent()?))
            }
            Some(Tok::Num(n)) => {
                // An unbraced multi-digit exponent (2^10) is read as people mean it, 2^{10}.
                let n = n.clone();
                self.pos += 1;
                parse_number(&n)?
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Some(out)
    }

    fn postfix(&mut self) -> Option<Expr> {
        let mut e = self.primary()?;
        while let Some(Tok::Op('!')) = self.peek() {
            self.pos += 1;
            e = Expr::Factorial(Box::new(e));
        }
        // Subscripts (x_1, a_{n}) become part of a variable's name.
        if let Some(Tok::Op('_')) = self.peek() {
            if let Expr::Var(name) = &e {
                self.pos += 1;
                let sub = match self.next()? {
                    Tok::Num(n) => n,
                    Tok::Letter(c) => c.to_string(),
                    Tok::Open('{') => {
                        let mut s = String::new();
                        loop {
                            match self.next()? {
                                Tok::Close('}') => break,
                                Tok::Num(n) => s.push_str(&n),
                                Tok::Letter(c) => s.push(c),
                                _ => return None,
                            }
                        }
                        s
                    }
                    _ => return None,
                };
                e = Expr::Var(format!("{name}_{sub}"));
            } else {
                return None;
            }
        }
        Some(e)
    }

    /// One argument of `\frac` or `\sqrt`: a braced group, or a single character/token
    /// (`\frac12` is 1/2).
    fn macro_arg(&mut self) -> Option<Expr> {
        match self.peek()? {
            Tok::Open('{') => {
                self.pos += 1;
                let e = self.expr()?;
                match self.next()? {
                    Tok::Close('}') => Some(e),
                    _ => None,
                }
            }
            Tok::Num(n) => {
                let n = n.clone();
                self.pos += 1;
                if n.len() > 1 && !n.contains('.') {
                    let (first, rest) = n.split_at(1);
                    self.toks.insert(self.pos, Tok::Num(rest.to_string()));
                    Some(Expr::num(first.parse().ok()?))
                } else {
                    parse_number(&n)
                }
            }
            Tok::Letter(c) => {
                let c = *c;
                self.pos += 1;
                Some(letter(c))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Option<Expr> {
        self.enter()?;
        let out = match self.next()? {
            Tok::Num(n) => {
                let num = parse_number(&n)?;
                // Mixed number: 2\frac{1}{2} is 2 + 1/2.
                if !n.contains('.') {
                    if let Some(Tok::Cmd(c)) = self.peek() {
                        if c == "frac" {
                            let save = (self.pos, self.toks.clone());
                            self.pos += 1;
                            let a = self.macro_arg();
                            let b = self.macro_arg();
                            if let (
                                Some(a @ Expr::Num { exact: true, .. }),
                                Some(b @ Expr::Num { exact: true, .. }),
                            ) = (a, b)
                            {
                                self.depth -= 1;
                                return Some(Expr::Add(
                                    Box::new(num),
                                    Box::new(Expr::Div(Box::new(a), Box::new(b))),
                                ));
                            }
                            self.pos = save.0;
                            self.toks = save.1;
                        }
                    }
                }
                num
            }
            Tok::Letter(c) => letter(c),
            Tok::Open(open) => {
                let e = self.expr()?;
                match self.next()? {
                    Tok::Close(c) if c == closing(open) => e,
                    _ => return None,
                }
            }
            Tok::Op('|') => {
                let e = self.expr()?;
                match self.next()? {
                    Tok::Op('|') => Expr::Func("abs".into(), Box::new(e)),
                    _ => return None,
                }
            }
            Tok::Cmd(c) => match c.as_str() {
                "frac" | "dfrac" | "tfrac" | "cfrac" => {
                    let a = self.macro_arg()?;
                    let b = self.macro_arg()?;
                    Expr::Div(Box::new(a), Box::new(b))
                }
                "sqrt" => {
                    if let Some(Tok::Open('[')) = self.peek() {
                        self.pos += 1;
                        let n = self.expr()?;
                        match self.next()? {
                            Tok::Close(']') => {}
                            _ => return None,
                        }
                        let x = self.macro_arg()?;
                        Expr::Pow(
                            Box::new(x),
                            Box::new(Expr::Div(Box::new(Expr::num(1.0)), Box::new(n))),
                        )
                    } else {
                        Expr::Func("sqrt".into(), Box::new(self.macro_arg()?))
                    }
                }
                "pi" => Expr::Pi,
                "infty" | "infin" => Expr::Inf,
                "mathrm" | "mathbf" | "text" | "textbf" | "operatorname" | "mbox" => {
                    // \mathrm{e}, \operatorname{sin}: take the braced letters as a word.
                    match self.next()? {
                        Tok::Open('{') => {}
                        _ => return None,
                    }
                    let mut word = String::new();
                    loop {
                        match self.next()? {
                            Tok::Close('}') => break,
                            Tok::Letter(ch) => word.push(ch),
                            Tok::Num(n) => word.push_str(&n),
                            _ => return None,
                        }
                    }
                    if FUNCS.contains(&word.as_str()) {
                        self.func_call(word)?
                    } else if word == "e" {
                        Expr::E
                    } else if word.chars().count() == 1 {
                        letter(word.chars().next()?)
                    } else {
                        Expr::Var(word)
                    }
                }
                f if FUNCS.contains(&f) => self.func_call(f.to_string())?,
                // Greek letters and other symbols act as variables.
                "alpha" | "beta" | "gamma" | "delta" | "theta" | "lambda" | "mu" | "phi"
                | "omega" | "sigma" | "tau" | "rho" | "epsilon" | "varepsilon" | "varphi" => {
                    Expr::Var(format!("\\{c}"))
                }
                _ => return None,
            },
            _ => return None,
        };
        self.depth -= 1;
        Some(out)
    }

    /// `\sin x`, `\sin(x)`, `\sin^2 x` (the square of the sine).
    fn func_call(&mut self, name: String) -> Option<Expr> {
        // \log_b x = ln x / ln b.
        if name == "log" {
            if let Some(Tok::Op('_')) = self.peek() {
                self.pos += 1;
                let base = self.macro_arg()?;
                let x = self.func_call("ln".into())?;
                return Some(Expr::Div(
                    Box::new(x),
                    Box::new(Expr::Func("ln".into(), Box::new(base))),
                ));
            }
        }
        let mut power = None;
        if let Some(Tok::Op('^')) = self.peek() {
            self.pos += 1;
            power = Some(self.exponent()?);
        }
        let arg = match self.peek()? {
            Tok::Open(_) => self.primary()?,
            _ => self.power()?,
        };
        let f = Expr::Func(name, Box::new(arg));
        Some(match power {
            Some(p) => Expr::Pow(Box::new(f), Box::new(p)),
            None => f,
        })
    }
}

/// A single letter: `e` is Euler's number (as in math-verify), anything else a variable.
fn letter(c: char) -> Expr {
    if c == 'e' {
        Expr::E
    } else {
        Expr::Var(c.to_string())
    }
}

fn parse_number(s: &str) -> Option<Expr> {
    let value: f64 = s.parse().ok()?;
    let exact = !s.contains('.') && !s.contains(['e', 'E']);
    if exact && value.abs() >= 9_007_199_254_740_992.0 {
        // Beyond 2^53 an f64 is not the literal: keep its digits for exact comparison.
        return Some(Expr::BigInt(s.trim_start_matches('0').to_string()));
    }
    Some(Expr::Num { value, exact })
}

/// Parses a (normalised) math string into an expression; `None` when it is not one.
pub fn parse_expr(s: &str) -> Option<Expr> {
    if s.len() > MAX_EXPR_LEN || s.trim().is_empty() {
        return None;
    }
    let toks = tokenize(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    (p.pos == p.toks.len()).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> f64 {
        parse_expr(s)
            .unwrap_or_else(|| panic!("parse {s}"))
            .eval(&BTreeMap::new())
            .unwrap()
    }

    #[test]
    fn evaluates_latex() {
        assert_eq!(val("1+2*3"), 7.0);
        assert_eq!(val("\\frac{1}{2}"), 0.5);
        assert_eq!(val("\\frac12"), 0.5);
        assert_eq!(val("\\frac3{3}"), 1.0);
        assert_eq!(val("2\\frac{1}{2}"), 2.5);
        assert_eq!(val("2^10"), 1024.0);
        assert_eq!(val("2^{10}"), 1024.0);
        assert_eq!(val("1.5\\times10^{3}"), 1500.0);
        assert_eq!(val("-2^2"), -4.0);
        assert_eq!(val("5!"), 120.0);
        assert!((val("3\\sqrt{13}") - 3.0 * 13f64.sqrt()).abs() < 1e-12);
        assert!((val("\\sqrt[3]{8}") - 2.0).abs() < 1e-12);
        assert!((val("\\frac{9}{4}\\pi") - 2.25 * std::f64::consts::PI).abs() < 1e-12);
        assert!((val("\\sin^2(1)+\\cos^2(1)") - 1.0).abs() < 1e-12);
    }
}
