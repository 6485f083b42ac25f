//! Generators, dataset loading, tool calling, the calculator and the tool environment.

mod common;

use alp_core::{ChatMessage, Environment, Step, Task, TaskSource};
use alp_envs::math::generators::{question_of, split_of};
use alp_envs::math::{
    grade, load_jsonl, DatasetFormat, MathGenerator, MathTaskKind, OnError, Split, TaskStream,
};
use alp_envs::tools::{evaluate, parse_tool_calls, CalcError, Calculator, Tool, ToolRegistry};
use alp_envs::{ToolEnv, ToolEnvConfig};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn all_generators() -> Vec<(MathGenerator, f64)> {
    let kinds = [
        MathTaskKind::AddSub,
        MathTaskKind::Multiply,
        MathTaskKind::Arithmetic,
        MathTaskKind::Fractions,
        MathTaskKind::Decimals,
        MathTaskKind::Linear,
        MathTaskKind::WordProblem,
    ];
    kinds
        .iter()
        .flat_map(|k| (1..=3).map(move |d| (MathGenerator::new(*k, d), 1.0)))
        .collect()
}

#[test]
fn same_seed_same_tasks_and_resume() {
    let mut a = TaskStream::new(all_generators(), Split::Train, 11);
    let mut b = TaskStream::new(all_generators(), Split::Train, 11);
    let mut c = TaskStream::new(all_generators(), Split::Train, 12);
    let ta: Vec<Task> = (0..200).map(|_| a.next_task().unwrap()).collect();
    let tb: Vec<Task> = (0..200).map(|_| b.next_task().unwrap()).collect();
    let tc: Vec<Task> = (0..200).map(|_| c.next_task().unwrap()).collect();
    assert_eq!(ta, tb);
    assert_ne!(ta, tc, "another seed gives other tasks");
    // Seek resumes exactly.
    let mut d = TaskStream::new(all_generators(), Split::Train, 11);
    d.seek(150);
    assert_eq!(d.next_task().unwrap(), ta[150]);
    assert_eq!(d.cursor(), 151);
}

#[test]
fn train_and_heldout_never_overlap_on_100k_tasks() {
    let mut train = TaskStream::new(all_generators(), Split::Train, 1);
    let mut held = TaskStream::new(all_generators(), Split::Heldout, 2);
    let mut train_q = HashSet::new();
    for _ in 0..100_000 {
        let t = train.next_task().unwrap();
        assert_eq!(split_of(question_of(&t)), Split::Train);
        train_q.insert(question_of(&t).to_string());
    }
    let mut held_q = HashSet::new();
    for _ in 0..100_000 {
        let t = held.next_task().unwrap();
        assert!(
            !train_q.contains(question_of(&t)),
            "held-out task in train: {}",
            question_of(&t)
        );
        held_q.insert(question_of(&t).to_string());
    }
    assert!(
        train_q.len() > 20_000 && held_q.len() > 5_000,
        "{} {}",
        train_q.len(),
        held_q.len()
    );
}

#[test]
fn generated_answers_grade_correct_and_are_right() {
    let mut s = TaskStream::new(all_generators(), Split::Train, 3);
    for _ in 0..2_000 {
        let t = s.next_task().unwrap();
        let v = grade(&t.answer, &format!("Thus \\boxed{{{}}}.", t.answer));
        assert!(v.correct, "{t:?}");
        assert!(!grade(&t.answer, "\\boxed{123456789}").correct || t.answer == "123456789");
        // Arithmetic and multiplication answers agree with the calculator.
        let q = question_of(&t);
        if t.kind == "multiply" || t.kind == "add-sub" || t.kind == "arithmetic" {
            let expr = q
                .trim_start_matches("What is ")
                .trim_start_matches("Compute ")
                .trim_end_matches(['?', '.']);
            assert_eq!(evaluate(expr).unwrap().to_string(), t.answer, "{q}");
        }
    }
}

#[test]
fn jsonl_loader_formats_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let gsm = dir.path().join("gsm.jsonl");
    std::fs::write(
        &gsm,
        concat!(
            r##"{"question": "Q1", "answer": "work\n#### 72"}"##,
            "\n",
            "\n",
            r#"{"question": "Q2", "answer": "no final line"}"#,
            "\n",
            "not json\n",
            r#####"{"question": "Q3", "answer": "#### 1,000"}"#####,
            "\n",
        ),
    )
    .unwrap();
    let (tasks, errors) =
        load_jsonl(&gsm, &DatasetFormat::gsm8k(), "gsm8k", OnError::Skip).unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].answer, "72");
    assert_eq!(tasks[1].answer, "1,000");
    assert_eq!(tasks[0].messages.last().unwrap().content, "Q1");
    assert!(tasks[0].messages[0].content.contains("\\boxed"));
    assert_eq!(
        errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let err = load_jsonl(&gsm, &DatasetFormat::gsm8k(), "gsm8k", OnError::Reject)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("gsm.jsonl"), "{err}");

    let math = dir.path().join("math.jsonl");
    std::fs::write(
        &math,
        concat!(
            r#"{"problem": "P1", "solution": "so \\boxed{\\frac{1}{2}}"}"#,
            "\n",
            r#"{"problem": "P2", "solution": "x", "answer": "7"}"#,
            "\n",
            r#"{"problem": "P3", "solution": "no box"}"#,
            "\n",
        ),
    )
    .unwrap();
    let (tasks, errors) = load_jsonl(&math, &DatasetFormat::math(), "math", OnError::Skip).unwrap();
    assert_eq!(
        tasks.iter().map(|t| t.answer.as_str()).collect::<Vec<_>>(),
        vec!["\\frac{1}{2}", "7"]
    );
    assert_eq!(errors.len(), 1);

    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"q\": \"2+2?\", \"a\": 4}\n").unwrap();
    let fmt: DatasetFormat =
        serde_json::from_str(r#"{"format": "plain", "prompt": "q", "answer": "a"}"#).unwrap();
    let (tasks, _) = load_jsonl(&plain, &fmt, "plain", OnError::Reject).unwrap();
    assert_eq!(tasks[0].answer, "4");

    let missing = load_jsonl(&dir.path().join("nope.jsonl"), &fmt, "x", OnError::Skip).unwrap_err();
    assert!(missing.to_string().contains("nope.jsonl"));
}

#[test]
fn tool_call_parser() {
    let text = concat!(
        "Let me compute.<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}\n</tool_call>",
        "<tool_call>{\"name\": \"calculator\", \"arguments\": \"{\\\"expression\\\": \\\"3\\\"}\"}</tool_call>",
        "<tool_call>{\"name\": 5}</tool_call>",
        "<tool_call>{\"name\": \"x\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{broken</tool_call>",
        "<tool_call>{\"name\": \"calculator\"",
    );
    let calls = parse_tool_calls(text);
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[0].as_ref().unwrap().arguments["expression"], "2+2");
    assert_eq!(calls[1].as_ref().unwrap().arguments["expression"], "3");
    assert!(calls[2..].iter().all(|c| c.is_err()));
    assert!(parse_tool_calls("no calls here").is_empty());
}

#[test]
fn registry_renders_qwen_style_tools() {
    let mut reg = ToolRegistry::new();
    reg.register(Calculator);
    let s = reg.render_system_prompt("You are helpful.");
    assert!(s.starts_with("You are helpful.\n\n# Tools"));
    // As Qwen's template writes it (Python's json.dumps: key order, ", " and ": ").
    assert!(
        s.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"calculator\""),
        "{s}"
    );
    assert!(s.contains("</tools>") && s.contains("<tool_call>\n{\"name\": <function-name>"));
    let unknown = reg
        .call(&alp_envs::tools::ToolCall {
            name: "python".into(),
            arguments: serde_json::json!({}),
        })
        .unwrap_err();
    assert!(unknown.to_string().contains("calculator"));
}

#[test]
fn calculator_is_exact_and_bounded() {
    let v = |s: &str| evaluate(s).unwrap().to_string();
    assert_eq!(v("942*59"), "55578");
    assert_eq!(v("093*82"), "7626");
    assert_eq!(v("2^10"), "1024");
    assert_eq!(v("2**3**2"), "512");
    assert_eq!(v("-3^2"), "-9");
    assert_eq!(v("(1+2)*(3+4)/7"), "3");
    assert_eq!(v("0.1+0.2"), "0.3");
    assert_eq!(v("1/3"), "1/3");
    assert_eq!(v("7 ÷ 2"), "3.5");
    assert_eq!(
        v("9999999999999999999 * 9999999999999999999"),
        "99999999999999999980000000000000000001"
    );
    // Beyond i128 it falls back to a float.
    assert_eq!(v("99999999999999999999 * 99999999999999999999"), "1e40");
    assert_eq!(evaluate("1/0"), Err(CalcError::DivisionByZero));
    assert!(matches!(evaluate("2+"), Err(CalcError::Syntax(_))));
    assert!(matches!(evaluate("import os"), Err(CalcError::Syntax(_))));
    assert!(evaluate("(-8)^0.5").is_err());
    let t = Instant::now();
    assert_eq!(evaluate("9^9^9^9"), Err(CalcError::OutOfRange));
    assert_eq!(evaluate("10^400"), Err(CalcError::OutOfRange));
    let big = "1+".repeat(500_000) + "1";
    assert!(matches!(evaluate(&big), Err(CalcError::TooLong(_))));
    let deep = "(".repeat(900) + "1" + &")".repeat(90);
    assert!(evaluate(&deep).is_err());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        Calculator
            .call(&serde_json::json!({"expression": "6*7"}))
            .unwrap(),
        "42"
    );
    assert!(Calculator
        .call(&serde_json::json!({"expr": "6*7"}))
        .is_err());
}

fn task(answer: &str) -> Task {
    Task {
        id: "t".into(),
        kind: "multiply".into(),
        messages: vec![ChatMessage::new("user", "What is 942 * 59?")],
        answer: answer.into(),
    }
}

fn info(step: &Step) -> (f32, alp_core::Outcome) {
    match step {
        Step::Done(o) => (o.reward, o.clone()),
        other => panic!("not done: {other:?}"),
    }
}

#[test]
fn tool_env_episodes() {
    let mut reg = ToolRegistry::new();
    reg.register(Calculator);
    let cfg = ToolEnvConfig {
        format_penalty: 0.1,
        ..Default::default()
    };
    let mut env = ToolEnv::new(reg.clone(), cfg.clone()).unwrap();
    let call =
        r#"<tool_call>{"name": "calculator", "arguments": {"expression": "942*59"}}</tool_call>"#;

    // Tool call, then the right answer.
    env.reset(&task("55578")).unwrap();
    match env.step(call).unwrap() {
        Step::Observation(m) => assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("tool", "55578")
        ),
        other => panic!("{other:?}"),
    }
    let (r, i) = info(&env.step("So \\boxed{55578}").unwrap());
    assert_eq!(r, 1.0);
    assert_eq!(i.tool_calls, 1);
    assert!(i.correct && !i.truncated);

    // A direct wrong guess.
    env.reset(&task("55578")).unwrap();
    let (r, i) = info(&env.step("\\boxed{55000}").unwrap());
    assert_eq!((r, i.tool_calls, i.correct), (0.0, 0, false));

    // Unknown tool and bad JSON are error observations; then right answer with penalty.
    env.reset(&task("55578")).unwrap();
    let bad =
        r#"<tool_call>{"name": "python", "arguments": {}}</tool_call><tool_call>{oops</tool_call>"#;
    match env.step(bad).unwrap() {
        Step::Observation(m) => {
            assert_eq!(m.len(), 2);
            assert!(m.iter().all(|x| x.content.starts_with("Error:")));
        }
        other => panic!("{other:?}"),
    }
    let (r, i) = info(&env.step("\\boxed{55578}").unwrap());
    assert!((r - 0.9).abs() < 1e-6);
    assert_eq!(i.tool_errors, 2);

    // Malformed turns end the episode.
    env.reset(&task("55578")).unwrap();
    assert!(matches!(env.step("hmm").unwrap(), Step::Observation(_)));
    let (r, i) = info(&env.step("still nothing").unwrap());
    assert_eq!((r, i.malformed_turns, i.truncated), (-0.1, 2, false));

    // The runner's turn limit ends an episode through `truncate`, which keeps the counts.
    let mut env = ToolEnv::new(reg.clone(), ToolEnvConfig::default()).unwrap();
    env.reset(&task("55578")).unwrap();
    assert!(matches!(env.step(call).unwrap(), Step::Observation(_)));
    assert!(matches!(env.step(call).unwrap(), Step::Observation(_)));
    let o = env.truncate().unwrap();
    assert!(o.truncated && !o.correct);
    assert_eq!((o.tool_calls, o.reward), (2, 0.0));

    // Config validation names the field.
    let err = ToolEnv::new(
        reg,
        ToolEnvConfig {
            max_malformed_turns: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_malformed_turns"));
}

#[test]
fn alp_envs_compiles_no_tensor_library() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "alp-envs",
            "-e",
            "normal",
            "--offline",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("alp-core"), "{tree}");
    let candle: Vec<&str> = tree
        .lines()
        .filter(|l| l.contains("candle") || l.contains("gemm"))
        .collect();
    assert!(candle.is_empty(), "alp-envs pulls in {candle:?}");
}

#[test]
fn code_block_episodes_run_python_and_survive_bad_blocks() {
    if common::skip_without_sandbox("#[test]") {
        return;
    }
    use alp_envs::tools::{PythonConfig, PythonSandbox, PythonTool, ToolRegistry};
    use alp_envs::{CallFormat, ToolEnv, ToolEnvConfig};
    let sb = std::sync::Arc::new(
        PythonSandbox::new(PythonConfig::default())
            .expect("the python tool needs python3 and bubblewrap with user namespaces"),
    );
    let mut reg = ToolRegistry::new();
    reg.register(PythonTool::new(sb));
    let cfg = ToolEnvConfig {
        call_format: CallFormat::CodeBlock,
        max_malformed_turns: 3,
        ..Default::default()
    };
    let mut env = ToolEnv::new(reg, cfg).unwrap();
    let task = alp_core::Task {
        id: "t".into(),
        kind: "hard".into(),
        answer: "55578".into(),
        messages: vec![alp_core::ChatMessage::new("user", "What is 942 * 59?")],
    };
    let opening = env.reset(&task).unwrap();
    assert_eq!(opening[0].role, "system");
    assert!(opening[0].content.contains("```python"));
    let obs = |s: alp_core::Step| match s {
        alp_core::Step::Observation(m) => m[0].content.clone(),
        other => panic!("{other:?}"),
    };
    let out = obs(env
        .step("I'll compute it.\n```python\nprint(942 * 59)\n```\n```output")
        .unwrap());
    assert_eq!(out.trim(), "55578");
    // Bad blocks come back as tool text and the episode goes on.
    let out = obs(env.step("```python\nprint(1 +\n```\n```output").unwrap());
    assert!(out.contains("SyntaxError"), "{out}");
    let out = obs(env.step("```python\n\n```\n```output").unwrap());
    assert!(out.contains("empty"), "{out}");
    let out = obs(env
        .step("```python\nimport sys; sys.stdout.buffer.write(b'\\xff\\xfe')\n```\n```output")
        .unwrap());
    assert!(out.contains('\u{FFFD}'), "{out:?}");
    let out = obs(env.step("```python\nprint('never closed')").unwrap());
    assert!(
        out.to_lowercase().contains("unclosed") || out.contains("Error"),
        "{out}"
    );
    match env.step("So the answer is \\boxed{55578}.").unwrap() {
        alp_core::Step::Done(o) => {
            assert!(o.correct);
            assert_eq!(o.tool_calls, 4);
            assert!(o.tool_errors >= 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_a_sandbox_the_python_tool_says_why_and_the_episode_goes_on() {
    use alp_envs::tools::UnavailablePython;
    use alp_envs::CallFormat;
    let mut reg = ToolRegistry::new();
    reg.register(UnavailablePython::new(
        "bwrap: No permissions to create new namespace (user namespaces are disabled)",
    ));
    let cfg = ToolEnvConfig {
        call_format: CallFormat::CodeBlock,
        ..Default::default()
    };
    let mut env = ToolEnv::new(reg, cfg).unwrap();
    let task = Task {
        id: "t".into(),
        kind: "k".into(),
        answer: "4".into(),
        messages: vec![ChatMessage::new("user", "2+2?")],
    };
    env.reset(&task).unwrap();
    match env.step("```python\nprint(2+2)\n```\n```output").unwrap() {
        Step::Observation(m) => assert!(
            m[0].content.contains("unavailable") && m[0].content.contains("user namespaces"),
            "{}",
            m[0].content
        ),
        other => panic!("{other:?}"),
    }
    match env.step("\\boxed{4}").unwrap() {
        Step::Done(o) => assert!(o.correct && o.tool_errors == 1),
        other => panic!("{other:?}"),
    }
}
