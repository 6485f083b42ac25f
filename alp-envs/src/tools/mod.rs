//! Tool calling: the Hermes/Qwen `<tool_call>` parser, the [`Tool`] trait and its registry,
//! and the built-in safe `calculator`.

pub mod calculator;
pub mod parser;
pub mod registry;

pub use calculator::{evaluate, CalcError, Calculator, Number};
pub use parser::{parse_tool_calls, ToolCall, ToolCallError, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
pub use registry::{Tool, ToolError, ToolRegistry};
