//! The verifier's table: (gold, prediction, expected) for every rule the issue lists,
//! including look-alike traps that must be false.

use alp_envs::math::{grade, grade_with, ExtractMode};

const T: bool = true;
const F: bool = false;

#[rustfmt::skip]
const CASES: &[(&str, &str, bool)] = &[
    // --- extraction: boxed forms
    ("5", "\\boxed{5}", T),
    ("5", "so the total is \\boxed{5}.", T),
    ("5", "\\boxed 5", T),
    ("5", "the answer: \\boxed 5.", T),
    ("5", "\\fbox{5}", T),
    ("12", "\\boxed{\\{12\\}}", T),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", T),
    ("\\frac{1}{2}", "$\\boxed{\\frac{1}{2}}$", T),
    ("4", "first \\boxed{4}, no wait: \\boxed{5}", F),
    ("5", "first \\boxed{4}, no wait: \\boxed{5}", T),
    ("5", "\\boxed{}", F),
    ("0", "\\boxed{}", F),
    ("5", "\\boxed{5", F),
    ("7", "#### 7", T),
    ("1234", "blah\n#### 1,234", T),
    ("42", "The answer is 42.", T),
    ("42", "The final answer is $42$. I hope it is correct.", T),
    ("42", "Answer: 42", T),
    ("42", "so we get 40 and then 42", T),
    ("42", "so we get 42 and then 40", F),
    ("3", "so $x = 3$", T),
    ("2", "AZYUK2A", F),
    ("17", "no number here", F),
    // --- integers, separators, signs
    ("-5", "\\boxed{-5}", T),
    ("5", "\\boxed{-5}", F),
    ("0", "\\boxed{-0}", T),
    ("7425000", "\\boxed{7,425,000}", T),
    ("7425000", "\\boxed{7{,}425{,}000}", T),
    ("1000", "\\boxed{1 000}", F), // in LaTeX a space is not a separator (math-verify agrees)
    ("1000", "\\boxed{1000.0}", T),
    ("1000", "\\boxed{1000.01}", F),
    ("100", "\\boxed{1000}", F),
    ("1000.99", "\\boxed{\\$1,000.99}", T),
    ("0.4", "\\boxed{.4}", T),
    ("1.22", "\\boxed{1,22}", F), // in LaTeX 1,22 is a list (math-verify agrees)
    ("2,74", "\\boxed{2.74}", F),
    ("+3", "\\boxed{3}", T),
    ("10", "\\boxed{010}", T),
    // --- decimals
    ("0.5", "\\boxed{0.50}", T),
    ("0.5", "\\boxed{0.05}", F),
    ("3.14", "\\boxed{3.14}", T),
    ("3.14", "\\boxed{3.141}", F),
    ("2.5", "\\boxed{5/2}", T),
    ("-2.5", "\\boxed{-\\frac{5}{2}}", T),
    ("0.333333", "\\boxed{\\frac{1}{3}}", T),
    ("0.333", "\\boxed{\\frac{1}{3}}", F),
    ("\\frac{1}{12}", "\\boxed{0.0833333333333333}", T),
    // --- fractions
    ("\\frac{1}{2}", "\\boxed{1/2}", T),
    ("1/2", "\\boxed{\\frac{1}{3}}", F),
    ("\\frac{1}{2}", "\\boxed{1/3}", F),
    ("1/3", "\\boxed{\\frac13}", T),
    ("\\frac{1}{2}", "\\boxed{\\frac12}", T),
    ("1", "\\boxed{\\frac3{3}}", T),
    ("1/3", "\\boxed{\\dfrac{1}{3}}", T),
    ("1/3", "\\boxed{\\tfrac{1}{3}}", T),
    ("1/3", "\\boxed{\\cfrac{1}{3}}", T),
    ("2/4", "\\boxed{\\frac{1}{2}}", T),
    ("10/9", "\\boxed{\\frac{10}{9}}", T),
    ("-10/9", "\\boxed{-\\frac{10}{9}}", T),
    ("-10/9", "\\boxed{\\frac{-10}{9}}", T),
    ("-10/9", "\\boxed{\\frac{10}{9}}", F),
    ("\\frac{3}{4}", "\\boxed{\\frac{4}{3}}", F),
    ("2\\frac{1}{2}", "\\boxed{\\frac{5}{2}}", T),
    ("2\\frac{1}{2}", "\\boxed{2.5}", T),
    ("2\\frac{1}{2}", "\\boxed{1}", F),
    ("\\frac{14}{3}", "so $f = 2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$", T),
    // --- percent, money, units, degrees
    ("28\\%", "\\boxed{28}", T),
    ("28", "\\boxed{28\\%}", T),
    ("28\\%", "\\boxed{28\\%}", T),
    ("0.28", "\\boxed{28}", F),
    ("28", "\\boxed{28/100}", F),
    ("5", "\\boxed{\\$5}", T),
    ("5", "\\boxed{5\\text{ dollars}}", T),
    ("125", "\\boxed{125\\textnormal{ miles}}", T),
    ("15", "\\boxed{15\\mbox{ cm}^2}", T),
    ("15", "\\boxed{16\\text{ cm}}", F),
    ("90", "\\boxed{90^\\circ}", T),
    ("90^\\circ", "\\boxed{90}", T),
    ("90^{\\circ}", "\\boxed{90^{\\circ}}", T),
    ("90", "\\boxed{45^\\circ}", F),
    // --- scientific notation
    ("1500", "\\boxed{1.5\\times10^{3}}", T),
    ("1500", "\\boxed{1.5 \\times 10^3}", T),
    ("1500", "\\boxed{1.5\\cdot 10^{3}}", T),
    ("1500", "\\boxed{1.5e3}", F), // e is a symbol in LaTeX (math-verify agrees)
    ("1500", "\\boxed{1.5\\times10^{4}}", F),
    ("0.0002", "\\boxed{2\\times 10^{-4}}", T),
    // --- radicals and pi
    ("\\sqrt{2}", "\\boxed{\\sqrt2}", T),
    ("\\sqrt{2}", "\\boxed{1.414214}", T),
    ("\\sqrt{2}", "\\boxed{1.41}", F),
    ("3\\sqrt{13}", "\\boxed{\\sqrt{117}}", T),
    ("3\\sqrt{13}", "\\boxed{3\\sqrt{12}}", F),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", T),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}\\sqrt{3}}", T),
    ("\\sqrt[3]{8}", "\\boxed{2}", T),
    ("\\pi", "\\boxed{3.141593}", T),
    ("\\pi", "\\boxed{3.14}", F),
    ("2\\pi", "\\boxed{2 \\pi}", T),
    ("\\frac{9}{4}\\pi", "\\boxed{\\frac94\\pi}", T),
    ("\\frac{9}{4}\\pi", "\\boxed{\\frac{9\\pi}{4}}", T),
    ("\\frac{9}{4}\\pi", "\\boxed{\\frac{4}{9}\\pi}", F),
    ("\\sqrt{2}+\\sqrt{5}", "\\boxed{\\sqrt 2+\\sqrt 5}", T),
    ("\\pi r^2", "\\boxed{r^2\\pi}", T),
    // --- algebraic expressions
    ("x^2+2x+1", "\\boxed{(x+1)^2}", T),
    ("x^2+1", "\\boxed{(x+1)^2}", F),
    ("2x", "\\boxed{x+x}", T),
    ("2x", "\\boxed{2y}", F),
    ("\\frac{x+2}{7}", "\\boxed{\\frac{x}{7}+\\frac{2}{7}}", T),
    ("2-2p", "so $x-p=\\boxed{2-2p}$.", T),
    ("2 \\sin b \\cos a", "\\boxed{2\\cos a \\sin b}", T),
    ("\\tan^2(y)+1", "\\boxed{\\sec^2(y)}", T),
    ("\\frac{\\pi r}{h+r}", "\\boxed{\\frac{\\pi r}{r+h}}", T),
    ("\\frac{\\pi r}{h+r}", "\\boxed{\\frac{\\pi r}{h-r}}", F),
    ("a^2-b^2", "\\boxed{(a-b)(a+b)}", T),
    ("a^2-b^2", "\\boxed{(a-b)^2}", F),
    ("3x-1", "\\boxed{3x+1}", F),
    // --- equations
    ("x=5", "\\boxed{5}", T),
    ("5", "\\boxed{x=5}", T),
    ("k=1", "\\boxed{1}", T),
    ("x = 11", "\\boxed{x = 5+5+1 = 11}", T),
    ("7 = 11a+c", "\\boxed{11a+c}", F),
    ("2x+4y-3=0", "\\boxed{y=-\\frac{1}{2}x+\\frac{3}{4}}", T),
    ("2x+4y-3=0", "\\boxed{y=-\\frac{1}{2}x+\\frac{1}{4}}", F),
    ("y = 2x+1", "\\boxed{y=2x+1}", T),
    ("x^2/4 + y^2/3 = 1", "\\boxed{x^2/16 + y^2/12 = 1/4}", T),
    ("x^2/4 + y^2/3 = 1", "\\boxed{x^2/4 + y^2/3 = 2}", F),
    // --- tuples (ordered)
    ("(1,2)", "\\boxed{(1,2)}", T),
    ("(2,1)", "\\boxed{(1,2)}", F),
    ("(1,2)", "\\boxed{(2,1)}", F),
    ("(1,\\frac{9}{2})", "\\boxed{(1,4.5)}", T),
    ("(3, \\frac{\\pi}{2})", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", T),
    ("(6,31,-1)", "$(p,q,r) = \\boxed{(6,31,-1)}$", T),
    ("(6,31,-1)", "\\boxed{(6,31,1)}", F),
    ("(1,2,3)", "\\boxed{(1,2)}", F),
    // --- sets (unordered)
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", T),
    ("\\{1,2\\}", "\\boxed{\\{1,3\\}}", F),
    ("\\{1,2,3\\}", "\\boxed{\\{1,2\\}}", F),
    ("-2,1", "\\boxed{-2,1}", T),
    ("-2,1", "\\boxed{1,-2}", T),
    ("-2,1", "\\boxed{1,2}", F),
    ("1 \\pm \\sqrt{19}", "\\boxed{1 \\pm \\sqrt{19}}", T),
    ("1 \\pm \\sqrt{19}", "\\boxed{1+\\sqrt{19}, 1-\\sqrt{19}}", T),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\boxed{-2, 1+\\sqrt5, 1-\\sqrt5}", T),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\boxed{-2, 1+\\sqrt5}", F),
    // --- intervals (brackets matter)
    ("[0,1)", "\\boxed{[0,1)}", T),
    ("[0,1)", "\\boxed{(0,1)}", F),
    ("(0,1)", "\\boxed{[0,1)}", F),
    ("(0,9)", "\\boxed{[0,9)}", F),
    ("[0,9)", "\\boxed{[0,1)}", F),
    ("[0,1]", "\\boxed{[0, 1]}", T),
    ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}", T),
    ("(-\\infty, 3]", "\\boxed{(-\\infty,3)}", F),
    ("[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0)", "\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0)}", T),
    ("[-1, 0) \\cup (0, 1]", "\\boxed{(0, 1] \\cup [-1, 0)}", T),
    ("[-1, 0) \\cup (0, 1]", "\\boxed{[-1, 0] \\cup (0, 1]}", F),
    ("x \\in [0,7)", "\\boxed{[0,7)}", T),
    // --- multiple choice
    ("B", "\\boxed{B}", T),
    ("B", "\\boxed{(B)}", T),
    ("B", "\\boxed{\\text{B}}", T),
    ("B", "\\boxed{\\textbf{(B)}}", T),
    ("(B)", "\\boxed{B}", T),
    ("B", "\\boxed{C}", F),
    ("B", "\\boxed{(C)}", F),
    // --- text answers
    ("\\text{Evelyn}", "Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", T),
    ("\\text{Evelyn}", "\\boxed{\\text{Carla}}", F),
    // --- matrices
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", T),
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\boxed{\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}}", F),
    ("\\begin{pmatrix}0 & 0 \\\\0 & 0\\end{pmatrix}", "\\boxed{\\begin{bmatrix}0 & 0 \\\\0 & 0\\end{bmatrix}}", T),
    // --- gold formats
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "\\boxed{72}", T),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "\\boxed{24}", F),
    ("so the answer is $\\boxed{3\\sqrt{13}}$", "\\boxed{\\sqrt{117}}", T),
    ("$\\frac{14}{3}$", "\\boxed{\\frac{14}{3}}", T),
    ("$125$ miles", "The distance is $\\boxed{125\\textnormal{ miles}}.$", T),
    // --- rules matched to math-verify
    ("5\\%", "\\boxed{0.05}", T),          // a percentage also equals its fraction
    ("5\\%", "\\boxed{5}", T),
    ("5", "\\boxed{0.05}", F),
    ("e^2", "\\boxed{7.389056}", T),         // e is Euler's number
    ("\\log_2 8", "\\boxed{3}", T),
    ("(2,-1)", "\\boxed{x=2, y=-1}", T),     // assignments form a point
    ("(2,-1)", "\\boxed{x=-1, y=2}", F),
    ("18", "\\boxed{18 dollars}", F),        // bare words are not units (only \\text{...} is)
    ("45^\\circ", "The answer is 45^\\circ", T),
    ("15.50", "Hence the value is \\$15.50.", F), // `\\$15.50` in prose is not a number
    // --- garbage must be false, never a crash
    ("5", "\\boxed{\\frac{}{}}", F),
    ("5", "\\boxed{((((}", F),
    ("5", "\\boxed{9^9^9^9}", F),
    ("", "\\boxed{5}", F),
    ("5", "\\boxed{\\undefinedmacro{5}}", F),
];

#[test]
fn verifier_table() {
    assert!(CASES.len() >= 150, "only {} cases", CASES.len());
    let mut failures = Vec::new();
    for (gold, pred, expected) in CASES {
        let v = grade(gold, pred);
        if v.correct != *expected {
            failures.push(format!(
                "gold {gold:?} pred {pred:?}: expected {expected}, got {} (extracted {:?})",
                v.correct, v.extracted
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn strict_mode_accepts_boxed_only() {
    assert!(grade_with("42", "\\boxed{42}", ExtractMode::Strict).correct);
    assert!(!grade_with("42", "The answer is 42.", ExtractMode::Strict).correct);
    assert!(!grade_with("42", "#### 42", ExtractMode::Strict).correct);
    assert!(grade_with("42", "The answer is 42.", ExtractMode::Lenient).correct);
}

/// Pairs written by `scripts/mathverify_pairs.py` and `scripts/mathverify_pairs_2.py` with the
/// verdict of Hugging Face's
/// math-verify 0.x (`verify(parse("$gold$"), parse(prediction))`) recorded beside each.
#[test]
fn agrees_with_recorded_math_verify_verdicts() {
    let data = [
        include_str!("data/mathverify_pairs.jsonl"),
        include_str!("data/mathverify_pairs_2.jsonl"),
    ]
    .concat();
    let (mut total, mut agree, mut we_accept_they_reject) = (0, 0, Vec::new());
    for line in data.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (gold, pred) = (
            v["answer"].as_str().unwrap(),
            v["prediction"].as_str().unwrap(),
        );
        let theirs = v["math_verify"].as_bool().unwrap();
        let ours = grade(gold, pred).correct;
        total += 1;
        agree += (ours == theirs) as usize;
        if ours && !theirs {
            we_accept_they_reject.push((gold.to_string(), pred.to_string()));
        }
    }
    assert!(total >= 400);
    assert!(
        agree as f64 >= 0.95 * total as f64,
        "agreement {agree}/{total}"
    );
    assert!(
        we_accept_they_reject.len() <= 2,
        "{we_accept_they_reject:?}"
    );
}

#[test]
fn large_numbers_compare_exactly_and_overflow_is_never_equality() {
    use alp_envs::math::grade;
    let cases = [
        ("2^1000000", "\\boxed{2^1000001}", false),
        ("2^1000000", "\\boxed{2^{1000000}}", true),
        ("10^400", "\\boxed{10^401}", false),
        ("10^400", "\\boxed{10^{400}}", true),
        ("\\infty", "\\boxed{10^400}", false),
        ("\\infty", "\\boxed{\\infty}", true),
        ("10000000001", "\\boxed{10000000000}", false),
        ("2^53+1", "\\boxed{2^53}", false),
        ("2^53+1", "\\boxed{9007199254740993}", true),
        (
            "123456789012345678901234567890",
            "\\boxed{123456789012345678901234567891}",
            false,
        ),
        (
            "123456789012345678901234567890",
            "\\boxed{123456789012345678901234567890}",
            true,
        ),
        ("\\frac{1}{3}", "\\boxed{\\frac{2}{6}}", true),
        (
            "\\frac{1}{3}",
            "\\boxed{\\frac{10000000001}{30000000000}}",
            false,
        ),
    ];
    for (gold, pred, want) in cases {
        assert_eq!(grade(gold, pred).correct, want, "{gold} vs {pred}");
    }
    // A box far before the last 100,000 characters still decides the answer.
    let long = format!("\\boxed{{42}} {}", "7 ".repeat(60_000));
    assert!(grade("42", &long).correct);
    assert!(!grade("7", &long).correct);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    #[test]
    fn two_different_integers_are_never_equal(a in proptest::num::i64::ANY, d in 1i64..1_000_000, big in 0u32..40) {
        use alp_envs::math::grade;
        let x = format!("{a}{}", "0".repeat(big as usize));
        let y = format!("{}{}", a.wrapping_add(d), "0".repeat(big as usize));
        proptest::prop_assume!(x != y);
        proptest::prop_assert!(!grade(&x, &format!("\\boxed{{{y}}}")).correct, "{} vs {}", x, y);
        proptest::prop_assert!(!grade(&y, &format!("\\boxed{{{x}}}")).correct, "{} vs {}", y, x);
        proptest::prop_assert!(grade(&x, &format!("\\boxed{{{x}}}")).correct, "{}", x);
    }
}
