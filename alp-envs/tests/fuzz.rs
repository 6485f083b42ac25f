//! Arbitrary input never panics and finishes within a bound.

use alp_envs::math::{extract_answer, grade, grade_with, ExtractMode};
use alp_envs::tools::{evaluate, parse_tool_calls};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn mathy() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "\\boxed{",
        "}",
        "{",
        "\\frac",
        "\\sqrt",
        "[",
        "]",
        "(",
        ")",
        "^",
        "_",
        "-",
        "+",
        "*",
        "/",
        "=",
        ",",
        "\\{",
        "\\}",
        "\\cup",
        "\\pm",
        "\\pi",
        "x",
        "y",
        "1",
        "23",
        "0.5",
        "9",
        "\\text{",
        "$",
        "%",
        "\\left(",
        "\\right)",
        "####",
        "The answer is ",
        "<tool_call>",
        "</tool_call>",
        "{\"name\":",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "&",
        "\\\\",
        "!",
        "e",
        "\\infty",
        " ",
        "\n",
        "\\",
        "ü",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

fn boxed(s: &str) -> String {
    format!("\\boxed{{{s}}}")
}

fn bounded<T>(f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn verifier_never_panics(gold in mathy(), pred in mathy(), raw in ".{0,200}") {
        bounded(|| {
            let _ = grade(&gold, &pred);
            let _ = grade_with(&raw, &pred, ExtractMode::Strict);
            let _ = grade(&pred, &raw);
            let _ = extract_answer(&raw, ExtractMode::Lenient);
        });
    }

    #[test]
    fn tools_never_panic(s in mathy(), raw in ".{0,200}") {
        bounded(|| {
            let _ = parse_tool_calls(&s);
            let _ = parse_tool_calls(&raw);
            let _ = evaluate(&s);
            let _ = evaluate(&raw);
        });
    }

    #[test]
    fn calculator_arithmetic_matches_i64(a in -10_000i64..10_000, b in -10_000i64..10_000, c in 1i64..100) {
        let v = evaluate(&format!("{a} * {b} - ({c}) + {a}")).unwrap().to_string();
        prop_assert_eq!(v, (a * b - c + a).to_string());
    }

    #[test]
    fn different_integers_of_any_size_never_grade_equal(
        a in "-?[1-9][0-9]{0,400}",
        b in "-?[1-9][0-9]{0,400}",
    ) {
        // Distinct digit strings without leading zeros are distinct integers.
        let ab = grade(&a, &boxed(&b)).correct;
        let ba = grade(&b, &boxed(&a)).correct;
        prop_assert_eq!(ab, ba, "grade is not symmetric on {} and {}", a, b);
        prop_assert_eq!(ab, a == b, "{} vs {}", a, b);
    }

    #[test]
    fn integers_one_apart_and_powers_compare_exactly(digits in "[1-9][0-9]{15,300}", k in 1u32..2000, j in 1u32..2000) {
        use num_bigint::BigInt;
        let a: BigInt = digits.parse().unwrap();
        let next = (a + BigInt::from(1)).to_string();
        prop_assert!(!grade(&digits, &boxed(&next)).correct, "{} vs {}", digits, next);
        prop_assert!(!grade(&next, &boxed(&digits)).correct);
        // 2^k written as a power and as its digits.
        let pow = BigInt::from(2).pow(k).to_string();
        let pk = format!("2^{{{k}}}");
        let pj = format!("2^{{{j}}}");
        prop_assert!(grade(&pk, &boxed(&pow)).correct, "2^{}", k);
        prop_assert_eq!(grade(&pk, &boxed(&pj)).correct, k == j);
    }

    #[test]
    fn fractions_compare_as_exact_rationals(p in 1u64..u64::MAX, q in 1u64..u64::MAX, r in 1u64..u64::MAX, s in 1u64..u64::MAX) {
        let equal = p as u128 * s as u128 == r as u128 * q as u128;
        let f = |n: u128, d: u128| format!("\\frac{{{n}}}{{{d}}}");
        let g = grade(&f(p as u128, q as u128), &boxed(&f(r as u128, s as u128))).correct;
        prop_assert_eq!(g, equal, "{}/{} vs {}/{}", p, q, r, s);
        // The same value with numerator and denominator scaled stays equal.
        let scaled = f(p as u128 * 3, q as u128 * 3);
        prop_assert!(grade(&f(p as u128, q as u128), &boxed(&scaled)).correct);
    }

    #[test]
    fn integers_grade_like_integers(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000) {
        prop_assert_eq!(grade(&a.to_string(), &format!("\\boxed{{{b}}}")).correct, a == b);
    }
}

#[test]
fn pathological_inputs_are_fast() {
    let cases = [
        "\\boxed{".repeat(20_000),
        "(".repeat(50_000),
        format!("\\boxed{{{}}}", "\\frac{1}{".repeat(5_000)),
        format!("\\boxed{{{}}}", "9^".repeat(5_000) + "9"),
        format!("\\boxed{{{}}}", "x".repeat(100_000)),
        "1,".repeat(100_000),
        "$".repeat(100_000),
        format!(
            "\\boxed{{{}}}",
            "\\sqrt{".repeat(3_000) + &"}".repeat(3_000)
        ),
    ];
    for c in &cases {
        bounded(|| {
            let _ = grade("5", c);
            let _ = grade(c, "\\boxed{5}");
            let _ = parse_tool_calls(c);
            let _ = evaluate(c);
        });
    }
}
