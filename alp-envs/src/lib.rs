//! `alp-envs` will hold alp's reward environments: procedural math tasks, a math answer
//! verifier, and tool calling (a `<tool_call>` parser, a tool registry, a safe calculator)
//! behind the `alp_core::Environment` trait. It depends on alp-core only, never on candle or
//! model code. Nothing is implemented yet.
