//! Procedural math tasks with a seed, difficulty levels and disjoint train / held-out splits.
//!
//! Every problem text is hashed; a fixed fraction of the hash space belongs to the held-out
//! split. A stream of one split draws candidates and skips those whose hash falls in the
//! other split, so the two streams can never produce the same problem, whatever their seeds.

use alp_core::{ChatMessage, Task, TaskSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The system instruction of every math prompt.
pub const BOXED_INSTRUCTION: &str =
    "Solve the problem. Put the final answer in \\boxed{}, e.g. \\boxed{42}.";

/// Which family of problems a generator produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MathTaskKind {
    /// Two-operand `a + b` / `a - b` (two digits at difficulty 1).
    AddSub,
    /// `a * b` with several digits: hard to do in one's head, easy with a calculator.
    Multiply,
    /// Multi-step integer arithmetic with precedence and parentheses.
    Arithmetic,
    /// Sums and products of fractions, answered in lowest terms.
    Fractions,
    /// Sums, differences and products of decimals.
    Decimals,
    /// `a x + b = c` with an integer solution.
    Linear,
    /// Templated word problems.
    WordProblem,
    /// A long sum of one-digit terms (8–9, 10–11 or 12–13 of them by difficulty),
    /// whose worked solution ([`worked_solution`]) adds the first two terms and rewrites the
    /// rest, one line per step: 60–200 characters of answer, each line depending on the one
    /// before.
    Chain,
}

impl MathTaskKind {
    /// The kebab-case name (used as the task kind).
    pub fn name(self) -> &'static str {
        match self {
            MathTaskKind::AddSub => "add-sub",
            MathTaskKind::Multiply => "multiply",
            MathTaskKind::Arithmetic => "arithmetic",
            MathTaskKind::Fractions => "fractions",
            MathTaskKind::Decimals => "decimals",
            MathTaskKind::Linear => "linear",
            MathTaskKind::WordProblem => "word-problem",
            MathTaskKind::Chain => "chain",
        }
    }
}

/// Train or held-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Tasks to train on.
    Train,
    /// Tasks to evaluate on; never produced by a train stream.
    Heldout,
}

/// Held-out share of the hash space, in parts per 1024.
const HELDOUT_PER_1024: u64 = 128;

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The split a problem text belongs to (a pure function of the text).
pub fn split_of(question: &str) -> Split {
    // Mix the hash again so that the split does not correlate with the task id's digits.
    let h = fnv1a(question).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if (h >> 54) < HELDOUT_PER_1024 {
        Split::Heldout
    } else {
        Split::Train
    }
}

/// A generator of one kind of problem at one difficulty (1 = easiest, 3 = hardest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MathGenerator {
    /// The family.
    pub kind: MathTaskKind,
    /// 1, 2 or 3.
    pub difficulty: u8,
}

fn fraction(n: i64, d: i64) -> String {
    let g = crate::tools::calculator::gcd(n as i128, d as i128).max(1) as i64;
    let (mut n, mut d) = (n / g, d / g);
    if d < 0 {
        n = -n;
        d = -d;
    }
    if d == 1 {
        n.to_string()
    } else {
        format!("\\frac{{{n}}}{{{d}}}")
    }
}

fn hundredths(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let v = v.abs();
    let (i, f) = (v / 100, v % 100);
    if f == 0 {
        format!("{sign}{i}")
    } else if f % 10 == 0 {
        format!("{sign}{i}.{}", f / 10)
    } else {
        format!("{sign}{i}.{f:02}")
    }
}

impl MathGenerator {
    /// A generator; `difficulty` is clamped to 1..=3.
    pub fn new(kind: MathTaskKind, difficulty: u8) -> Self {
        MathGenerator {
            kind,
            difficulty: difficulty.clamp(1, 3),
        }
    }

    /// Draws one `(question, answer)` pair.
    pub fn sample(&self, rng: &mut impl Rng) -> (String, String) {
        let d = self.difficulty as u32;
        let digits = |rng: &mut dyn rand::RngCore, n: u32| -> i64 {
            let lo = if n == 1 { 0 } else { 10i64.pow(n - 1) };
            rng.random_range(lo..10i64.pow(n))
        };
        match self.kind {
            MathTaskKind::AddSub => {
                let a = digits(rng, d + 1);
                let b = digits(rng, d + 1);
                if rng.random_bool(0.5) {
                    (format!("What is {a} + {b}?"), (a + b).to_string())
                } else {
                    (format!("What is {a} - {b}?"), (a - b).to_string())
                }
            }
            MathTaskKind::Multiply => {
                let a = digits(rng, d + 1);
                let b = digits(rng, d);
                let a = a.max(10i64.pow(d));
                let b = b.max(if d == 1 { 2 } else { 10i64.pow(d - 1) });
                (format!("What is {a} * {b}?"), (a * b).to_string())
            }
            MathTaskKind::Arithmetic => {
                let n_ops = d as usize + 1;
                let mut terms: Vec<i64> = (0..=n_ops)
                    .map(|_| rng.random_range(1..=20 * d as i64))
                    .collect();
                let ops: Vec<char> = (0..n_ops)
                    .map(|_| ['+', '-', '*'][rng.random_range(0..3)])
                    .collect();
                let mut text = terms[0].to_string();
                for (o, t) in ops.iter().zip(&terms[1..]) {
                    text.push_str(&format!(" {o} {t}"));
                }
                // Precedence: fold products first.
                let mut sum_terms: Vec<i64> = vec![terms[0]];
                let mut signs: Vec<i64> = vec![1];
                for (o, t) in ops.iter().zip(terms.drain(1..)) {
                    match o {
                        '*' => *sum_terms.last_mut().expect("term") *= t,
                        '+' => {
                            sum_terms.push(t);
                            signs.push(1)
                        }
                        _ => {
                            sum_terms.push(t);
                            signs.push(-1)
                        }
                    }
                }
                let value: i64 = sum_terms.iter().zip(&signs).map(|(t, s)| t * s).sum();
                (format!("Compute {text}."), value.to_string())
            }
            MathTaskKind::Fractions => {
                let max = 4 + 3 * d as i64;
                let (a, b) = (rng.random_range(1..max), rng.random_range(2..=max));
                let (c, e) = (rng.random_range(1..max), rng.random_range(2..=max));
                match rng.random_range(0..3) {
                    0 => (
                        format!("What is {a}/{b} + {c}/{e}? Give the answer as a fraction in lowest terms."),
                        fraction(a * e + c * b, b * e),
                    ),
                    1 => (
                        format!("What is {a}/{b} - {c}/{e}? Give the answer as a fraction in lowest terms."),
                        fraction(a * e - c * b, b * e),
                    ),
                    _ => (
                        format!("What is {a}/{b} * {c}/{e}? Give the answer as a fraction in lowest terms."),
                        fraction(a * c, b * e),
                    ),
                }
            }
            MathTaskKind::Decimals => {
                let max = 10i64.pow(d + 2);
                let a = rng.random_range(1..max);
                let b = rng.random_range(1..max);
                match rng.random_range(0..3) {
                    0 => (
                        format!("What is {} + {}?", hundredths(a), hundredths(b)),
                        hundredths(a + b),
                    ),
                    1 => (
                        format!("What is {} - {}?", hundredths(a), hundredths(b)),
                        hundredths(a - b),
                    ),
                    _ => {
                        let k = rng.random_range(2..=9 * d as i64);
                        (
                            format!("What is {} * {k}?", hundredths(a)),
                            hundredths(a * k),
                        )
                    }
                }
            }
            MathTaskKind::Linear => {
                let m = 5 * d as i64;
                let x = rng.random_range(-m..=m);
                let mut a = rng.random_range(1..=m);
                if rng.random_bool(0.3) {
                    a = -a;
                }
                let b = rng.random_range(-3 * m..=3 * m);
                let c = a * x + b;
                let lhs = match b {
                    0 => format!("{a}x"),
                    b if b > 0 => format!("{a}x + {b}"),
                    b => format!("{a}x - {}", -b),
                };
                (format!("Solve for x: {lhs} = {c}."), x.to_string())
            }
            MathTaskKind::Chain => {
                let n = 6 + 2 * d as usize + rng.random_range(0..2usize);
                let terms: Vec<i64> = (0..n).map(|_| rng.random_range(1..=9)).collect();
                let text = terms
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(" + ");
                (
                    format!("What is {text}?"),
                    terms.iter().sum::<i64>().to_string(),
                )
            }
            MathTaskKind::WordProblem => {
                const NAMES: [&str; 8] =
                    ["Ana", "Ben", "Chloe", "Dev", "Eva", "Farid", "Gita", "Hugo"];
                const ITEMS: [&str; 6] =
                    ["apples", "marbles", "stickers", "books", "coins", "pencils"];
                let name = NAMES[rng.random_range(0..NAMES.len())];
                let item = ITEMS[rng.random_range(0..ITEMS.len())];
                let s = 10 * d as i64;
                let (a, b, c) = (
                    rng.random_range(2..=s),
                    rng.random_range(2..=9),
                    rng.random_range(2..=s),
                );
                match rng.random_range(0..4) {
                    0 => (
                        format!("{name} has {a} {item} and buys {b} packs of {c} {item} each. How many {item} does {name} have now?"),
                        (a + b * c).to_string(),
                    ),
                    1 => (
                        format!("{name} had {} {item} and gave {c} to each of {b} friends. How many {item} are left?", a + b * c),
                        a.to_string(),
                    ),
                    2 => (
                        format!("{name} shares {} {item} equally among {b} boxes. How many {item} are in each box?", b * c),
                        c.to_string(),
                    ),
                    _ => (
                        format!("{name} collects {a} {item} a day for {b} days, then loses {c}. How many {item} remain?"),
                        (a * b - c).to_string(),
                    ),
                }
            }
        }
    }
}

/// The worked solution of a [`MathTaskKind::Chain`] sum, written as `12+7+33+5` (spaces
/// are ignored, a trailing `=` too): one line per step, each the sum of the previous line's
/// first two terms followed by its other terms unchanged, then the boxed total:
///
/// ```
/// use alp_envs::math::generators::worked_solution;
/// assert_eq!(
///     worked_solution("12 + 7 + 33 + 5").unwrap(),
///     "19+33+5\n52+5\n57\n\\boxed{57}"
/// );
/// assert_eq!(worked_solution("12 * 7"), None);
/// ```
///
/// `None` where the text is not a sum of at least two non-negative integers.
pub fn worked_solution(sum: &str) -> Option<String> {
    let compact: String = sum.chars().filter(|c| !c.is_whitespace()).collect();
    let compact = compact.trim_end_matches('=');
    let mut terms = compact
        .split('+')
        .map(|t| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                t.parse::<i64>().ok()
            }
        })
        .collect::<Option<Vec<_>>>()?;
    if terms.len() < 2 {
        return None;
    }
    let mut lines = Vec::with_capacity(terms.len());
    while terms.len() > 1 {
        let head = terms[0].checked_add(terms[1])?;
        terms.splice(0..2, [head]);
        lines.push(
            terms
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join("+"),
        );
    }
    lines.push(format!("\\boxed{{{}}}", terms[0]));
    Some(lines.join("\n"))
}

/// The opening messages of a math task: the boxed-answer instruction and the question.
pub fn format_prompt(question: &str, system: Option<&str>) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", system.unwrap_or(BOXED_INSTRUCTION)),
        ChatMessage::new("user", question),
    ]
}

/// An endless, seeded, resumable stream of tasks of one split, mixing generators by weight.
///
/// ```
/// use alp_core::TaskSource;
/// use alp_envs::math::{MathGenerator, MathTaskKind, Split, TaskStream};
/// let gens = vec![(MathGenerator::new(MathTaskKind::Linear, 1), 1.0)];
/// let mut a = TaskStream::new(gens.clone(), Split::Train, 7);
/// let mut b = TaskStream::new(gens, Split::Train, 7);
/// assert_eq!(a.next_task(), b.next_task());
/// ```
#[derive(Debug, Clone)]
pub struct TaskStream {
    generators: Vec<(MathGenerator, f64)>,
    split: Split,
    seed: u64,
    index: u64,
    system: Option<String>,
}

impl TaskStream {
    /// A stream over `generators` (each with a positive weight) for `split`.
    pub fn new(generators: Vec<(MathGenerator, f64)>, split: Split, seed: u64) -> Self {
        TaskStream {
            generators,
            split,
            seed,
            index: 0,
            system: None,
        }
    }

    /// Replaces the system instruction of every task.
    pub fn with_system_prompt(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// The task at position `index` of this stream (a pure function of seed, split, index).
    pub fn task_at(&self, index: u64) -> Option<Task> {
        let total: f64 = self.generators.iter().map(|(_, w)| w.max(0.0)).sum();
        if self.generators.is_empty() || total <= 0.0 {
            return None;
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for _attempt in 0..10_000 {
            let mut pick = rng.random_range(0.0..total);
            let mut gen = self.generators[0].0;
            for (g, w) in &self.generators {
                if pick < w.max(0.0) {
                    gen = *g;
                    break;
                }
                pick -= w.max(0.0);
            }
            let (question, answer) = gen.sample(&mut rng);
            if split_of(&question) != self.split {
                continue;
            }
            return Some(Task {
                id: format!("{}-{:016x}", gen.kind.name(), fnv1a(&question)),
                kind: gen.kind.name().to_string(),
                messages: format_prompt(&question, self.system.as_deref()),
                answer,
            });
        }
        None
    }
}

impl TaskSource for TaskStream {
    fn next_task(&mut self) -> Option<Task> {
        let t = self.task_at(self.index);
        self.index += 1;
        t
    }

    fn cursor(&self) -> u64 {
        self.index
    }

    fn seek(&mut self, cursor: u64) {
        self.index = cursor;
    }
}

/// The question text of a task (its last user message).
pub fn question_of(task: &Task) -> &str {
    task.messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .unwrap_or("")
}
