//! Tool calling: the Hermes/Qwen `<tool_call>` parser, the [`Tool`] trait and its registry,
//! the built-in safe `calculator`, and the sandboxed `python` interpreter.

pub mod calculator;
pub mod parser;
pub mod python;
pub mod registry;

pub use calculator::{evaluate, CalcError, Calculator, Number};
pub use parser::{
    parse_code_blocks, parse_tool_calls, ToolCall, ToolCallError, CODE_CLOSE, CODE_OPEN, CODE_RUN,
    TOOL_CALL_CLOSE, TOOL_CALL_OPEN,
};
pub use python::{PythonConfig, PythonSandbox, PythonTool, UnavailablePython};
pub use registry::{Tool, ToolError, ToolRegistry};
