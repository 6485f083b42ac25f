//! A [`RolloutBackend`] that samples on inference servers over HTTP: `alp serve`, or the
//! SGLang / vLLM servers a user already runs.
//!
//! Each request of a batch goes to the least loaded live server (several in flight, so that
//! a server's continuous batching sees them together). A server that refuses the connection,
//! answers 5xx or 429, or does not answer within the deadline is marked down and its requests
//! go to another; the batch fails only when no server is left. An answer that cannot be
//! trained on (bad JSON, missing log-probs, a token outside the vocabulary, a weight version
//! older than the staleness bound allows) fails the batch with an error naming the server:
//! it is never trained on. A 4xx other than 429 (the request itself was refused) fails too.
//!
//! Publishing writes the weights (and the tokenizer) as a model directory under
//! `publish_dir`, which every server must be able to read at the same path, and asks each
//! server to load it; a server that was down and reloads is live again.
//!
//! **Talking to vLLM and SGLang** (this adapter is the one place that knows them; it is tested
//! against `alp serve` only):
//! - completions: every server gets OpenAI's `/v1/completions` with the prompt as token ids,
//!   `logprobs = 1`, `return_token_ids = true` (vLLM ≥ 0.10.2) and alp's `alp` extension
//!   (ignored by the others). The tokens are read from `choices[].token_ids`, else from
//!   `logprobs.tokens` in vLLM's `token_id:N` form (`--return-tokens-as-token-ids`); the
//!   log-probs from `logprobs.token_logprobs`. vLLM returns log-probs of the raw model
//!   distribution unless started with `--logprobs-mode processed_logprobs` (needed for an
//!   exact ratio with temperature ≠ 1 or truncation); neither returns the kept support, so
//!   truncated sampling is scored over the full vocabulary (biased: prefer top-k = top-p = off).
//! - weight version: `weight_version` at the top level (alp; SGLang's field name). Where a
//!   server does not send one, the client takes the version it last published to that
//!   server as the answer's (alp requires it).
//! - publish: alp: `POST /reload {"path", "version"}` with `Authorization: Bearer TOKEN`;
//!   SGLang: `POST /update_weights_from_disk {"model_path", "weight_version"}` (its
//!   `--api-key` as the bearer token if set). vLLM's stock OpenAI server has no endpoint that
//!   loads weights from a directory (RL frameworks wrap it or use its NCCL/IPC weight
//!   transfer), so publishing full weights to `kind = "vllm"` is refused with that
//!   explanation: use vLLM for evaluation with fixed weights, behind a wrapper that speaks
//!   SGLang's endpoint (`kind = "sglang"`), or with LoRA.
//! - LoRA (weights with an adapter): only the adapter is published, as PEFT's directory
//!   `adapter-vN`. alp: `POST /reload {"path": base, "adapter": dir, "version"}`, the base
//!   written once to `base/` and kept by the server between reloads. SGLang:
//!   `POST /load_lora_adapter {"lora_name": "alp-vN", "lora_path"}`, requests name it in
//!   `lora_path`; vLLM: `POST /v1/load_lora_adapter` (the same body; the server needs
//!   `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), requests name it as the `model`; each server
//!   must already serve the run's base with LoRA enabled. The previous adapter is then
//!   unloaded (`/unload_lora_adapter`, `/v1/unload_lora_adapter`). The SGLang and vLLM
//!   adapter paths are written from their documentation and untested here.

use crate::backend::{Completion, Request};
use crate::backend::{Generation, RolloutBackend};
use crate::wire::{CompletionRequest, CompletionResponse, ReloadRequest};
use alp_core::{Error, FinishReason, PolicyVersion, Result, TokenId};
use alp_model::{ModelWeights, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which server software answers (what its weight-update endpoint is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// `alp serve`.
    #[default]
    Alp,
    /// SGLang's server (`/update_weights_from_disk`).
    Sglang,
    /// vLLM's OpenAI server (sampling only: no from-disk reload).
    Vllm,
}

/// Where and how a [`RemoteBackend`] reaches its servers.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// Base URLs, e.g. `http://127.0.0.1:8000`.
    pub servers: Vec<String>,
    /// The servers' software.
    pub kind: ServerKind,
    /// Deadline of one completion request, seconds; past it the server counts as down.
    pub timeout_s: f64,
    /// Deadline of one weight reload, seconds.
    pub reload_timeout_s: f64,
    /// Requests in flight at once over all servers.
    pub max_in_flight: usize,
    /// Versions an answer may lag the last published one (the trainer's `rl.max_staleness`).
    pub max_staleness: u64,
    /// Where published weights are written (a directory every server reads at the same path).
    pub publish_dir: PathBuf,
    /// The shared token of the reload endpoint.
    pub reload_token: Option<String>,
}

impl RemoteConfig {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Err(Error::config(
                "servers",
                "is empty: list the rollout servers' base URLs, e.g. [\"http://127.0.0.1:8000\"]",
            ));
        }
        for s in &self.servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(Error::config(
                    "servers",
                    format!("`{s}` is not a base URL (http://HOST:PORT)"),
                ));
            }
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(Error::config(
                "timeout_s",
                "must be a positive number of seconds",
            ));
        }
        if !(self.reload_timeout_s > 0.0 && self.reload_timeout_s.is_finite()) {
            return Err(Error::config(
                "reload_timeout_s",
                "must be a positive number of seconds",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(Error::config("max_in_flight", "must be at least 1"));
        }
        Ok(())
    }
}

/// One server and what the client knows of it.
struct Server {
    url: String,
    in_flight: AtomicUsize,
    down: AtomicBool,
    /// The version last published to it (taken for answers that carry none).
    version: Mutex<PolicyVersion>,
}

/// Why one request failed.
enum Fault {
    /// The server is gone or overloaded: try another.
    Down(String),
    /// The answer or the request is wrong: fail the batch.
    Fatal(Error),
}

/// Rollouts sampled by inference servers over HTTP ([module docs](self)).
pub struct RemoteBackend {
    cfg: RemoteConfig,
    servers: Vec<Server>,
    agent: ureq::Agent,
    version: PolicyVersion,
    vocab_size: Option<usize>,
    tokenizer: Option<Arc<Tokenizer>>,
    published: Option<PathBuf>,
    /// A LoRA run's base as written for `alp serve` (once): the base embedding's tensor id
    /// and the directory.
    base: Option<(candle_core::TensorId, PathBuf)>,
    /// The adapters published and still loaded (SGLang and vLLM) or on disk: (name, version,
    /// directory), oldest first; requests name the newest.
    adapters: VecDeque<(String, PolicyVersion, PathBuf)>,
}

/// What a publish asks a server to load.
enum Load<'a> {
    /// A full model directory.
    Model(&'a std::path::Path),
    /// A PEFT adapter directory named `name` over the base directory `base` (alp serve; the
    /// others serve the base they were started with).
    Adapter {
        base: Option<&'a std::path::Path>,
        dir: &'a std::path::Path,
        name: &'a str,
    },
}

impl RemoteBackend {
    /// A backend over `cfg.servers` (nothing is contacted until the first call).
    pub fn new(cfg: RemoteConfig) -> Result<Self> {
        cfg.validate()?;
        let servers = cfg
            .servers
            .iter()
            .map(|u| Server {
                url: u.trim_end_matches('/').to_string(),
                in_flight: AtomicUsize::new(0),
                down: AtomicBool::new(false),
                version: Mutex::new(0),
            })
            .collect();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs_f64(cfg.timeout_s.min(10.0)))
            .max_idle_connections_per_host(cfg.max_in_flight)
            .build();
        Ok(RemoteBackend {
            cfg,
            servers,
            agent,
            version: 0,
            vocab_size: None,
            tokenizer: None,
            published: None,
            base: None,
            adapters: VecDeque::new(),
        })
    }

    /// Publishes `tokenizer` beside the weights (servers use it for stop strings and their
    /// end-of-sequence ids).
    pub fn with_tokenizer(mut self, tokenizer: Arc<Tokenizer>) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Answers must use token ids below `vocab_size` (known from the first publish
    /// otherwise).
    pub fn with_vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// Says the servers already serve version `version` (when they were started on the
    /// trainer's weights instead of receiving them through [`RolloutBackend::publish`]).
    pub fn with_version(mut self, version: PolicyVersion) -> Self {
        self.version = version;
        for s in &self.servers {
            *s.version.lock().expect("version lock") = version;
        }
        self
    }

    /// The servers' base URLs and whether each is live.
    pub fn servers(&self) -> Vec<(String, bool)> {
        self.servers
            .iter()
            .map(|s| (s.url.clone(), !s.down.load(Ordering::SeqCst)))
            .collect()
    }

    /// The least loaded live server.
    fn pick(&self) -> Option<&Server> {
        self.servers
            .iter()
            .filter(|s| !s.down.load(Ordering::SeqCst))
            .min_by_key(|s| s.in_flight.load(Ordering::SeqCst))
    }

    fn send(
        &self,
        server: &Server,
        req: &Request,
    ) -> std::result::Result<(Completion, PolicyVersion), Fault> {
        let url = format!("{}/v1/completions", server.url);
        let mut body = CompletionRequest::from_engine(req);
        // SGLang and vLLM serve several adapters: the request names the newest (vLLM as the
        // model, SGLang as `lora_path`), and its answer comes from that version.
        let named = self
            .adapters
            .back()
            .filter(|_| self.cfg.kind != ServerKind::Alp);
        if let Some((name, _, _)) = named {
            match self.cfg.kind {
                ServerKind::Vllm => body.model = Some(name.clone()),
                _ => body.lora_path = Some(name.clone()),
            }
        }
        let resp = self
            .agent
            .post(&url)
            .timeout(Duration::from_secs_f64(self.cfg.timeout_s))
            .send_json(&body);
        let text = match resp {
            Ok(r) => r
                .into_string()
                .map_err(|e| Fault::Down(format!("reading the answer: {e}")))?,
            Err(ureq::Error::Status(code, r)) => {
                let msg = r.into_string().unwrap_or_default();
                return Err(if code >= 500 || code == 429 {
                    Fault::Down(format!("HTTP {code}: {}", msg.trim()))
                } else {
                    Fault::Fatal(Error::remote(
                        &server.url,
                        format!("refused a request (HTTP {code}): {}", msg.trim()),
                    ))
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(Fault::Down(t.to_string())),
        };
        let known = match named {
            Some((_, v, _)) => *v,
            None => *server.version.lock().expect("version lock"),
        };
        self.parse(&server.url, &text, req, known)
            .map_err(Fault::Fatal)
    }

    /// Reads one answer; anything that cannot be trained on is an error naming `server`.
    fn parse(
        &self,
        server: &str,
        text: &str,
        req: &Request,
        known: PolicyVersion,
    ) -> Result<(Completion, PolicyVersion)> {
        let bad = |m: String| Error::remote(server, format!("malformed answer: {m}"));
        let resp: CompletionResponse = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a completions response ({e})")))?;
        let [choice] = <[_; 1]>::try_from(resp.choices)
            .map_err(|c: Vec<_>| bad(format!("{} choices for a request of n = 1", c.len())))?;
        let lp = choice
            .logprobs
            .ok_or_else(|| bad("no log-probs (`choices[0].logprobs`)".into()))?;
        let tokens: Vec<TokenId> = match choice.token_ids {
            Some(t) => t,
            None => lp
                .tokens
                .iter()
                .map(|s| {
                    s.strip_prefix("token_id:")
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| {
                            bad(format!(
                                "no token ids, and the token `{s}` is not `token_id:N`"
                            ))
                        })
                })
                .collect::<Result<_>>()?,
        };
        let logprobs = lp.token_logprobs;
        if tokens.is_empty() {
            return Err(bad("no generated token".into()));
        }
        if tokens.len() != logprobs.len() {
            return Err(bad(format!(
                "{} tokens but {} log-probs",
                tokens.len(),
                logprobs.len()
            )));
        }
        if tokens.len() > req.params.max_new_tokens {
            return Err(bad(format!(
                "{} tokens, more than max_tokens = {}",
                tokens.len(),
                req.params.max_new_tokens
            )));
        }
        if let Some(v) = self.vocab_size {
            if let Some(t) = tokens.iter().find(|&&t| t as usize >= v) {
                return Err(bad(format!(
                    "token id {t} is outside the vocabulary of {v}"
                )));
            }
        }
        if let Some((i, l)) = logprobs
            .iter()
            .enumerate()
            .find(|(_, l)| !l.is_finite() || **l > 1e-4)
        {
            return Err(bad(format!(
                "log-prob {l} of token {i} is not a log-probability"
            )));
        }
        let version = match (resp.weight_version, self.cfg.kind) {
            (Some(v), _) => v,
            (None, ServerKind::Alp) => return Err(bad("no `weight_version`".into())),
            (None, _) => known,
        };
        if version > self.version {
            return Err(bad(format!(
                "weight version {version} is newer than the last one published ({}): another trainer publishes to this server",
                self.version
            )));
        }
        if version.saturating_add(self.cfg.max_staleness) < self.version {
            return Err(Error::remote(
                server,
                format!(
                    "answered with weight version {version}, older than the staleness bound ({}) allows at version {}: it did not take the last publish",
                    self.cfg.max_staleness, self.version
                ),
            ));
        }
        let (finish_reason, supports) = match choice.alp {
            Some(a) => (a.finish_reason, a.supports),
            None => {
                let last = *tokens.last().expect("non-empty");
                let r = match choice.finish_reason.as_deref() {
                    Some("length") => FinishReason::MaxTokens,
                    _ if req.params.stop_tokens.contains(&last) => FinishReason::StopToken,
                    _ if !req.params.stop_strings.is_empty() => FinishReason::StopString,
                    _ => FinishReason::Eos,
                };
                (r, None)
            }
        };
        if let Some(s) = &supports {
            if s.len() != tokens.len() {
                return Err(bad(format!(
                    "supports of {} tokens for {} tokens",
                    s.len(),
                    tokens.len()
                )));
            }
            if let Some(v) = self.vocab_size {
                if s.ids.iter().any(|&t| t as usize >= v) {
                    return Err(bad(
                        "a support holds a token id outside the vocabulary".into()
                    ));
                }
            }
        }
        Ok((
            Completion {
                tokens,
                logprobs,
                finish_reason,
                supports,
            },
            version,
        ))
    }

    /// Asks `server` to load `what` as `version`.
    fn reload(&self, server: &Server, what: &Load, version: PolicyVersion) -> Result<()> {
        let (endpoint, body) = match (what, self.cfg.kind) {
            (Load::Model(dir), ServerKind::Alp) => (
                "/reload",
                serde_json::to_value(ReloadRequest {
                    path: dir.display().to_string(),
                    version: Some(version),
                    adapter: None,
                })
                .map_err(|e| Error::Msg(e.to_string()))?,
            ),
            (Load::Model(dir), ServerKind::Sglang) => (
                "/update_weights_from_disk",
                serde_json::json!({ "model_path": dir.display().to_string(), "weight_version": version.to_string() }),
            ),
            (Load::Model(_), ServerKind::Vllm) => {
                return Err(Error::remote(
                    &server.url,
                    "vLLM's OpenAI server has no endpoint that loads full weights from a directory: use alp serve or SGLang for full-weight training rollouts, LoRA (model.lora.r > 0: vLLM's /v1/load_lora_adapter), or a wrapper that speaks SGLang's /update_weights_from_disk (kind = \"sglang\")",
                ))
            }
            (Load::Adapter { base, dir, .. }, ServerKind::Alp) => (
                "/reload",
                serde_json::to_value(ReloadRequest {
                    path: base
                        .ok_or_else(|| Error::Msg("no base directory for alp serve".into()))?
                        .display()
                        .to_string(),
                    version: Some(version),
                    adapter: Some(dir.display().to_string()),
                })
                .map_err(|e| Error::Msg(e.to_string()))?,
            ),
            (Load::Adapter { dir, name, .. }, ServerKind::Sglang) => (
                "/load_lora_adapter",
                serde_json::json!({ "lora_name": name, "lora_path": dir.display().to_string() }),
            ),
            (Load::Adapter { dir, name, .. }, ServerKind::Vllm) => (
                "/v1/load_lora_adapter",
                serde_json::json!({ "lora_name": name, "lora_path": dir.display().to_string() }),
            ),
        };
        let dir = match what {
            Load::Model(d) => d,
            Load::Adapter { dir, .. } => dir,
        };
        let mut call = self
            .agent
            .post(&format!("{}{endpoint}", server.url))
            .timeout(Duration::from_secs_f64(self.cfg.reload_timeout_s));
        if let Some(t) = &self.cfg.reload_token {
            call = call.set("Authorization", &format!("Bearer {t}"));
        }
        match call.send_json(body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, r)) => Err(Error::remote(
                &server.url,
                format!(
                    "refused to load {} (HTTP {code}): {}",
                    dir.display(),
                    r.into_string().unwrap_or_default().trim()
                ),
            )),
            Err(ureq::Error::Transport(t)) => Err(Error::remote(&server.url, t.to_string())),
        }
    }
}

impl RemoteBackend {
    /// Publishes a LoRA version: the adapter only (PEFT's directory, `adapter-vN`), and for
    /// `alp serve` the base once (`base/`), which it keeps between reloads. SGLang and vLLM
    /// load the adapter by name (`alp-vN`) over the base they were started with (which must
    /// be the run's base: `--enable-lora`, a maximum rank of at least `r`; vLLM with
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`); the previous adapter is unloaded after.
    fn publish_adapter(
        &mut self,
        version: PolicyVersion,
        weights: &ModelWeights,
        adapter: &alp_model::Adapter,
    ) -> Result<()> {
        let key = weights.base_id()?;
        if self.cfg.kind == ServerKind::Alp && self.base.as_ref().map(|b| b.0) != Some(key) {
            let dir = self.cfg.publish_dir.join("base");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::file_op("remove", &dir, e))?;
            }
            ModelWeights {
                adapter: None,
                ..weights.clone()
            }
            .save(&dir)?;
            if let Some(t) = &self.tokenizer {
                t.save(&dir)?;
            }
            let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
            self.base = Some((key, dir));
        }
        let name = format!("alp-v{version}");
        let dir = self.cfg.publish_dir.join(format!("adapter-v{version:08}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::file_op("remove", &dir, e))?;
        }
        adapter.save_peft(&dir, "alp published base")?;
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
        self.version = version;
        self.vocab_size = self.vocab_size.or(Some(weights.config.vocab_size));
        let load = Load::Adapter {
            base: self.base.as_ref().map(|b| b.1.as_path()),
            dir: &dir,
            name: &name,
        };
        let errors = self.reload_all(&load, version);
        if errors.len() == self.servers.len() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Msg(format!(
                "no rollout server took the adapter of weight version {version}: {}",
                errors.join("; ")
            )));
        }
        // Older adapters are no longer asked for: unloaded where servers keep several, and
        // their directories removed.
        let old: Vec<_> = self.adapters.drain(..).collect();
        self.adapters.push_back((name, version, dir));
        for (old_name, _, old_dir) in old {
            if self.cfg.kind != ServerKind::Alp {
                for s in self
                    .servers
                    .iter()
                    .filter(|s| !s.down.load(Ordering::SeqCst))
                {
                    self.unload(s, &old_name);
                }
            }
            let _ = std::fs::remove_dir_all(old_dir);
        }
        Ok(())
    }

    /// Asks every server to load `what` as `version`: a server that takes it is live at that
    /// version, one that does not is marked down. Returns the refusals.
    fn reload_all(&self, what: &Load, version: PolicyVersion) -> Vec<String> {
        let mut errors = Vec::new();
        for s in &self.servers {
            match self.reload(s, what, version) {
                Ok(()) => {
                    *s.version.lock().expect("version lock") = version;
                    s.down.store(false, Ordering::SeqCst);
                }
                Err(e) => {
                    s.down.store(true, Ordering::SeqCst);
                    errors.push(e.to_string());
                }
            }
        }
        errors
    }

    /// Asks SGLang or vLLM to drop the adapter `name` (best effort: a server that keeps it
    /// only holds memory; requests never name it again).
    fn unload(&self, server: &Server, name: &str) {
        let endpoint = match self.cfg.kind {
            ServerKind::Vllm => "/v1/unload_lora_adapter",
            _ => "/unload_lora_adapter",
        };
        let mut call = self
            .agent
            .post(&format!("{}{endpoint}", server.url))
            .timeout(Duration::from_secs_f64(self.cfg.reload_timeout_s));
        if let Some(t) = &self.cfg.reload_token {
            call = call.set("Authorization", &format!("Bearer {t}"));
        }
        let _ = call.send_json(serde_json::json!({ "lora_name": name }));
    }
}

impl RolloutBackend for RemoteBackend {
    fn generate(&self, requests: &[Request]) -> Result<Generation> {
        let queue: Mutex<VecDeque<usize>> = Mutex::new((0..requests.len()).collect());
        let results: Mutex<Vec<Option<(Completion, PolicyVersion)>>> =
            Mutex::new(vec![None; requests.len()]);
        let fatal: Mutex<Option<Error>> = Mutex::new(None);
        let downs: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let workers = self.cfg.max_in_flight.min(requests.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if fatal.lock().expect("lock").is_some() {
                        return;
                    }
                    let Some(i) = queue.lock().expect("lock").pop_front() else {
                        return;
                    };
                    let Some(server) = self.pick() else {
                        let why = downs.lock().expect("lock").join("; ");
                        *fatal.lock().expect("lock") = Some(Error::Msg(format!(
                            "no rollout server is left ({}): {why}",
                            self.cfg.servers.join(", ")
                        )));
                        return;
                    };
                    server.in_flight.fetch_add(1, Ordering::SeqCst);
                    let r = self.send(server, &requests[i]);
                    server.in_flight.fetch_sub(1, Ordering::SeqCst);
                    match r {
                        Ok(c) => results.lock().expect("lock")[i] = Some(c),
                        Err(Fault::Down(why)) => {
                            server.down.store(true, Ordering::SeqCst);
                            downs
                                .lock()
                                .expect("lock")
                                .push(format!("{} is down: {why}", server.url));
                            queue.lock().expect("lock").push_back(i);
                        }
                        Err(Fault::Fatal(e)) => {
                            let mut f = fatal.lock().expect("lock");
                            if f.is_none() {
                                *f = Some(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = fatal.into_inner().expect("lock") {
            return Err(e);
        }
        let mut version = self.version;
        let completions = results
            .into_inner()
            .expect("lock")
            .into_iter()
            .map(|r| {
                let (c, v) =
                    r.ok_or_else(|| Error::Msg("a rollout request got no answer".into()))?;
                version = version.min(v);
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Generation {
            completions,
            policy_version: version,
        })
    }

    fn policy_version(&self) -> PolicyVersion {
        self.version
    }

    fn publish(&mut self, version: PolicyVersion, weights: &ModelWeights) -> Result<()> {
        if let Some(a) = &weights.adapter {
            return self.publish_adapter(version, weights, a);
        }
        self.base = None;
        let dir = self.cfg.publish_dir.join(format!("v{version:08}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::file_op("remove", &dir, e))?;
        }
        weights.save(&dir)?;
        if let Some(t) = &self.tokenizer {
            t.save(&dir)?;
        }
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
        // The version is raised first: answers carrying the old one are then judged by the
        // staleness bound, as a trainer would.
        self.version = version;
        self.vocab_size = self.vocab_size.or(Some(weights.config.vocab_size));
        let errors = self.reload_all(&Load::Model(&dir), version);
        if errors.len() == self.servers.len() {
            return Err(Error::Msg(format!(
                "no rollout server took weight version {version}: {}",
                errors.join("; ")
            )));
        }
        // Older published directories are no longer read by any server.
        if let Some(old) = self.published.replace(dir) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }
}
