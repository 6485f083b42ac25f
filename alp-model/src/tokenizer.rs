//! The tokenizer of a checkpoint: `tokenizer.json`, the chat template of
//! `tokenizer_config.json` (rendered with minijinja) and EOS ids from `generation_config.json`.
use std::path::Path;

use alp_core::{ChatMessage, Error, Result, TokenId};

use crate::config::ids_from_json;
use crate::Config;

/// A Hugging Face tokenizer with its chat template and stop ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    eos_ids: Vec<TokenId>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&s)
        .map(Some)
        .map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Most instructions a chat template may run (real templates need a few thousand per message).
pub const TEMPLATE_FUEL: u64 = 20_000_000;
/// Most bytes a rendered chat template may have.
pub const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

/// Python's `json.dumps` as Hugging Face's chat-template environment calls it in `tojson`
/// (`ensure_ascii=False, indent=None, separators=None, sort_keys=False` by default): keys in
/// their order, `", "` and `": "` separators (`","` with an indent), no HTML escaping — so a
/// tools section renders as the checkpoint saw it in training.
fn py_tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let (item, key) = match &separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = alp_core::pyjson::Style {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    Ok(minijinja::Value::from_safe_string(style.dumps(&v)))
}

/// A buffer that refuses to grow past [`TEMPLATE_MAX_OUTPUT`] (and remembers that it did).
#[derive(Default)]
struct BoundedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model directory; `Ok(None)` when it has no `tokenizer.json`
    /// (callers then give token ids).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            return Ok(None);
        }
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| Error::Parse {
            path: tj.clone(),
            message: e.to_string(),
        })?;
        let mut tok = Tokenizer::from_tokenizer(inner);
        if let Some(tc) = read_json(&dir.join("tokenizer_config.json"))? {
            tok.chat_template = match tc.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
                _ => None,
            };
            tok.bos_token = token_string(tc.get("bos_token"));
            tok.eos_token = token_string(tc.get("eos_token"));
        }
        // A separate chat_template.jinja (newer transformers) wins over the config entry.
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            tok.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        let mut eos = vec![];
        if let Some(gc) = read_json(&dir.join("generation_config.json"))? {
            eos = ids_from_json(gc.get("eos_token_id"));
        }
        if let Some(e) = &tok.eos_token {
            if let Some(id) = tok.inner.token_to_id(e) {
                eos.push(id);
            }
        }
        eos.sort_unstable();
        eos.dedup();
        tok.eos_ids = eos;
        Ok(Some(tok))
    }

    /// Wraps a `tokenizers::Tokenizer` built in code (no chat template, no EOS ids yet).
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer {
            inner,
            chat_template: None,
            eos_ids: vec![],
            bos_token: None,
            eos_token: None,
        }
    }

    /// Sets the chat template (a Jinja string in the Hugging Face convention).
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.chat_template = Some(template.into());
        self
    }

    /// Sets the EOS token by its string (its id is looked up).
    pub fn with_eos_token(mut self, token: &str) -> Result<Self> {
        let id = self.token_id(token)?;
        self.eos_token = Some(token.to_string());
        if !self.eos_ids.contains(&id) {
            self.eos_ids.push(id);
        }
        Ok(self)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids that end a sequence.
    pub fn eos_ids(&self) -> &[TokenId] {
        &self.eos_ids
    }

    /// The chat template, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (e.g. a special token).
    pub fn token_id(&self, token: &str) -> Result<TokenId> {
        self.inner
            .token_to_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("token `{token}` is not in the vocabulary")))
    }

    /// Errors when some token id of the tokenizer would fall outside the model's embedding.
    pub fn check_fits(&self, cfg: &Config) -> Result<()> {
        let max_id = self
            .inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0) as usize;
        if max_id >= cfg.vocab_size {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has ids up to {max_id} ({} tokens) but the model's vocab_size is {}: use the tokenizer that belongs to this checkpoint",
                self.vocab_size(),
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Encodes text to ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<TokenId>> {
        Ok(self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The characters of `text` that this tokenizer cannot represent (they encode to its
    /// unknown token, or are dropped): what does not come back from a round trip.
    pub fn unrepresentable_chars(&self, text: &str) -> Result<Vec<char>> {
        let back = self.decode(&self.encode(text, false)?, false)?;
        if back == text {
            return Ok(Vec::new());
        }
        let kept: std::collections::HashSet<char> = back.chars().collect();
        let mut lost: Vec<char> = text.chars().filter(|c| !kept.contains(c)).collect();
        lost.sort_unstable();
        lost.dedup();
        Ok(lost)
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Renders `messages` with the chat template (optionally with a `tools` list, as the
    /// Qwen templates take it) and opens the assistant turn when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::Tokenizer(
                "this tokenizer has no chat template (tokenizer_config.json `chat_template`)"
                    .into(),
            )
        })?;
        let mut env = minijinja::Environment::new();
        // A template is code from the checkpoint: bound its steps and its output.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| "01 Jan 2026".to_string());
        env.add_filter("tojson", py_tojson);
        env.add_template("chat", tpl)
            .map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
        let t = env.get_template("chat").expect("added above");
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            tools => tools,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        let mut out = BoundedWriter::default();
        match t.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(_) if out.overflowed => {
                return Err(Error::Tokenizer(format!(
                    "the chat template's output passed {} MB: it is not a chat template this program can use",
                    TEMPLATE_MAX_OUTPUT >> 20
                )))
            }
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                return Err(Error::Tokenizer(format!(
                    "the chat template ran past {TEMPLATE_FUEL} steps (a loop too long for a chat prompt)"
                )))
            }
            Err(e) => {
                return Err(Error::Tokenizer(format!(
                    "rendering the chat template: {e}"
                )))
            }
        }
        String::from_utf8(out.buf)
            .map_err(|e| Error::Tokenizer(format!("the chat template's output is not UTF-8: {e}")))
    }

    /// Writes `tokenizer.json`, and `tokenizer_config.json` / `generation_config.json` with the
    /// chat template and EOS ids, into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tj = dir.join("tokenizer.json");
        let body = self
            .inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer(format!("serialising {}: {e}", tj.display())))?;
        alp_core::fsio::write_synced(&tj, body.as_bytes())?;
        let mut tc = serde_json::Map::new();
        if let Some(t) = &self.chat_template {
            tc.insert("chat_template".into(), t.clone().into());
        }
        if let Some(t) = &self.eos_token {
            tc.insert("eos_token".into(), t.clone().into());
        }
        if let Some(t) = &self.bos_token {
            tc.insert("bos_token".into(), t.clone().into());
        }
        tc.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        let p = dir.join("tokenizer_config.json");
        alp_core::fsio::write_synced(
            &p,
            serde_json::to_string_pretty(&tc).expect("json").as_bytes(),
        )?;
        let gc = serde_json::json!({ "eos_token_id": self.eos_ids });
        let p = dir.join("generation_config.json");
        alp_core::fsio::write_synced(
            &p,
            serde_json::to_string_pretty(&gc).expect("json").as_bytes(),
        )
    }
}
