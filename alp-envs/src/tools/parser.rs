//! Parsing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks out of a model
//! turn (the Hermes format Qwen's chat template uses). Malformed calls become errors the
//! environment can show the model; nothing here panics.

use serde_json::Value;

/// Opening tag of a tool call.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closing tag of a tool call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Most calls parsed from one turn; later ones are reported as errors.
pub const MAX_CALLS_PER_TURN: usize = 16;
/// Longest call body accepted (bytes).
pub const MAX_CALL_LEN: usize = 64 * 1024;

/// One well-formed tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments (a JSON object).
    pub arguments: Value,
}

/// Why a `<tool_call>` block could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    /// The body is not valid JSON.
    #[error(
        "the tool call is not valid JSON ({0}); write {{\"name\": ..., \"arguments\": {{...}}}}"
    )]
    InvalidJson(String),
    /// The JSON lacks a string `name`.
    #[error("the tool call has no \"name\" string")]
    MissingName,
    /// `arguments` is neither an object nor a JSON string holding one.
    #[error("the tool call's \"arguments\" must be a JSON object")]
    BadArguments,
    /// `<tool_call>` without `</tool_call>`.
    #[error("<tool_call> is not closed by </tool_call>")]
    Unclosed,
    /// Too long or too many.
    #[error("{0}")]
    TooLarge(String),
}

fn parse_body(body: &str) -> Result<ToolCall, ToolCallError> {
    if body.len() > MAX_CALL_LEN {
        return Err(ToolCallError::TooLarge(format!(
            "the tool call is longer than {MAX_CALL_LEN} bytes"
        )));
    }
    let v: Value =
        serde_json::from_str(body.trim()).map_err(|e| ToolCallError::InvalidJson(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or(ToolCallError::InvalidJson("not an object".into()))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or(ToolCallError::MissingName)?
        .to_string();
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None => Value::Object(Default::default()),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Value::Object(m),
            _ => return Err(ToolCallError::BadArguments),
        },
        Some(_) => return Err(ToolCallError::BadArguments),
    };
    Ok(ToolCall { name, arguments })
}

/// Every `<tool_call>` block of `text`, in order, each parsed or an error.
///
/// ```
/// use alp_envs::tools::parse_tool_calls;
/// let calls = parse_tool_calls(
///     r#"<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>"#,
/// );
/// assert_eq!(calls[0].as_ref().unwrap().name, "calculator");
/// assert!(parse_tool_calls("<tool_call>{oops</tool_call>")[0].is_err());
/// ```
pub fn parse_tool_calls(text: &str) -> Vec<Result<ToolCall, ToolCallError>> {
    blocks(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, false, "tool calls")
        .into_iter()
        .map(|b| b.and_then(parse_body))
        .collect()
}

/// The bodies between `open` and `close` in `text`, in order: at most [`MAX_CALLS_PER_TURN`]
/// (then an error), an unclosed one ending the list with an error. With `next_line`, a body
/// starts on the line after `open` (a fence's info string is skipped).
fn blocks<'a>(
    text: &'a str,
    open: &str,
    close: &str,
    next_line: bool,
    what: &str,
) -> Vec<Result<&'a str, ToolCallError>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        if out.len() == MAX_CALLS_PER_TURN {
            out.push(Err(ToolCallError::TooLarge(format!(
                "more than {MAX_CALLS_PER_TURN} {what} in one turn"
            ))));
            break;
        }
        let mut after = &rest[start + open.len()..];
        if next_line {
            after = &after[after.find('\n').map_or(after.len(), |i| i + 1)..];
        }
        match after.find(close) {
            Some(end) => {
                out.push(Ok(&after[..end]));
                rest = &after[end + close.len()..];
            }
            None => {
                out.push(Err(ToolCallError::Unclosed));
                break;
            }
        }
    }
    out
}

/// Opens a code block of the code-block tool format (tool-integrated reasoning).
pub const CODE_OPEN: &str = "```python";
/// Closes a code block.
pub const CODE_CLOSE: &str = "```";
/// What the model writes after a code block to have it run (the turn stops there and the
/// output comes back as the tool's response).
pub const CODE_RUN: &str = "```output";

/// Every fenced ```` ```python ```` block of `text`, in order, as calls of the `python` tool
/// (`{"code": ...}`); an unclosed block is an error.
///
/// ```
/// use alp_envs::tools::parse_code_blocks;
/// let calls = parse_code_blocks("Let me compute.\n```python\nprint(2**10)\n```\n```output");
/// assert_eq!(calls[0].as_ref().unwrap().arguments["code"], "print(2**10)\n");
/// assert!(parse_code_blocks("```python\nprint(1)")[0].is_err());
/// ```
pub fn parse_code_blocks(text: &str) -> Vec<Result<ToolCall, ToolCallError>> {
    blocks(text, CODE_OPEN, CODE_CLOSE, true, "code blocks")
        .into_iter()
        .map(|b| {
            let code = b?;
            if code.len() > MAX_CALL_LEN {
                return Err(ToolCallError::TooLarge(format!(
                    "a code block of {} bytes (at most {MAX_CALL_LEN})",
                    code.len()
                )));
            }
            Ok(ToolCall {
                name: "python".into(),
                arguments: serde_json::json!({ "code": code }),
            })
        })
        .collect()
}
