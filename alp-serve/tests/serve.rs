//! `alp serve` and the remote rollout backend, against real servers on loopback: the same
//! answers as the in-process engine, weight reloads with versions, the limits, and servers
//! that die, hang or lie.

use alp_core::PolicyVersion;
use alp_model::{presets, ModelWeights};
use alp_rollout::{
    Completion, Engine, EngineConfig, RemoteBackend, RemoteConfig, Request, RolloutBackend,
    SamplingParams, ServerKind,
};
use alp_serve::{ServeConfig, Server};
use candle_core::{DType, Device};
use std::path::Path;

const TOKEN: &str = "a-long-random-reload-token";

fn weights(seed: u64) -> ModelWeights {
    ModelWeights::random(&presets::tiny(), seed, DType::F32, &Device::Cpu).unwrap()
}

fn model_dir(seed: u64) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    weights(seed).save(d.path()).unwrap();
    d
}

fn start(dir: &Path, token: Option<&str>) -> Server {
    Server::start(ServeConfig {
        model: Some(dir.into()),
        reload_token: token.map(String::from),
        ..Default::default()
    })
    .unwrap()
}

fn remote(servers: Vec<String>, publish: &Path) -> RemoteConfig {
    RemoteConfig {
        servers,
        kind: ServerKind::Alp,
        timeout_s: 30.0,
        reload_timeout_s: 30.0,
        max_in_flight: 8,
        max_staleness: 0,
        publish_dir: publish.into(),
        reload_token: Some(TOKEN.into()),
    }
}

/// Requests over the sampling settings the trainer uses: plain, top-p, top-k, min-p, a low
/// temperature, greedy, a stop token.
fn requests() -> Vec<Request> {
    let mk = |seed: u64, f: &dyn Fn(&mut SamplingParams)| {
        let mut p = SamplingParams {
            max_new_tokens: 12,
            seed,
            ..Default::default()
        };
        f(&mut p);
        Request {
            prompt: vec![1, 2 + seed as u32 % 7, 3, 4],
            params: p,
        }
    };
    vec![
        mk(1, &|_| {}),
        mk(2, &|p| p.top_p = 0.8),
        mk(3, &|p| p.top_k = 5),
        mk(4, &|p| {
            p.top_k = 20;
            p.top_p = 0.9;
            p.temperature = 0.7
        }),
        mk(5, &|p| p.min_p = 0.1),
        mk(6, &|p| p.temperature = 0.0),
        mk(7, &|p| p.stop_tokens = vec![5, 6, 7, 8, 9, 10, 11, 12]),
        mk(8, &|p| p.max_new_tokens = 3),
    ]
}

fn in_process(w: &ModelWeights, reqs: &[Request]) -> Vec<Completion> {
    Engine::from_weights(w, DType::F32, &Device::Cpu, EngineConfig::default())
        .unwrap()
        .generate(reqs)
        .unwrap()
}

fn assert_same(remote: &[Completion], local: &[Completion]) {
    assert_eq!(remote.len(), local.len());
    for (i, (r, l)) in remote.iter().zip(local).enumerate() {
        assert_eq!(r.tokens, l.tokens, "request {i}: tokens");
        assert_eq!(
            r.finish_reason, l.finish_reason,
            "request {i}: finish reason"
        );
        assert_eq!(r.supports, l.supports, "request {i}: supports");
        for (a, b) in r.logprobs.iter().zip(&l.logprobs) {
            assert!((a - b).abs() <= 1e-5, "request {i}: log-prob {a} vs {b}");
        }
    }
}

#[test]
fn remote_answers_equal_the_in_process_engine() {
    let dir = model_dir(0);
    let server = start(dir.path(), None);
    let publish = tempfile::tempdir().unwrap();
    let backend = RemoteBackend::new(remote(vec![server.url()], publish.path()))
        .unwrap()
        .with_vocab_size(64);
    let reqs = requests();
    let g = backend.generate(&reqs).unwrap();
    assert_eq!(g.policy_version, 0);
    let local = in_process(&weights(0), &reqs);
    assert_same(&g.completions, &local);
    // The truncated requests carry their supports, and the stop token stopped one.
    assert!(g.completions[1]
        .supports
        .as_ref()
        .is_some_and(|s| !s.is_empty()));
    assert!(g
        .completions
        .iter()
        .any(|c| c.finish_reason == alp_core::FinishReason::StopToken));
}

#[test]
fn publish_reloads_every_server_and_answers_carry_the_version() {
    let dir = model_dir(0);
    let (a, b) = (
        start(dir.path(), Some(TOKEN)),
        start(dir.path(), Some(TOKEN)),
    );
    let publish = tempfile::tempdir().unwrap();
    let mut backend = RemoteBackend::new(remote(vec![a.url(), b.url()], publish.path())).unwrap();
    let new = weights(1);
    backend.publish(3, &new).unwrap();
    let reqs = requests();
    let g = backend.generate(&reqs).unwrap();
    assert_eq!(g.policy_version, 3);
    assert_same(&g.completions, &in_process(&new, &reqs));
    for s in [&a, &b] {
        let h: serde_json::Value = ureq::get(&format!("{}/health", s.url()))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(h["weight_version"], 3);
    }
    // Only the newest published directory is kept.
    backend.publish(4, &weights(2)).unwrap();
    let left: Vec<_> = std::fs::read_dir(publish.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn requests_in_flight_finish_on_the_old_weights() {
    let dir = model_dir(0);
    let server = start(dir.path(), Some(TOKEN));
    let url = server.url();
    let long = Request {
        prompt: vec![1, 2, 3],
        params: SamplingParams {
            max_new_tokens: 400,
            seed: 9,
            ..Default::default()
        },
    };
    let body = alp_rollout::wire::CompletionRequest {
        n: 16,
        ..alp_rollout::wire::CompletionRequest::from_engine(&long)
    };
    let u = url.clone();
    let t = std::thread::spawn(move || -> alp_rollout::wire::CompletionResponse {
        ureq::post(&format!("{u}/v1/completions"))
            .send_json(&body)
            .unwrap()
            .into_json()
            .unwrap()
    });
    // Reload once the long request is running.
    let mut running = false;
    for _ in 0..2000 {
        let m = ureq::get(&format!("{url}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        if m.lines()
            .any(|l| l.starts_with("alp_queue_depth ") && l != "alp_queue_depth 0")
        {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(running, "the long request never showed in the queue");
    let new_dir = model_dir(1);
    let r: serde_json::Value = ureq::post(&format!("{url}/reload"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({"path": new_dir.path(), "version": 1}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["weight_version"], 1);
    let old = t.join().unwrap();
    assert_eq!(old.weight_version, Some(0));
    let first: Vec<u32> = old.choices[0].token_ids.clone().unwrap();
    assert_eq!(first, in_process(&weights(0), &[long])[0].tokens);
    // What arrives after the reload is sampled by the new weights.
    let publish = tempfile::tempdir().unwrap();
    let backend = RemoteBackend::new(remote(vec![url], publish.path()))
        .unwrap()
        .with_version(1);
    let reqs = requests();
    let g = backend.generate(&reqs).unwrap();
    assert_eq!(g.policy_version, 1);
    assert_same(&g.completions, &in_process(&weights(1), &reqs));
}

fn post(url: &str, body: serde_json::Value, auth: Option<&str>) -> (u16, String) {
    let mut r = ureq::post(url);
    if let Some(a) = auth {
        r = r.set("Authorization", a);
    }
    match r.send_json(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn reload_needs_the_token_and_requests_are_bounded() {
    let dir = model_dir(0);
    let guarded = start(dir.path(), Some(TOKEN));
    let open = start(dir.path(), None);
    let reload = |s: &Server, auth: Option<&str>| {
        post(
            &format!("{}/reload", s.url()),
            serde_json::json!({"path": dir.path()}),
            auth,
        )
    };
    assert_eq!(reload(&guarded, None).0, 401);
    assert_eq!(
        reload(&guarded, Some("Bearer a-long-random-reload-tokem")).0,
        401
    );
    assert_eq!(
        reload(&guarded, Some(TOKEN)).0,
        401,
        "the token without the Bearer scheme"
    );
    assert_eq!(
        reload(&open, Some(&format!("Bearer {TOKEN}"))).0,
        403,
        "no token configured: reload is off"
    );
    let (c, body) = reload(&guarded, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(c, 200, "{body}");
    // A directory that is not a model: a clear error, the old weights keep serving.
    let (c, body) = post(
        &format!("{}/reload", guarded.url()),
        serde_json::json!({"path": "/nonexistent/model"}),
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(c, 400);
    assert!(body.contains("/nonexistent/model"), "{body}");

    let url = format!("{}/v1/completions", open.url());
    let bad = |body: serde_json::Value, needle: &str| {
        let (c, text) = post(&url, body, None);
        assert_eq!(c, 400, "{text}");
        assert!(text.contains(needle), "`{needle}` not in {text}");
    };
    bad(serde_json::json!({"prompt": [1], "n": 65}), "n = 65");
    bad(
        serde_json::json!({"prompt": [1], "max_tokens": 100000}),
        "max_tokens = 100000",
    );
    bad(serde_json::json!({"prompt": [1], "stream": true}), "stream");
    bad(serde_json::json!({"prompt": [1, 64]}), "64");
    bad(serde_json::json!({"prompt": []}), "empty");
    bad(serde_json::json!({"prompt": "text"}), "tokenizer");
    bad(serde_json::json!({"prompt": [1], "top_p": 0.0}), "top_p");
    bad(serde_json::json!({"n": 1}), "prompt");
    let huge = serde_json::json!({"prompt": vec![1; 700_000]});
    // Refused: a 413, or, where the server answers and closes while the client is still
    // sending the rest of the body (a race of the two sides), the client's write fails with
    // a broken pipe or a reset. Either way the server did not take it.
    match ureq::post(&url).send_json(huge) {
        Err(ureq::Error::Status(c, _)) => assert_eq!(c, 413),
        Err(ureq::Error::Transport(t)) => {
            let m = t.to_string();
            assert!(
                t.kind() == ureq::ErrorKind::Io
                    && (m.contains("Broken pipe") || m.contains("reset")),
                "{m}"
            );
        }
        Ok(r) => panic!("an oversized body was accepted: {}", r.status()),
    }
    // The server still answers.
    let (c, _) = post(
        &url,
        serde_json::json!({"prompt": [1, 2], "max_tokens": 2}),
        None,
    );
    assert_eq!(c, 200);
}

#[test]
fn the_default_listen_address_is_loopback() {
    assert!(ServeConfig::default().listen.ip().is_loopback());
    let short = ServeConfig {
        reload_token: Some("short".into()),
        ..Default::default()
    };
    assert!(short
        .validate()
        .unwrap_err()
        .to_string()
        .contains("reload_token"));
}

/// A port nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

/// A server that accepts connections and never answers.
fn hanging_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    format!("http://{a}")
}

#[test]
fn a_dead_or_hanging_server_fails_over_and_no_request_is_lost() {
    let dir = model_dir(0);
    let live = start(dir.path(), None);
    let publish = tempfile::tempdir().unwrap();
    let backend = RemoteBackend::new(RemoteConfig {
        timeout_s: 1.5,
        max_in_flight: 4,
        ..remote(vec![dead_url(), hanging_url(), live.url()], publish.path())
    })
    .unwrap();
    let reqs = requests();
    let g = backend.generate(&reqs).unwrap();
    assert_same(&g.completions, &in_process(&weights(0), &reqs));
    let state = backend.servers();
    assert!(!state[0].1 && !state[1].1 && state[2].1, "{state:?}");
    // The live server answered each request once.
    let m = ureq::get(&format!("{}/metrics", live.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        m.contains(&format!("alp_requests_total {}", reqs.len())),
        "{m}"
    );

    let none = RemoteBackend::new(RemoteConfig {
        timeout_s: 1.0,
        ..remote(vec![dead_url(), hanging_url()], publish.path())
    })
    .unwrap();
    let e = none.generate(&reqs).unwrap_err().to_string();
    assert!(e.contains("no rollout server is left"), "{e}");
}

/// A server that answers every completion request with `body`.
struct Liar {
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn liar(body: serde_json::Value) -> Liar {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(move || {
            let b = body.clone();
            async move {
                use axum::response::IntoResponse;
                match b {
                    serde_json::Value::String(s) => s.into_response(),
                    v => axum::Json(v).into_response(),
                }
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    Liar { url, _rt: rt }
}

fn answer(
    tokens: serde_json::Value,
    logprobs: serde_json::Value,
    version: PolicyVersion,
) -> serde_json::Value {
    serde_json::json!({
        "id": "x", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "text": "", "token_ids": tokens,
                     "logprobs": {"tokens": [], "token_logprobs": logprobs}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "weight_version": version
    })
}

#[test]
fn a_malformed_answer_is_an_error_naming_the_server() {
    let cases = [
        (
            serde_json::json!("this is not JSON"),
            "not a completions response",
        ),
        (
            serde_json::json!({"id": "x", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "token_ids": [1, 2], "finish_reason": "length"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "weight_version": 5}),
            "no log-probs",
        ),
        (
            answer(
                serde_json::json!([1, 64]),
                serde_json::json!([-0.1, -0.2]),
                5,
            ),
            "outside the vocabulary",
        ),
        (
            answer(serde_json::json!([1, 2]), serde_json::json!([-0.1]), 5),
            "2 tokens but 1 log-probs",
        ),
        (
            answer(serde_json::json!([1, 2]), serde_json::json!([-0.1, 3.0]), 5),
            "not a log-probability",
        ),
        (
            answer(
                serde_json::json!([1, 2]),
                serde_json::json!([-0.1, -0.2]),
                3,
            ),
            "older than the staleness bound",
        ),
        (
            answer(
                serde_json::json!([1, 2]),
                serde_json::json!([-0.1, -0.2]),
                9,
            ),
            "newer than the last one published",
        ),
    ];
    let publish = tempfile::tempdir().unwrap();
    let req = [Request {
        prompt: vec![1],
        params: SamplingParams {
            max_new_tokens: 4,
            ..Default::default()
        },
    }];
    // A client at version 5 with a staleness bound of 1.
    let client = |url: &str| {
        RemoteBackend::new(RemoteConfig {
            max_staleness: 1,
            ..remote(vec![url.to_string()], publish.path())
        })
        .unwrap()
        .with_vocab_size(64)
        .with_version(5)
    };
    for (body, needle) in cases {
        let l = liar(body);
        let e = client(&l.url).generate(&req).unwrap_err().to_string();
        assert!(e.contains(&l.url), "{e}");
        assert!(e.contains(needle), "`{needle}` not in {e}");
    }
    // An answer one version behind is within the bound and is taken.
    let l = liar(answer(
        serde_json::json!([1, 2]),
        serde_json::json!([-0.1, -0.2]),
        4,
    ));
    assert_eq!(client(&l.url).generate(&req).unwrap().policy_version, 4);
}

#[test]
fn requests_arriving_while_others_decode_get_what_generate_gives() {
    // The server's loop with one request arriving before each decode step (so every later one
    // joins a running batch) gives each request what a batch of all of them at once gives.
    let w = weights(0);
    let engine =
        Engine::from_weights(&w, DType::F32, &Device::Cpu, EngineConfig::default()).unwrap();
    let reqs = requests();
    let mut queue: std::collections::VecDeque<Request> = reqs.iter().cloned().collect();
    let mut got: Vec<Option<Completion>> = vec![None; reqs.len()];
    let stats = engine
        .serve(
            |_| queue.pop_front().map(|r| vec![r]),
            |i, c| got[i] = Some(c.unwrap()),
        )
        .unwrap();
    let got: Vec<Completion> = got.into_iter().map(Option::unwrap).collect();
    assert_same(&got, &in_process(&w, &reqs));
    assert!(
        stats.prefills >= reqs.len(),
        "one prefill per arrival: {stats:?}"
    );
}

#[test]
fn garbage_and_floods_are_refused_and_the_server_keeps_answering() {
    let dir = model_dir(0);
    let server = Server::start(ServeConfig {
        model: Some(dir.path().into()),
        max_queue: 4,
        ..Default::default()
    })
    .unwrap();
    let url = format!("{}/v1/completions", server.url());
    // Bytes that are not JSON at all.
    let r = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_bytes(b"\x00\xff{{{ not json");
    match r {
        Err(ureq::Error::Status(400, r)) => {
            assert!(r
                .into_string()
                .unwrap()
                .contains("not a completions request"))
        }
        other => panic!("{other:?}"),
    }
    // More sequences than the queue holds: 429, nothing admitted.
    let (c, body) = post(&url, serde_json::json!({"prompt": [1], "n": 5}), None);
    assert_eq!(c, 429, "{body}");
    // Many concurrent clients within the bound all get their answers.
    let answers: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    post(
                        &url,
                        serde_json::json!({"prompt": [1, i + 2], "max_tokens": 8, "seed": i}),
                        None,
                    )
                    .0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|&c| c == 200 || c == 429), "{answers:?}");
    assert!(answers.contains(&200));
    let h = ureq::get(&format!("{}/health", server.url()))
        .call()
        .unwrap();
    assert_eq!(h.status(), 200);
}
