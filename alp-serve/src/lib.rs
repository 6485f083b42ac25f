//! `alp-serve`: alp's sampling [`Engine`] behind an HTTP server that speaks the part of
//! OpenAI's completions API that RL clients use against vLLM and SGLang
//! ([`alp_rollout::wire`]), so that rollouts can run in other processes and on other machines
//! ([`alp_rollout::RemoteBackend`] is the client).
//!
//! - `POST /v1/completions`: prompt as token ids (or text), `n`, `max_tokens`, `temperature`,
//!   `top_p`, `top_k`, `min_p`, `seed`, `stop`, `stop_token_ids`; every choice carries its
//!   token ids, the log-prob of each under the distribution it was sampled from, the finish
//!   reason, and in `alp` the kept support per token; `weight_version` says which weights
//!   produced it. Concurrent requests share one continuous batch.
//! - `POST /reload {"path", "version"}` (with `Authorization: Bearer TOKEN`): serve the model
//!   directory `path` from now on. Requests already admitted finish on the old weights;
//!   the call returns once the new ones serve.
//! - `GET /health`, `GET /metrics` (Prometheus text: queue depth, tokens/s, version),
//!   `GET /v1/models`.
//!
//! Safe defaults: [`ServeConfig`] binds to loopback, reload is off without a token, and the
//! body size, `n`, `max_tokens` and the queue are bounded. HTTP is axum over tokio; the engine
//! runs on its own thread.
//!
//! ```
//! use alp_model::{presets, ModelWeights};
//! use alp_serve::{ServeConfig, Server};
//! use candle_core::{DType, Device};
//!
//! let dir = tempfile::tempdir().unwrap();
//! ModelWeights::random(&presets::tiny(), 0, DType::F32, &Device::Cpu).unwrap().save(dir.path()).unwrap();
//! let server = Server::start(ServeConfig { model: Some(dir.path().into()), ..Default::default() }).unwrap();
//! let answer: serde_json::Value = ureq::post(&format!("{}/v1/completions", server.url()))
//!     .send_json(serde_json::json!({"prompt": [1, 2, 3], "max_tokens": 4, "seed": 7, "logprobs": 1}))
//!     .unwrap().into_json().unwrap();
//! assert_eq!(answer["choices"][0]["token_ids"].as_array().unwrap().len(), 4);
//! assert_eq!(answer["weight_version"], 0);
//! server.stop().unwrap();
//! ```
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod engine_loop;
mod http;

use alp_core::{Error, PolicyVersion, Result};
use alp_model::{ModelWeights, Tokenizer};
use alp_rollout::{Engine, EngineConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `alp serve` serves and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Address to listen on (loopback by default; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The model directory served at start (none: answer 503 until the first reload).
    pub model: Option<PathBuf>,
    /// The name reported as `model`.
    pub model_name: String,
    /// Weights dtype: `auto` (the directory's `torch_dtype`), `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The continuous batch's limits (one shard: a server batches across requests).
    pub engine: EngineConfig,
    /// The shared token of `/reload` (none: reload is refused).
    pub reload_token: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Most sequences waiting or running; more is answered 429.
    pub max_queue: usize,
    /// The weight version of `model` at start.
    pub version: PolicyVersion,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            model: None,
            model_name: "alp".into(),
            dtype: "auto".into(),
            device: "cpu".into(),
            engine: EngineConfig::default(),
            reload_token: None,
            max_body_bytes: 1 << 20,
            max_n: 64,
            max_tokens: 4096,
            max_queue: 4096,
            version: 0,
        }
    }
}

impl ServeConfig {
    /// Checks the limits; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.engine.validate()?;
        alp_model::parse_device(&self.device)
            .map_err(|e| Error::config("device", e.to_string()))?;
        if self.dtype != "auto" {
            alp_model::parse_dtype(&self.dtype)
                .map_err(|e| Error::config("dtype", e.to_string()))?;
        }
        for (name, v) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_n", self.max_n),
            ("max_tokens", self.max_tokens),
            ("max_queue", self.max_queue),
        ] {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        if self.reload_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(Error::config(
                "reload_token",
                "is shorter than 16 characters: use a long random token",
            ));
        }
        Ok(())
    }
}

/// Builds an engine over the model directory `dir` (and its tokenizer, if it has one).
pub fn load_engine(dir: &Path, cfg: &ServeConfig) -> Result<Engine> {
    let (model, tok) = load_base(dir, cfg)?;
    engine_over(model, tok, cfg)
}

/// The dtype `cfg` serves `dir` in (`auto`: the checkpoint's `torch_dtype`).
fn serve_dtype(dir: &Path, cfg: &ServeConfig) -> Result<candle_core::DType> {
    if cfg.dtype != "auto" {
        return alp_model::parse_dtype(&cfg.dtype);
    }
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| Error::file_op("read", dir.join("config.json"), e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    Ok(match v.get("torch_dtype").and_then(|d| d.as_str()) {
        Some("bfloat16") => candle_core::DType::BF16,
        Some("float16") => candle_core::DType::F16,
        _ => candle_core::DType::F32,
    })
}

/// The model of the directory `dir` and its tokenizer (checked to fit), as `cfg` serves it.
fn load_base(dir: &Path, cfg: &ServeConfig) -> Result<(alp_model::Model, Option<Arc<Tokenizer>>)> {
    let device = alp_model::parse_device(&cfg.device)?;
    let weights = ModelWeights::load(dir, serve_dtype(dir, cfg)?, &device)?;
    let tok = match Tokenizer::load(dir)? {
        Some(t) => {
            t.check_fits(&weights.config)?;
            Some(Arc::new(t))
        }
        None => None,
    };
    Ok((weights.build()?, tok))
}

fn engine_over(
    model: alp_model::Model,
    tok: Option<Arc<Tokenizer>>,
    cfg: &ServeConfig,
) -> Result<Engine> {
    let engine = Engine::new(
        Arc::new(model),
        EngineConfig {
            shards: 1,
            ..cfg.engine.clone()
        },
    )?;
    Ok(match tok {
        Some(t) => engine.with_tokenizer(t),
        None => engine,
    })
}

/// The base model of the LoRA adapters a server loads, kept between reloads: a reload of
/// another adapter over the same base directory reuses it (its weights and the packed copies
/// its decode kernels made) and reads only the adapter.
#[derive(Default)]
pub struct BaseCache {
    entry: Option<(std::path::PathBuf, alp_model::Model, Option<Arc<Tokenizer>>)>,
}

/// Builds an engine over the base model directory `base` with the PEFT adapter directory
/// `adapter` applied unmerged, reusing `cache`'s base when it is the same directory.
pub fn load_engine_with_adapter(
    base: &Path,
    adapter: &Path,
    cfg: &ServeConfig,
    cache: &mut BaseCache,
) -> Result<Engine> {
    let canon = std::fs::canonicalize(base).map_err(|e| Error::io(base, e))?;
    let (model, tok) = match &cache.entry {
        Some((p, m, t)) if *p == canon => (m.clone(), t.clone()),
        _ => {
            let (m, t) = load_base(&canon, cfg)?;
            cache.entry = Some((canon, m.clone(), t.clone()));
            (m, t)
        }
    };
    let a = alp_model::Adapter::load_peft(adapter, model.config(), model.dtype(), model.device())?;
    let mut model = model;
    model.attach_adapter(&a)?;
    engine_over(model, tok, cfg)
}

/// A running server: its HTTP runtime and engine thread.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Loads the model (if any), binds `cfg.listen` and starts serving; returns once the
    /// socket listens.
    pub fn start(cfg: ServeConfig) -> Result<Server> {
        cfg.validate()?;
        let initial = match &cfg.model {
            Some(dir) => Some((load_engine(dir, &cfg)?, cfg.version)),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("alp-serve-http")
            .enable_all()
            .build()
            .map_err(|e| Error::Msg(format!("cannot start the HTTP runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(cfg.listen))
            .map_err(|e| Error::Msg(format!("cannot listen on {}: {e}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Msg(format!("cannot read the bound address: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("alp-serve".into())
            .spawn(move || {
                let (engine, app) = http::App::new(cfg, initial);
                let router = http::router(app.clone());
                let result = runtime.block_on(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await
                        .map_err(|e| Error::Msg(format!("the server stopped: {e}")))
                });
                app.close();
                engine.join();
                result
            })
            .map_err(|e| Error::Msg(format!("cannot start the server thread: {e}")))?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the process ends (or the server fails).
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Stops accepting, lets open requests finish, and stops.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    /// Asks the HTTP side to stop, then waits for the thread.
    fn shut_down(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join()
    }

    /// Waits for the server thread (if it still runs) and returns how it ended.
    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Msg("the server thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}
