//! The [`Tool`] trait and the registry that dispatches calls and renders the tool list into a
//! system prompt the way Qwen2.5's chat template does.

use super::parser::ToolCall;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a tool call failed; shown to the model as the tool's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool of that name is registered.
    #[error("unknown tool `{name}`; available: {available}")]
    Unknown {
        /// The requested name.
        name: String,
        /// The registered names.
        available: String,
    },
    /// The arguments do not fit the tool's schema.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// A tool the model may call.
pub trait Tool: Send + Sync {
    /// The name the model calls it by.
    fn name(&self) -> &str;
    /// The OpenAI-style function description: `{"name", "description", "parameters": <JSON
    /// schema>}`.
    fn schema(&self) -> Value;
    /// Runs the tool on its arguments (a JSON object).
    fn call(&self, arguments: &Value) -> Result<String, ToolError>;
}

/// The tools of an environment, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a tool.
    pub fn register(&mut self, tool: impl Tool + 'static) -> &mut Self {
        self.tools.insert(tool.name().to_string(), Arc::new(tool));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    /// True when no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Runs one call.
    pub fn call(&self, call: &ToolCall) -> Result<String, ToolError> {
        match self.tools.get(&call.name) {
            Some(t) => t.call(&call.arguments),
            None => Err(ToolError::Unknown {
                name: call.name.clone(),
                available: self.names().join(", "),
            }),
        }
    }

    /// The tool descriptions as chat templates take them (`tools=[{"type": "function",
    /// "function": {...}}]`).
    pub fn tool_specs(&self) -> Vec<Value> {
        self.tools
            .values()
            .map(|t| serde_json::json!({"type": "function", "function": t.schema()}))
            .collect()
    }

    /// `system` followed by the tool section Qwen2.5's template writes into the system
    /// message: the tool signatures in `<tools></tools>` and how to call them.
    pub fn render_system_prompt(&self, system: &str) -> String {
        let mut s = String::from(system);
        if self.tools.is_empty() {
            return s;
        }
        s.push_str(
            "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
        );
        s.push_str(
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for spec in self.tool_specs() {
            s.push('\n');
            s.push_str(&alp_core::pyjson::Style::default().dumps(&spec));
        }
        s.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
        s
    }
}
