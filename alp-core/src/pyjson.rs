//! JSON written the way Python's `json.dumps` writes it — the format chat templates (through
//! Hugging Face's `tojson`) and Qwen's tool prompts use: keys in their order, `", "` and `": "`
//! separators, no HTML escaping.
//!
//! ```
//! let v: serde_json::Value = serde_json::from_str(r#"{"b": [1, 2.5], "a": "é"}"#).unwrap();
//! assert_eq!(alp_core::pyjson::Style::default().dumps(&v), r#"{"b": [1, 2.5], "a": "é"}"#);
//! ```

/// How Python's `json.dumps` is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Style {
    /// `indent=` (None: one line).
    pub indent: Option<usize>,
    /// The item separator (`", "`, or `","` with an indent).
    pub item: String,
    /// The key separator (`": "`).
    pub key: String,
    /// `sort_keys=`.
    pub sort_keys: bool,
    /// `ensure_ascii=` (non-ASCII as `\\uXXXX`).
    pub ensure_ascii: bool,
}

impl Default for Style {
    /// `json.dumps(v)` with `ensure_ascii=False` (as Hugging Face's `tojson` calls it).
    fn default() -> Self {
        Style {
            indent: None,
            item: ", ".into(),
            key: ": ".into(),
            sort_keys: false,
            ensure_ascii: false,
        }
    }
}

impl Style {
    /// `v` as Python's `json.dumps` writes it in this style (keys in their order).
    pub fn dumps(&self, v: &serde_json::Value) -> String {
        let mut out = String::new();
        self.write(v, 0, &mut out);
        out
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write(&self, v: &serde_json::Value, level: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => out.push_str(&n.to_string()),
            J::String(s) => self.string(s, out),
            J::Array(a) if a.is_empty() => out.push_str("[]"),
            J::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.write(x, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            J::Object(m) if m.is_empty() => out.push_str("{}"),
            J::Object(m) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = m.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key);
                    self.write(x, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }
}
