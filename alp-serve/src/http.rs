//! The HTTP side: routes, limits, authentication of `/reload`.

use crate::engine_loop::{Answer, EngineThread, Msg, Shared};
use crate::{load_engine, ServeConfig};
use alp_core::{Error, PolicyVersion};
use alp_model::Tokenizer;
use alp_rollout::wire::{
    Choice, CompletionRequest, CompletionResponse, ErrorBody, ErrorDetail, Prompt, ReloadRequest,
    ReloadResponse, Usage,
};
use alp_rollout::{Engine, Request};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The server's state, shared by the handlers.
pub struct App {
    cfg: ServeConfig,
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Msg>>>,
    /// The tokenizer of the weights serving now (text prompts and decoded text).
    tokenizer: Mutex<Option<Arc<Tokenizer>>>,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// The base of the LoRA adapters reloaded so far (kept between reloads).
    base_cache: Arc<Mutex<crate::BaseCache>>,
    next_id: AtomicU64,
}

impl App {
    /// The state and the engine thread over `initial`.
    pub fn new(
        cfg: ServeConfig,
        initial: Option<(Engine, PolicyVersion)>,
    ) -> (EngineThread, Arc<App>) {
        let shared = Arc::new(Shared::default());
        let tokenizer = initial.as_ref().and_then(|(e, _)| e.tokenizer().cloned());
        let (thread, tx) = EngineThread::spawn(initial, shared.clone());
        let app = Arc::new(App {
            cfg,
            shared,
            tx: Mutex::new(Some(tx)),
            tokenizer: Mutex::new(tokenizer),
            reload_lock: tokio::sync::Mutex::new(()),
            base_cache: Default::default(),
            next_id: AtomicU64::new(0),
        });
        (thread, app)
    }

    /// Drops the engine's channel, so that its thread ends once its batch is done.
    pub fn close(&self) {
        self.tx.lock().expect("tx lock").take();
    }

    fn send(&self, msg: Msg) -> Result<(), Response> {
        let tx = self.tx.lock().expect("tx lock");
        match tx.as_ref().map(|t| t.send(msg)) {
            Some(Ok(())) => Ok(()),
            _ => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )),
        }
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.cfg.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/reload", post(reload))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
            },
        }),
    )
        .into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match complete(&app, &body).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

async fn complete(app: &App, body: &[u8]) -> Result<CompletionResponse, Response> {
    let req: CompletionRequest = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not a completions request: {e}")))?;
    if !app.shared.has_weights.load(Ordering::SeqCst) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no weights are loaded yet: POST /reload a model directory",
        ));
    }
    let cfg = &app.cfg;
    if req.n == 0 || req.n > cfg.max_n {
        return Err(invalid(format!(
            "n = {} (1 to {} on this server)",
            req.n, cfg.max_n
        )));
    }
    if req.max_tokens == 0 || req.max_tokens > cfg.max_tokens {
        return Err(invalid(format!(
            "max_tokens = {} (1 to {} on this server)",
            req.max_tokens, cfg.max_tokens
        )));
    }
    let tokenizer = app.tokenizer.lock().expect("tokenizer lock").clone();
    let prompt = match &req.prompt {
        Prompt::Tokens(t) => t.clone(),
        Prompt::Text(s) => match &tokenizer {
            Some(t) => t.encode(s, false).map_err(|e| invalid(e.to_string()))?,
            None => return Err(invalid(
                "a text prompt needs a tokenizer: this model directory has none, send token ids",
            )),
        },
    };
    let id = app.next_id.fetch_add(1, Ordering::SeqCst);
    // Without a seed, a different one for every request (reproducible only with one).
    let default_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ id.rotate_left(32);
    let requests = (0..req.n)
        .map(|i| {
            Ok(Request {
                prompt: prompt.clone(),
                params: req.params(i, default_seed).map_err(invalid)?,
            })
        })
        .collect::<Result<Vec<_>, Response>>()?;
    let queued = app.shared.queued.fetch_add(req.n, Ordering::SeqCst);
    if queued + req.n > cfg.max_queue {
        app.shared.queued.fetch_sub(req.n, Ordering::SeqCst);
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            format!(
                "{queued} sequences are queued (the bound is {}): retry later or on another server",
                cfg.max_queue
            ),
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if let Err(r) = app.send(Msg::Generate { requests, reply }) {
        app.shared.queued.fetch_sub(req.n, Ordering::SeqCst);
        return Err(r);
    }
    let Answer { results, version } = answer.await.map_err(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the engine stopped",
        )
    })?;
    let mut choices = Vec::with_capacity(results.len());
    let mut completion_tokens = 0;
    for (i, r) in results.into_iter().enumerate() {
        let c = r.map_err(|e| match e {
            Error::InvalidInput(_) | Error::TokenOutOfRange { .. } | Error::Config { .. } => {
                invalid(e.to_string())
            }
            e => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            ),
        })?;
        completion_tokens += c.tokens.len();
        let text = tokenizer
            .as_ref()
            .and_then(|t| t.decode(&c.tokens, false).ok())
            .unwrap_or_default();
        choices.push(Choice::from_completion(i, c, text));
    }
    app.shared.requests.fetch_add(1, Ordering::Relaxed);
    Ok(CompletionResponse {
        id: format!("cmpl-{id}"),
        object: "text_completion".into(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: cfg.model_name.clone(),
        choices,
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens,
            total_tokens: prompt.len() + completion_tokens,
        },
        weight_version: Some(version),
    })
}

/// Compares in time independent of where the strings first differ.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

async fn reload(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = &app.cfg.reload_token else {
        return error(
            StatusCode::FORBIDDEN,
            "unauthorized",
            "reload is disabled: start the server with a reload token (ALP_RELOAD_TOKEN)",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same_token(g, token)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "reload needs `Authorization: Bearer TOKEN` with the server's reload token",
        );
    }
    let req: ReloadRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("the body is not a reload request: {e}")),
    };
    let _one = app.reload_lock.lock().await;
    let t0 = std::time::Instant::now();
    let dir = PathBuf::from(&req.path);
    let cfg = app.cfg.clone();
    let adapter = req.adapter.clone().map(PathBuf::from);
    let cache = app.base_cache.clone();
    let loaded = tokio::task::spawn_blocking(move || match adapter {
        Some(a) => {
            let mut c = cache.lock().expect("base cache lock");
            crate::load_engine_with_adapter(&dir, &a, &cfg, &mut c)
        }
        None => load_engine(&dir, &cfg),
    })
    .await;
    let engine = match loaded {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            let what = match &req.adapter {
                Some(a) => format!("the adapter {a} over {}", req.path),
                None => req.path.clone(),
            };
            return invalid(format!("cannot load {what}: {e}"));
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            )
        }
    };
    let load_seconds = t0.elapsed().as_secs_f64();
    let version = req
        .version
        .unwrap_or_else(|| app.shared.version.load(Ordering::SeqCst) + 1);
    let (ack, done) = tokio::sync::oneshot::channel();
    let tokenizer = engine.tokenizer().cloned();
    if let Err(r) = app.send(Msg::Swap {
        engine: Box::new(engine),
        version,
        ack,
    }) {
        return r;
    }
    if done.await.is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the engine stopped",
        );
    }
    *app.tokenizer.lock().expect("tokenizer lock") = tokenizer;
    Json(ReloadResponse {
        weight_version: version,
        load_seconds,
    })
    .into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let v = app.shared.version.load(Ordering::SeqCst);
    if app.shared.has_weights.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ok", "weight_version": v, "model": app.cfg.model_name}))
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "no weights loaded"})),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let s = &app.shared;
    let text = format!(
        "# HELP alp_queue_depth Sequences waiting or running.\n# TYPE alp_queue_depth gauge\nalp_queue_depth {}\n\
         # HELP alp_tokens_per_second Tokens generated per second over the last 10 s.\n# TYPE alp_tokens_per_second gauge\nalp_tokens_per_second {:.3}\n\
         # HELP alp_generated_tokens_total Tokens generated.\n# TYPE alp_generated_tokens_total counter\nalp_generated_tokens_total {}\n\
         # HELP alp_requests_total Completion requests answered.\n# TYPE alp_requests_total counter\nalp_requests_total {}\n\
         # HELP alp_weight_version The weight version serving now.\n# TYPE alp_weight_version gauge\nalp_weight_version {}\n",
        s.queued.load(Ordering::SeqCst),
        s.tokens_per_second(),
        s.tokens.load(Ordering::Relaxed),
        s.requests.load(Ordering::Relaxed),
        s.version.load(Ordering::SeqCst),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    Json(serde_json::json!({
        "object": "list",
        "data": [{"id": app.cfg.model_name, "object": "model", "owned_by": "alp"}]
    }))
    .into_response()
}
