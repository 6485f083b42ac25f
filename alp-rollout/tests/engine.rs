//! The engine held to slow references: batched continuous decoding vs one sequence at a
//! time without a KV cache, stored log-probs vs a full forward, seeds vs batch composition.

use alp_core::{ChatMessage, Environment, FinishReason, Step, Task, TokenId};
use alp_model::NoPerturbation;
use alp_model::{presets, token_logprobs, Model, ModelWeights, Numerics, Tokenizer};
use alp_rollout::{
    run_episodes, Engine, EngineConfig, EpisodeConfig, Episodes, Request, RolloutBackend,
    SamplingParams,
};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

fn model() -> Arc<Model> {
    let w = ModelWeights::random(&presets::tiny(), 3, DType::F32, &Device::Cpu).unwrap();
    Arc::new(w.build().unwrap())
}

fn engine(max_batch: usize) -> Engine {
    Engine::new(
        model(),
        EngineConfig {
            max_batch,
            ..Default::default()
        },
    )
    .unwrap()
}

fn prompts() -> Vec<Vec<TokenId>> {
    vec![
        vec![5, 9, 2],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        vec![40],
        vec![7, 7, 7, 7, 7],
        vec![63, 0, 12, 33, 21, 9, 1],
        vec![2, 4],
    ]
}

/// One request per test prompt, with the sampling parameters of index `i`.
fn requests(params: impl Fn(usize) -> SamplingParams) -> Vec<Request> {
    prompts()
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Request {
            prompt,
            params: params(i),
        })
        .collect()
}

/// Full logits of `ids` without a KV cache.
fn full_logits(m: &Model, ids: &[TokenId]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_full(&input, &[], &NoPerturbation, Numerics::Inference)
        .unwrap()
}

/// Log-probs of `ids[1..]` given their prefixes, from one full forward without a cache.
fn recomputed_logprobs(m: &Model, ids: &[TokenId]) -> Vec<f32> {
    let logits = full_logits(m, &ids[..ids.len() - 1]);
    let targets = Tensor::new(&ids[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    token_logprobs(&logits, &targets, 1.0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn argmax(v: &[f32]) -> TokenId {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0 as TokenId
}

#[test]
fn greedy_continuous_batching_equals_each_prompt_alone_without_cache() {
    let m = model();
    let eng = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let reqs: Vec<Request> = requests(|i| SamplingParams::greedy(3 + 2 * i));
    let (out, stats) = eng.generate_with_stats(&reqs).unwrap();
    assert!(
        stats.prefills >= 2,
        "rows joined a running batch: {stats:?}"
    );
    assert!(stats.peak_batch <= 3);
    for (r, c) in reqs.iter().zip(&out) {
        assert_eq!(c.finish_reason, FinishReason::MaxTokens);
        assert_eq!(c.tokens.len(), r.params.max_new_tokens);
        // Slow reference: a full forward per token, one sequence at a time.
        let mut ids = r.prompt.clone();
        for (k, &tok) in c.tokens.iter().enumerate() {
            let logits = full_logits(&m, &ids);
            let t = ids.len();
            let last: Vec<f32> = logits
                .get(0)
                .unwrap()
                .get(t - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(tok, argmax(&last), "prompt {:?} token {k}", r.prompt);
            ids.push(tok);
        }
        // And the engine alone on this request.
        let alone = engine(1).generate(std::slice::from_ref(r)).unwrap();
        assert_eq!(alone[0].tokens, c.tokens);
        for (a, b) in alone[0].logprobs.iter().zip(&c.logprobs) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_across_batch_compositions() {
    let target = Request {
        prompt: vec![3, 1, 4, 1, 5],
        params: SamplingParams {
            max_new_tokens: 12,
            seed: 1234,
            ..Default::default()
        },
    };
    let alone = engine(8).generate(std::slice::from_ref(&target)).unwrap()[0].clone();
    let mut mixed: Vec<Request> = requests(|i| SamplingParams {
        max_new_tokens: 2 + i,
        seed: i as u64,
        ..Default::default()
    });
    mixed.insert(3, target.clone());
    for max_batch in [2, 4, 16] {
        let out = engine(max_batch).generate(&mixed).unwrap();
        assert_eq!(out[3].tokens, alone.tokens, "max_batch {max_batch}");
    }
    let other = Request {
        params: SamplingParams {
            seed: 99,
            ..target.params.clone()
        },
        ..target
    };
    assert_ne!(
        engine(1).generate(&[other]).unwrap()[0].tokens,
        alone.tokens
    );
}

#[test]
fn stored_logprobs_equal_recomputed_and_top_p_is_renormalised() {
    let m = model();
    let eng = Engine::new(m.clone(), EngineConfig::default()).unwrap();
    let reqs: Vec<Request> = requests(|i| SamplingParams {
        max_new_tokens: 10,
        seed: 17 + i as u64,
        ..Default::default()
    });
    let out = eng.generate(&reqs).unwrap();
    for (r, c) in reqs.iter().zip(&out) {
        let mut ids = r.prompt.clone();
        ids.extend_from_slice(&c.tokens);
        let lp = recomputed_logprobs(&m, &ids);
        let recomputed = &lp[r.prompt.len() - 1..];
        for (a, b) in recomputed.iter().zip(&c.logprobs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
    // top-p: the stored value is the renormalised one.
    let top_p = 0.5f32;
    let r = Request {
        prompt: vec![5, 6, 7],
        params: SamplingParams {
            max_new_tokens: 8,
            top_p,
            seed: 5,
            ..Default::default()
        },
    };
    let c = &eng.generate(std::slice::from_ref(&r)).unwrap()[0];
    let mut ids = r.prompt.clone();
    ids.extend_from_slice(&c.tokens);
    let logits = full_logits(&m, &ids[..ids.len() - 1]);
    let mut renormalised_somewhere = false;
    for (k, (&tok, &stored)) in c.tokens.iter().zip(&c.logprobs).enumerate() {
        let row: Vec<f32> = logits
            .get(0)
            .unwrap()
            .get(r.prompt.len() - 1 + k)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut p: Vec<(usize, f64)> = row
            .iter()
            .map(|&x| ((x as f64) - mx).exp())
            .enumerate()
            .collect();
        let z: f64 = p.iter().map(|x| x.1).sum();
        p.iter_mut().for_each(|x| x.1 /= z);
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut mass = 0.0;
        let mut kept = Vec::new();
        for &(i, q) in &p {
            kept.push(i);
            mass += q;
            if mass >= top_p as f64 {
                break;
            }
        }
        assert!(
            kept.contains(&(tok as usize)),
            "sampled outside the nucleus"
        );
        let p_tok = p.iter().find(|x| x.0 == tok as usize).unwrap().1;
        let expected = (p_tok / mass).ln();
        assert!(
            (stored as f64 - expected).abs() < 1e-4,
            "{stored} vs {expected}"
        );
        if mass < 0.999 {
            renormalised_somewhere = true;
            assert!(stored as f64 > p_tok.ln() + 1e-3);
        }
    }
    assert!(renormalised_somewhere);
}

fn word_tokenizer() -> Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    let mut vocab = std::collections::HashMap::new();
    vocab.insert("[UNK]".to_string(), 0u32);
    for i in 1..64u32 {
        vocab.insert(format!("w{i}"), i);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    Tokenizer::from_tokenizer(t).with_chat_template(
        "{% for m in messages %}{{ m.role }} {{ m.content }} w1 {% endfor %}{% if add_generation_prompt %}assistant {% endif %}",
    )
}

#[test]
fn stop_rules_give_the_right_reason() {
    let tok = Arc::new(word_tokenizer());
    let eng = engine(4).with_tokenizer(tok.clone());
    let base = Request {
        prompt: vec![9, 8, 7],
        params: SamplingParams::greedy(6),
    };
    let free = eng.generate(std::slice::from_ref(&base)).unwrap()[0].clone();
    assert_eq!(
        (free.finish_reason, free.tokens.len()),
        (FinishReason::MaxTokens, 6)
    );
    // A stop string: the text of the third token.
    let stop = tok.decode(&[free.tokens[2]], false).unwrap();
    let mut r = base.clone();
    r.params.stop_strings = vec![stop.clone()];
    let c = eng.generate(&[r]).unwrap()[0].clone();
    assert_eq!(c.finish_reason, FinishReason::StopString);
    assert!(c.tokens.len() <= 3 && tok.decode(&c.tokens, false).unwrap().contains(&stop));
    // A stop token and EOS.
    let mut r = base.clone();
    r.params.stop_tokens = vec![free.tokens[1]];
    let c = eng.generate(&[r]).unwrap()[0].clone();
    assert_eq!(c.finish_reason, FinishReason::StopToken);
    assert!(c.tokens.len() <= 2);
    let c = eng
        .clone()
        .with_eos(vec![free.tokens[1]])
        .generate(std::slice::from_ref(&base))
        .unwrap()[0]
        .clone();
    assert_eq!(c.finish_reason, FinishReason::Eos);
    // ignore_eos runs to max tokens.
    let mut r = base.clone();
    r.params.ignore_eos = true;
    let c = eng.with_eos(vec![free.tokens[1]]).generate(&[r]).unwrap()[0].clone();
    assert_eq!(c.tokens, free.tokens);
}

#[test]
fn incremental_stop_strings_match_a_full_decode_of_every_prefix() {
    let tok = Arc::new(word_tokenizer());
    let eng = engine(4).with_tokenizer(tok.clone());
    let base = Request {
        prompt: vec![9, 8, 7],
        params: SamplingParams::greedy(12),
    };
    let free = eng.generate(std::slice::from_ref(&base)).unwrap()[0].clone();
    let full = |k: usize| tok.decode(&free.tokens[..k], false).unwrap();
    let stops = [
        // Spanning three tokens, inside a word's tail, and never present.
        tok.decode(&free.tokens[3..6], false).unwrap(),
        full(5)[full(5).len() - 2..].to_string(),
        "no such text".to_string(),
    ];
    for stop in stops {
        // The slow reference: the shortest prefix whose whole decode contains the stop string.
        let want = (1..=free.tokens.len())
            .find(|&k| full(k).contains(&stop))
            .unwrap_or(free.tokens.len());
        let mut r = base.clone();
        r.params.stop_strings = vec![stop.clone()];
        let c = eng.generate(&[r]).unwrap()[0].clone();
        assert_eq!(c.tokens, free.tokens[..want], "stop `{stop}`");
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let eng = Engine::new(
        model(),
        EngineConfig {
            max_context: 16,
            token_budget: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let ok = Request {
        prompt: vec![1, 2],
        params: SamplingParams::greedy(4),
    };
    let cases: Vec<(Request, &str)> = vec![
        (
            Request {
                prompt: vec![],
                ..ok.clone()
            },
            "empty",
        ),
        (
            Request {
                prompt: vec![1; 16],
                ..ok.clone()
            },
            "context",
        ),
        (
            Request {
                prompt: vec![1, 64],
                ..ok.clone()
            },
            "vocab",
        ),
        (
            Request {
                params: SamplingParams {
                    top_p: 0.0,
                    ..ok.params.clone()
                },
                ..ok.clone()
            },
            "top_p",
        ),
        (
            Request {
                params: SamplingParams {
                    top_p: 1.5,
                    ..ok.params.clone()
                },
                ..ok.clone()
            },
            "top_p",
        ),
        (
            Request {
                params: SamplingParams {
                    temperature: -1.0,
                    ..ok.params.clone()
                },
                ..ok.clone()
            },
            "temperature",
        ),
        (
            Request {
                params: SamplingParams {
                    max_new_tokens: 30,
                    ..ok.params.clone()
                },
                ..ok.clone()
            },
            "token_budget",
        ),
        (
            Request {
                params: SamplingParams {
                    stop_strings: vec!["x".into()],
                    ..ok.params.clone()
                },
                ..ok.clone()
            },
            "tokenizer",
        ),
    ];
    for (r, needle) in cases {
        let err = eng.generate(&[ok.clone(), r]).unwrap_err().to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
    assert!(Engine::new(
        model(),
        EngineConfig {
            max_batch: 0,
            ..Default::default()
        }
    )
    .is_err());
    assert_eq!(eng.generate(&[ok]).unwrap()[0].tokens.len(), 4);
}

/// Answers the first turn with an observation and ends the episode on the second.
struct Scripted {
    turns: usize,
}

impl Environment for Scripted {
    fn reset(&mut self, task: &Task) -> alp_core::Result<Vec<ChatMessage>> {
        self.turns = 0;
        Ok(task.messages.clone())
    }
    fn step(&mut self, _text: &str) -> alp_core::Result<Step> {
        self.turns += 1;
        if self.turns == 1 {
            Ok(Step::Observation(vec![ChatMessage::new("tool", "w3")]))
        } else {
            Ok(Step::Done(alp_core::Outcome {
                reward: 1.5,
                tool_calls: self.turns as u32,
                ..Default::default()
            }))
        }
    }
}

/// The two-turn task of the [`Scripted`] environment, with up to 3 turns of 3 tokens.
fn scripted_task(seed: u64) -> (Task, EpisodeConfig) {
    let task = Task {
        id: "t0".into(),
        kind: "k".into(),
        messages: vec![ChatMessage::new("user", "w5 w6")],
        answer: String::new(),
    };
    let cfg = EpisodeConfig {
        max_turns: 3,
        sampling: SamplingParams {
            max_new_tokens: 3,
            seed,
            ..Default::default()
        },
        ..Default::default()
    };
    (task, cfg)
}

/// A backend whose weights move on between calls (a server reloading mid-episode): version
/// 9 samples the first turn, 8 the second (e.g. a rollback), 12 any later one.
struct Moving {
    engine: Engine,
    calls: std::sync::atomic::AtomicU64,
}

impl RolloutBackend for Moving {
    fn generate(&self, requests: &[Request]) -> alp_core::Result<alp_rollout::Generation> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut g = RolloutBackend::generate(&self.engine, requests)?;
        g.policy_version = [9, 8].get(n as usize).copied().unwrap_or(12);
        Ok(g)
    }
    fn policy_version(&self) -> alp_core::PolicyVersion {
        12
    }
    fn publish(&mut self, v: alp_core::PolicyVersion, w: &ModelWeights) -> alp_core::Result<()> {
        self.engine.publish(v, w)
    }
}

#[test]
fn an_episode_is_stamped_with_the_oldest_version_that_sampled_it() {
    let tok = Arc::new(word_tokenizer());
    let backend = Moving {
        engine: engine(8).with_tokenizer(tok.clone()),
        calls: Default::default(),
    };
    let (task, cfg) = scripted_task(0);
    let episodes = Episodes {
        tasks: std::slice::from_ref(&task),
        make_env: &|_| Ok(Box::new(Scripted { turns: 0 })),
        group_size: 2,
        config: &cfg,
        tools: None,
    };
    let groups = run_episodes(&backend, &tok, &episodes).unwrap();
    for t in &groups[0].trajectories {
        // Two turns: sampled by versions 9 and then 8.
        assert_eq!((t.num_turns, t.policy_version), (2, 8));
    }
}

#[test]
fn multi_turn_episode_has_the_right_loss_mask() {
    let tok = Arc::new(word_tokenizer());
    let eng = engine(8).with_tokenizer(tok.clone());
    let (task, cfg) = scripted_task(1);
    let eng = eng.with_version(7);
    let episodes = Episodes {
        tasks: std::slice::from_ref(&task),
        make_env: &|_| Ok(Box::new(Scripted { turns: 0 })),
        group_size: 2,
        config: &cfg,
        tools: None,
    };
    let groups = run_episodes(&eng, &tok, &episodes).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].trajectories.len(), 2);
    // Prompt: "user w5 w6 w1 assistant"; observation: " w1 " closing + "tool w3 w1 assistant ".
    let prompt = tok.encode("user w5 w6 w1 assistant", false).unwrap();
    let obs = tok.encode("w1 tool w3 w1 assistant", false).unwrap();
    for t in &groups[0].trajectories {
        assert_eq!(t.prompt, prompt);
        assert_eq!((t.reward(), t.num_turns, t.policy_version), (1.5, 2, 7));
        assert_eq!((t.outcome.tool_calls, t.outcome.truncated), (2, false));
        assert_eq!(t.sampling.temperature, cfg.sampling.temperature);
        assert_eq!(t.response.len(), 3 + obs.len() + 3);
        assert_eq!(&t.response[3..3 + obs.len()], &obs[..]);
        let mut mask = vec![1u8; 3];
        mask.extend(vec![0u8; obs.len()]);
        mask.extend(vec![1u8; 3]);
        assert_eq!(t.loss_mask, mask);
        assert!(t.logp_infer[3..3 + obs.len()].iter().all(|&x| x == 0.0));
        assert!(t
            .logp_infer
            .iter()
            .zip(&t.loss_mask)
            .all(|(&l, &m)| m == 0 || l < 0.0));
    }
    // The generated log-probs are those of the full sequence under the model.
    let m = eng.model();
    let t = &groups[0].trajectories[0];
    let ids = t.full_tokens();
    let lp = recomputed_logprobs(m, &ids);
    for (k, (&m, &stored)) in t.loss_mask.iter().zip(&t.logp_infer).enumerate() {
        if m == 1 {
            assert!((lp[t.prompt.len() - 1 + k] - stored).abs() < 1e-4);
        }
    }
}

#[test]
fn sharded_generation_equals_one_batch() {
    let m = model();
    let reqs: Vec<Request> = requests(|i| SamplingParams {
        max_new_tokens: 4 + i,
        seed: 40 + i as u64,
        temperature: if i % 2 == 0 { 0.0 } else { 1.0 },
        ..Default::default()
    });
    let one = Engine::new(m.clone(), EngineConfig::default())
        .unwrap()
        .generate(&reqs)
        .unwrap();
    for shards in [2, 3, 8] {
        let (many, stats) = Engine::new(
            m.clone(),
            EngineConfig {
                shards,
                ..Default::default()
            },
        )
        .unwrap()
        .generate_with_stats(&reqs)
        .unwrap();
        assert!(stats.prefills >= shards.min(reqs.len()));
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(a.tokens, b.tokens, "shards {shards}");
            assert_eq!(a.finish_reason, b.finish_reason);
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4);
            }
        }
    }
    assert!(Engine::new(
        m,
        EngineConfig {
            shards: 0,
            ..Default::default()
        }
    )
    .is_err());
}

/// Ends the episode with a reward that names the task, after a wait (a slow tool), and counts
/// how many of its kind step at the same time.
struct SlowTool {
    reward: f32,
    now: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

impl Environment for SlowTool {
    fn reset(&mut self, task: &Task) -> alp_core::Result<Vec<ChatMessage>> {
        Ok(task.messages.clone())
    }
    fn step(&mut self, _text: &str) -> alp_core::Result<Step> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(n, SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.now.fetch_sub(1, SeqCst);
        Ok(Step::Done(alp_core::Outcome::with_reward(self.reward)))
    }
}

#[test]
fn environment_steps_run_concurrently_and_reach_their_own_episodes() {
    let tok = Arc::new(word_tokenizer());
    let eng = engine(8).with_tokenizer(tok.clone());
    let tasks: Vec<Task> = (0..8)
        .map(|i| Task {
            id: format!("{i}"),
            kind: "k".into(),
            messages: vec![ChatMessage::new("user", "w5 w6")],
            answer: String::new(),
        })
        .collect();
    let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (n2, m2) = (now.clone(), most.clone());
    let make = move |t: &Task| -> alp_core::Result<Box<dyn Environment>> {
        Ok(Box::new(SlowTool {
            reward: t.id.parse::<f32>().unwrap(),
            now: n2.clone(),
            most: m2.clone(),
        }))
    };
    let cfg = EpisodeConfig {
        max_turns: 2,
        sampling: SamplingParams {
            max_new_tokens: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let episodes = Episodes {
        tasks: &tasks,
        make_env: &make,
        group_size: 2,
        config: &cfg,
        tools: None,
    };
    let groups = run_episodes(&eng, &tok, &episodes).unwrap();
    for (i, g) in groups.iter().enumerate() {
        assert_eq!(g.task_id, i.to_string());
        assert!(g.trajectories.iter().all(|t| t.reward() == i as f32));
    }
    assert!(
        most.load(std::sync::atomic::Ordering::SeqCst) > 1,
        "steps ran one at a time"
    );
}

#[test]
fn a_turn_that_extends_a_finished_sequence_reuses_its_kv_rows() {
    // Turn 1, then turn 2 whose prompts are turn 1's prompt + completion + a tool's answer:
    // with prefix reuse only the last sampled token and the answer are run; the log-probs
    // equal those of the re-prefill path (prefix reuse off) and of a full forward.
    let m = model();
    let params = |i: usize, turn: u64| SamplingParams {
        max_new_tokens: 3 + i % 3,
        seed: 100 * turn + i as u64,
        temperature: 1.0,
        ..Default::default()
    };
    let with = |tokens: usize, shards: usize| {
        Engine::new(
            m.clone(),
            EngineConfig {
                prefix_cache_tokens: tokens,
                shards,
                ..Default::default()
            },
        )
        .unwrap()
    };
    for shards in [1, 2] {
        let (reuse, plain) = (with(1 << 14, shards), with(0, shards));
        let first = requests(|i| params(i, 1));
        let (a1, s1) = reuse.generate_with_stats(&first).unwrap();
        let b1 = plain.generate(&first).unwrap();
        assert_eq!(s1.reused_tokens, 0);
        let answer = |i: usize| -> Vec<TokenId> {
            (0..2 + i % 2).map(|k| (11 + i + k) as TokenId).collect()
        };
        let second: Vec<Request> = first
            .iter()
            .zip(&a1)
            .enumerate()
            .map(|(i, (r, c))| {
                let mut prompt = r.prompt.clone();
                prompt.extend_from_slice(&c.tokens);
                prompt.extend(answer(i));
                Request {
                    prompt,
                    params: params(i, 2),
                }
            })
            .collect();
        let (a2, s2) = reuse.generate_with_stats(&second).unwrap();
        let (b2, p2) = plain.generate_with_stats(&second).unwrap();
        // Everything up to the last sampled token of turn 1 came from the kept rows.
        let kept: usize = first
            .iter()
            .zip(&a1)
            .map(|(r, c)| r.prompt.len() + c.tokens.len() - 1)
            .sum();
        let total: usize = second.iter().map(|r| r.prompt.len()).sum();
        assert_eq!(s2.reused_tokens, kept, "shards {shards}");
        assert_eq!(s2.prefill_tokens, total - kept);
        assert_eq!((p2.reused_tokens, p2.prefill_tokens), (0, total));
        let pairs = a1.iter().zip(&b1).chain(a2.iter().zip(&b2));
        for (k, ((x, y), r)) in pairs.zip(first.iter().chain(&second)).enumerate() {
            assert_eq!(x.tokens, y.tokens, "request {k}");
            for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                assert!((p - q).abs() <= 1e-5, "request {k}: {p} vs {q}");
            }
            // And both are the full forward's.
            let mut ids = r.prompt.clone();
            ids.extend_from_slice(&x.tokens);
            let want = recomputed_logprobs(&m, &ids);
            let want = &want[r.prompt.len() - 1..];
            for (p, q) in x.logprobs.iter().zip(want) {
                assert!(
                    (p - q).abs() <= 1e-4,
                    "request {k}: {p} vs full forward {q}"
                );
            }
        }
    }
    // A kept sequence is never continued by other weights.
    let mut e = with(1 << 14, 1);
    let r = requests(|i| params(i, 1));
    let c = e.generate(&r).unwrap();
    let w = ModelWeights::random(&presets::tiny(), 4, DType::F32, &Device::Cpu).unwrap();
    e.publish(1, &w).unwrap();
    let next: Vec<Request> = r
        .iter()
        .zip(&c)
        .map(|(r, c)| {
            let mut prompt = r.prompt.clone();
            prompt.extend_from_slice(&c.tokens);
            Request {
                prompt,
                params: params(0, 3),
            }
        })
        .collect();
    let (_, s) = e.generate_with_stats(&next).unwrap();
    assert_eq!(s.reused_tokens, 0);
}

/// A LoRA run's rollouts: the engine applies the adapter over the shared frozen base, and its
/// stored log-probs equal the trainer's differentiable forward of the same weights (base
/// frozen, adapter trainable) to 1e-5 in f32.
#[test]
fn lora_rollout_logprobs_equal_the_trainers_forward() {
    let cfg = presets::tiny();
    let mut w = ModelWeights::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let lc = alp_model::LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let mut a = alp_model::Adapter::init(&cfg, &lc, 2, DType::F32, &Device::Cpu).unwrap();
    for (k, t) in a.tensors.iter_mut() {
        if k.ends_with("lora_B.weight") {
            *t = (Tensor::randn(0f32, 1.0, t.dims(), &Device::Cpu).unwrap() * 0.1).unwrap();
        }
    }
    w.adapter = Some(a);
    let (trainer_model, _vars) = w.build_trainable().unwrap();
    let engine_model = Arc::new(
        w.snapshot(DType::F32, &Device::Cpu)
            .unwrap()
            .build()
            .unwrap(),
    );
    let plain = Arc::new(
        ModelWeights {
            adapter: None,
            ..w.clone()
        }
        .build()
        .unwrap(),
    );
    let eng = Engine::new(engine_model, EngineConfig::default()).unwrap();
    let reqs = requests(|i| SamplingParams {
        max_new_tokens: 10,
        seed: 3 + i as u64,
        ..Default::default()
    });
    let out = eng.generate(&reqs).unwrap();
    let mut adapter_mattered = false;
    for (r, c) in reqs.iter().zip(&out) {
        let mut ids = r.prompt.clone();
        ids.extend_from_slice(&c.tokens);
        let input = Tensor::new(&ids[..ids.len() - 1], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let targets = Tensor::new(&ids[1..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let trained: Vec<f32> = token_logprobs(
            &trainer_model
                .forward_full(&input, &[], &NoPerturbation, Numerics::Training)
                .unwrap(),
            &targets,
            1.0,
        )
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
        let base_only = recomputed_logprobs(&plain, &ids);
        let n = r.prompt.len() - 1;
        for (k, (a, b)) in trained[n..].iter().zip(&c.logprobs).enumerate() {
            assert!((a - b).abs() < 1e-5, "token {k}: trainer {a} vs engine {b}");
            adapter_mattered |= (base_only[n + k] - b).abs() > 1e-3;
        }
    }
    assert!(adapter_mattered, "the engine ignored the adapter");
}
