//! The batched sampling engine with continuous batching.

use crate::backend::{Completion, GenerateStats, Request};
use crate::sampling::{sample_kept, Support};
use alp_core::{Error, FinishReason, PolicyVersion, Result, SamplingSupports, TokenId};
use alp_model::NoPerturbation;
use alp_model::{KvCache, Model, ModelWeights, Tokenizer};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// Engine limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Token budget of the running batch: the sum over running sequences of prompt length +
    /// `max_new_tokens` (what their KV cache may grow to). Bounds memory.
    pub token_budget: usize,
    /// Longest sequence (prompt + output); 0 means the model's `max_position_embeddings`.
    pub max_context: usize,
    /// Independent batches decoded on that many threads at once (requests are dealt out
    /// round-robin; `max_batch` and `token_budget` are shared out). On a CPU a decode step at
    /// moderate batch sizes barely uses a second core, two shards use both. 1: one batch.
    pub shards: usize,
    /// Prefix reuse: the KV cache rows of up to this many tokens of finished sequences are
    /// kept, and a request whose prompt extends one of them (the next turn of a multi-turn
    /// episode: the conversation so far plus the tool's answer) continues from it and
    /// prefills only its new tokens, as vLLM's automatic prefix caching and SGLang's
    /// RadixAttention do. Oldest first out. 0: off. Memory: per token 2 · layers · kv_heads
    /// · head_dim · 4 bytes (24.6 KB at the 0.5B shape, 2 KB for the embedded default).
    pub prefix_cache_tokens: usize,
    /// Bit-exact rollouts: the model runs the trainer's exact numerics
    /// (`alp_model::Numerics::Exact`, f32 or bf16 weights on the CPU) and each token's stored
    /// log-prob is computed as the trainer scores it (its log-softmax kernel on the same
    /// logits row at the sampling temperature), so that at staleness 0 the trainer's
    /// recomputed log-probs equal them bit for bit. The token is still drawn by the sampler
    /// from those logits. Untruncated sampling only (top-k, top-p and min-p off).
    pub exact_numerics: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 64,
            token_budget: 64 * 1024,
            max_context: 0,
            shards: 1,
            prefix_cache_tokens: 16 * 1024,
            exact_numerics: false,
        }
    }
}

impl EngineConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_batch == 0 {
            return Err(Error::config("max_batch", "must be at least 1"));
        }
        if self.token_budget == 0 {
            return Err(Error::config("token_budget", "must be at least 1"));
        }
        if self.shards == 0 {
            return Err(Error::config("shards", "must be at least 1"));
        }
        Ok(())
    }
}

/// Where a request is in its life (waiting ones are the scheduler's queue; rows of the running
/// batch carry the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqState {
    /// Not admitted yet (no room in the batch or the token budget).
    Waiting,
    /// Admitted; its prompt is being prefilled.
    Prefilling,
    /// In the running batch, one token per decode step.
    Decoding,
    /// Done, with the reason.
    Finished(FinishReason),
}

/// A running sequence: its row of the KV cache and what it generated so far.
struct Row {
    req: usize,
    rng: ChaCha8Rng,
    tokens: Vec<TokenId>,
    logprobs: Vec<f32>,
    supports: Option<SamplingSupports>,
    next_input: TokenId,
    state: SeqState,
}

impl Row {
    fn done(&self) -> bool {
        matches!(self.state, SeqState::Finished(_))
    }
}

/// The requests a continuous batch knows about, by arrival index: those waiting or running
/// (a finished one is removed, so a server's loop does not grow without bound).
struct Live(std::collections::HashMap<usize, Request>);

impl std::ops::Index<usize> for Live {
    type Output = Request;
    fn index(&self, i: usize) -> &Request {
        &self.0[&i]
    }
}

/// Admission of waiting requests into the running batch, within the batch size and the token
/// budget (what the running sequences' KV caches may grow to), in arrival order.
#[derive(Default)]
struct Scheduler {
    waiting: VecDeque<usize>,
}

impl Scheduler {
    /// The requests to admit now, given the running rows; they move to `Prefilling`. Returns
    /// them and the number of live sequences after admission. A request holds
    /// `Engine::reservation` tokens of the budget.
    fn admit(&mut self, engine: &Engine, rows: &[Row], requests: &Live) -> (Vec<usize>, usize) {
        let live: Vec<&Row> = rows.iter().filter(|r| !r.done()).collect();
        let mut used: usize = live
            .iter()
            .map(|r| engine.reservation(&requests[r.req]))
            .sum();
        let mut n = live.len();
        let mut admit = Vec::new();
        while let Some(&i) = self.waiting.front() {
            let need = engine.reservation(&requests[i]);
            if n >= engine.config.max_batch || used + need > engine.config.token_budget {
                break;
            }
            admit.push(i);
            self.waiting.pop_front();
            used += need;
            n += 1;
        }
        (admit, n)
    }
}

/// Rows joining a running batch: (their cache and row in it, in order; their states).
type Joining<'a> = (Vec<(&'a KvCache, usize)>, Vec<Row>);

/// What a prefill gives: the caches, each admitted request's (cache, row), its logits.
type Prefilled = (Vec<KvCache>, Vec<(usize, usize)>, Vec<Vec<f32>>);

/// Finished sequences' KV cache rows kept for prompts that extend them
/// ([`EngineConfig::prefix_cache_tokens`]). Entries are tied to the model they were computed
/// with, and each is used once (the next turn replaces it with a longer one).
#[derive(Default)]
struct PrefixStore {
    /// (model, tokens, their single-row cache), oldest first. The weak reference keeps the
    /// model's address from being reused by another model while the entry exists.
    entries: std::collections::VecDeque<(std::sync::Weak<Model>, Vec<TokenId>, KvCache)>,
    tokens: usize,
}

impl PrefixStore {
    fn insert(&mut self, model: &Arc<Model>, seq: Vec<TokenId>, kv: KvCache, budget: usize) {
        if seq.is_empty() || seq.len() > budget {
            return;
        }
        self.tokens += seq.len();
        self.entries.push_back((Arc::downgrade(model), seq, kv));
        while self.tokens > budget {
            match self.entries.pop_front() {
                Some((_, s, _)) => self.tokens -= s.len(),
                None => break,
            }
        }
    }

    /// Removes and returns the longest kept sequence of `model` that is a proper prefix of
    /// `prompt` (at least one prompt token is left to run, for the next token's logits).
    fn take(&mut self, model: &Arc<Model>, prompt: &[TokenId]) -> Option<KvCache> {
        let (i, _) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (m, s, _))| {
                std::ptr::eq(m.as_ptr(), Arc::as_ptr(model))
                    && s.len() < prompt.len()
                    && prompt.starts_with(s)
            })
            .max_by_key(|(_, (_, s, _))| s.len())?;
        let (_, s, kv) = self.entries.remove(i)?;
        self.tokens -= s.len();
        Some(kv)
    }
}

/// A sampling engine over one immutable model snapshot.
///
/// Requests are served with continuous batching: up to `max_batch` sequences (and within the
/// token budget) decode together, each in its own row of the KV cache; a finished sequence
/// stops being sampled at once, and waiting requests join as soon as there is room (their
/// prompts are prefilled together and merged into the running cache).
#[derive(Clone)]
pub struct Engine {
    model: Arc<Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    eos: Vec<TokenId>,
    config: EngineConfig,
    /// The policy version of `model`'s weights.
    version: PolicyVersion,
    /// Kept sequences for prefix reuse, shared by the engine's clones (shards).
    prefixes: Arc<std::sync::Mutex<PrefixStore>>,
    /// The counters of every batch served so far, shared by the engine's clones.
    totals: Arc<std::sync::Mutex<GenerateStats>>,
    /// A LoRA run's base model, built once and shared by every version's model.
    models: alp_model::AdapterModels,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dtype", &self.model.dtype())
            .field("eos", &self.eos)
            .field("config", &self.config)
            .finish()
    }
}

impl Engine {
    /// An engine over `model` (with `config.exact_numerics`, a view of it that runs the exact
    /// numerics: an error where its weights are neither f32 nor bf16 on the CPU).
    pub fn new(model: Arc<Model>, config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let model = exact_model(model, config.exact_numerics)?;
        Ok(Engine {
            model,
            tokenizer: None,
            eos: Vec::new(),
            config,
            version: 0,
            prefixes: Default::default(),
            totals: Default::default(),
            models: Default::default(),
        })
    }

    /// Builds the rollout model from `weights` in `dtype` (f32, bf16 or f16) on `device`
    /// (a LoRA run's: its base once, the adapter applied unmerged).
    pub fn from_weights(
        weights: &ModelWeights,
        dtype: DType,
        device: &Device,
        config: EngineConfig,
    ) -> Result<Self> {
        let mut models = alp_model::AdapterModels::default();
        let model = models.build(weights, dtype, device)?;
        let mut e = Engine::new(Arc::new(model), config)?;
        e.models = models;
        Ok(e)
    }

    /// Builds the rollout model over `weights` as they are (their dtype and device: no
    /// copy), so that later publishes of a LoRA run reuse its base model and packed copies.
    pub fn from_snapshot(weights: &ModelWeights, config: EngineConfig) -> Result<Self> {
        let (dtype, device) = weights.dtype_device()?;
        Self::from_weights(weights, dtype, &device, config)
    }

    /// Uses `tokenizer` for stop strings and its end-of-sequence tokens as EOS.
    pub fn with_tokenizer(mut self, tokenizer: Arc<Tokenizer>) -> Self {
        self.eos = tokenizer.eos_ids().to_vec();
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Says that the model's weights are policy version `version` (0 unless given).
    pub fn with_version(mut self, version: PolicyVersion) -> Self {
        self.version = version;
        self
    }

    /// Replaces the end-of-sequence token ids.
    pub fn with_eos(mut self, eos: Vec<TokenId>) -> Self {
        self.eos = eos;
        self
    }

    /// The counters summed over everything this engine and its clones served so far (the
    /// seconds of concurrent shards add up: CPU-seconds, not wall time; `peak_batch` is the
    /// largest of any batch).
    pub fn totals(&self) -> GenerateStats {
        self.totals.lock().map(|t| *t).unwrap_or_default()
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The tokenizer, if any.
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The longest sequence this engine runs.
    pub fn max_context(&self) -> usize {
        let m = self.model.config().max_position_embeddings;
        if self.config.max_context == 0 {
            m
        } else {
            self.config.max_context.min(m)
        }
    }

    fn check(&self, requests: &[Request]) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        let ctx = self.max_context();
        for (i, r) in requests.iter().enumerate() {
            r.params
                .validate()
                .map_err(|e| Error::invalid(format!("request {i}: {e}")))?;
            if r.prompt.is_empty() {
                return Err(Error::invalid(format!("request {i}: the prompt is empty")));
            }
            if let Some(&t) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::TokenOutOfRange {
                    token: t,
                    vocab_size: vocab,
                });
            }
            if r.prompt.len() >= ctx {
                return Err(Error::invalid(format!(
                    "request {i}: the prompt has {} tokens, the context holds {ctx} (shorten the prompt or raise max_context)",
                    r.prompt.len()
                )));
            }
            let need = self.reservation(r);
            if need > self.config.token_budget {
                return Err(Error::config(
                    "token_budget",
                    format!(
                        "{} is too small for one sequence of request {i} (prompt {} + max_new_tokens {} = {need})",
                        self.config.token_budget,
                        r.prompt.len(),
                        r.params.max_new_tokens
                    ),
                ));
            }
            if self.config.exact_numerics && r.params.truncates() {
                return Err(Error::config(
                    "exact_numerics",
                    format!("request {i}: bit-exact rollouts score over the whole vocabulary: turn top_k, top_p and min_p off"),
                ));
            }
            if !r.params.stop_strings.is_empty() && self.tokenizer.is_none() {
                return Err(Error::invalid(format!(
                    "request {i} has stop strings but the engine has no tokenizer (Engine::with_tokenizer)"
                )));
            }
        }
        Ok(())
    }

    fn reservation(&self, r: &Request) -> usize {
        (r.prompt.len() + r.params.max_new_tokens).min(self.max_context())
    }

    /// Generates a completion for every request (in request order).
    pub fn generate(&self, requests: &[Request]) -> Result<Vec<Completion>> {
        Ok(self.generate_with_stats(requests)?.0)
    }

    /// [`Engine::generate`] with counters.
    pub fn generate_with_stats(
        &self,
        requests: &[Request],
    ) -> Result<(Vec<Completion>, GenerateStats)> {
        self.check(requests)?;
        let shards = self.config.shards.min(requests.len()).max(1);
        if shards == 1 {
            return self.generate_batch(requests);
        }
        // Deal the requests out round-robin and run one continuous batch per thread.
        let longest = requests
            .iter()
            .map(|r| self.reservation(r))
            .max()
            .unwrap_or(0);
        let sub = Engine {
            config: EngineConfig {
                max_batch: self.config.max_batch.div_ceil(shards),
                token_budget: (self.config.token_budget / shards).max(longest),
                shards: 1,
                ..self.config.clone()
            },
            ..self.clone()
        };
        let parts: Vec<Vec<usize>> = (0..shards)
            .map(|s| (s..requests.len()).step_by(shards).collect())
            .collect();
        let results: Vec<Result<(Vec<Completion>, GenerateStats)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|idx| {
                    let reqs: Vec<Request> = idx.iter().map(|&i| requests[i].clone()).collect();
                    let sub = &sub;
                    // The shards keep the cores busy: each computes its own products on its
                    // own thread rather than splitting them across the pool too.
                    scope.spawn(move || alp_model::single_threaded(|| sub.generate_batch(&reqs)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Msg("a generation thread panicked".into())))
                })
                .collect()
        });
        let mut out: Vec<Option<Completion>> = vec![None; requests.len()];
        let mut stats = GenerateStats::default();
        for (idx, r) in parts.iter().zip(results) {
            let (done, st) = r?;
            for (&i, c) in idx.iter().zip(done) {
                out[i] = Some(c);
            }
            stats.decode_steps = stats.decode_steps.max(st.decode_steps);
            stats.prefills += st.prefills;
            stats.rebuilds += st.rebuilds;
            stats.peak_batch += st.peak_batch;
            stats.prefill_seconds = stats.prefill_seconds.max(st.prefill_seconds);
            stats.decode_seconds = stats.decode_seconds.max(st.decode_seconds);
            stats.prefill_tokens += st.prefill_tokens;
            stats.reused_tokens += st.reused_tokens;
        }
        let out = out
            .into_iter()
            .map(|c| c.ok_or_else(|| Error::Msg("a request finished without a completion".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, stats))
    }

    /// One continuous batch over `requests` (already checked).
    fn generate_batch(&self, requests: &[Request]) -> Result<(Vec<Completion>, GenerateStats)> {
        let mut results: Vec<Option<Result<Completion>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut batch = Some(requests.to_vec());
        let stats = self.serve(|_| batch.take(), |i, c| results[i] = Some(c))?;
        let out = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::Msg("a request finished without a completion".into()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((out, stats))
    }

    /// Continuous batching over requests that arrive while others decode (a server's loop).
    ///
    /// Before every step `intake(idle)` hands over the requests that arrived (numbered in
    /// arrival order from 0, across calls); `idle` is true when nothing is running or waiting,
    /// so it may block until something arrives. `None` means that nothing more will come: the
    /// running requests finish and `serve` returns. Each request's completion goes to
    /// `finished(index, ..)` as soon as it is done, an invalid request's error at once. The
    /// completions are the ones [`Engine::generate`] gives for the same requests.
    pub fn serve(
        &self,
        mut intake: impl FnMut(bool) -> Option<Vec<Request>>,
        mut finished: impl FnMut(usize, Result<Completion>),
    ) -> Result<GenerateStats> {
        let mut stats = GenerateStats::default();
        let mut live = Live(Default::default());
        let mut scheduler = Scheduler::default();
        let mut rows: Vec<Row> = Vec::new();
        let mut cache: Option<KvCache> = None;
        let mut arrived = 0usize;
        let mut open = true;
        loop {
            if open {
                let idle = live.0.is_empty();
                match intake(idle) {
                    Some(new) => {
                        for r in new {
                            let i = arrived;
                            arrived += 1;
                            match self.check(std::slice::from_ref(&r)) {
                                Ok(()) => {
                                    scheduler.waiting.push_back(i);
                                    live.0.insert(i, r);
                                }
                                Err(e) => finished(i, Err(e)),
                            }
                        }
                    }
                    None => open = false,
                }
            }
            let (admit, running) = scheduler.admit(self, &rows, &live);
            if running == 0 {
                if open {
                    continue;
                }
                break;
            }
            if !admit.is_empty() {
                let t_prefill = std::time::Instant::now();
                let (new_caches, place, logits) = self.prefill(&live, &admit, &mut stats)?;
                stats.prefills += 1;
                let mut new_rows: Vec<Row> = admit
                    .iter()
                    .map(|&i| Row {
                        req: i,
                        rng: ChaCha8Rng::seed_from_u64(live[i].params.seed),
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        supports: {
                            let p = &live[i].params;
                            (p.truncates() && p.keep_sampling_mask).then(SamplingSupports::default)
                        },
                        next_input: 0,
                        state: SeqState::Prefilling,
                    })
                    .collect();
                for (j, row) in new_rows.iter_mut().enumerate() {
                    if let Some(c) = self.advance(row, &logits[j], &live)? {
                        let (k, r) = place[j];
                        self.keep(&new_caches[k], r, &live[row.req].prompt, &c.tokens)?;
                        finished(row.req, Ok(c));
                    }
                }
                // Merge the running rows and the new ones into one cache.
                let joining: Vec<(&KvCache, usize)> =
                    place.iter().map(|&(k, r)| (&new_caches[k], r)).collect();
                let (c, r) =
                    self.rebuild(cache.as_ref(), rows, Some((joining, new_rows)), &live)?;
                cache = Some(c);
                rows = r;
                stats.rebuilds += 1;
                stats.prefill_seconds += t_prefill.elapsed().as_secs_f64();
            } else {
                // Drop finished rows when they are the majority (one copy, amortised).
                let dead = rows.iter().filter(|r| r.done()).count();
                if dead * 2 > rows.len() {
                    let (c, r) = self.rebuild(cache.as_ref(), rows, None, &live)?;
                    cache = Some(c);
                    rows = r;
                    stats.rebuilds += 1;
                }
            }
            if !rows.iter().all(|r| r.done()) {
                // One decode step for every running row.
                let t_decode = std::time::Instant::now();
                let c = cache.as_mut().expect("rows imply a cache");
                let ids: Vec<TokenId> = rows
                    .iter()
                    .map(|r| if r.done() { 0 } else { r.next_input })
                    .collect();
                let input = Tensor::from_vec(ids, (rows.len(), 1), self.model.device())?;
                let logits = self
                    .model
                    .forward_last(&input, c, &NoPerturbation)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                stats.decode_steps += 1;
                stats.peak_batch = stats
                    .peak_batch
                    .max(rows.iter().filter(|r| !r.done()).count());
                for (r, (row, l)) in rows.iter_mut().zip(&logits).enumerate() {
                    if !row.done() {
                        if let Some(done) = self.advance(row, l, &live)? {
                            self.keep(c, r, &live[row.req].prompt, &done.tokens)?;
                            finished(row.req, Ok(done));
                        }
                    }
                }
                stats.decode_seconds += t_decode.elapsed().as_secs_f64();
            }
            // Forget what finished (rows keep only their state until the next rebuild).
            for row in rows.iter().filter(|r| r.done()) {
                live.0.remove(&row.req);
            }
        }
        if let Ok(mut t) = self.totals.lock() {
            t.add(&stats);
        }
        Ok(stats)
    }

    /// A new cache holding the unfinished rows of `cache` followed by `joining` rows (from their
    /// own prefill cache); finished rows are dropped.
    fn rebuild(
        &self,
        cache: Option<&KvCache>,
        rows: Vec<Row>,
        joining: Option<Joining<'_>>,
        requests: &Live,
    ) -> Result<(KvCache, Vec<Row>)> {
        let mut parts: Vec<(&KvCache, usize)> = Vec::new();
        let mut kept: Vec<Row> = Vec::with_capacity(rows.len());
        for (r, row) in rows.into_iter().enumerate() {
            if !row.done() {
                let c = cache.ok_or_else(|| Error::Msg("running rows without a cache".into()))?;
                parts.push((c, r));
                kept.push(row);
            }
        }
        if let Some((places, new_rows)) = joining {
            parts.extend(places);
            kept.extend(new_rows);
        }
        let capacity = self.capacity_for(&parts, &kept, requests);
        Ok((KvCache::gather_rows(&parts, capacity)?, kept))
    }

    /// Capacity of a rebuilt cache: the longest row now plus the most tokens any row may
    /// still add.
    fn capacity_for(&self, parts: &[(&KvCache, usize)], rows: &[Row], requests: &Live) -> usize {
        let len = parts
            .iter()
            .map(|(c, r)| c.len() - c.left_pad().get(*r).copied().unwrap_or(0).min(c.len()))
            .max()
            .unwrap_or(0);
        let more = rows
            .iter()
            .map(|r| {
                requests[r.req]
                    .params
                    .max_new_tokens
                    .saturating_sub(r.tokens.len())
            })
            .max()
            .unwrap_or(0);
        len + more + 1
    }

    /// Keeps row `r` of `cache` (the sequence `prompt` + `tokens`, whose last token was
    /// sampled but never run) for a later prompt that extends it.
    fn keep(
        &self,
        cache: &KvCache,
        r: usize,
        prompt: &[TokenId],
        tokens: &[TokenId],
    ) -> Result<()> {
        let budget = self.config.prefix_cache_tokens;
        if budget == 0 || tokens.is_empty() {
            return Ok(());
        }
        let mut seq = Vec::with_capacity(prompt.len() + tokens.len() - 1);
        seq.extend_from_slice(prompt);
        seq.extend_from_slice(&tokens[..tokens.len() - 1]);
        let pad = cache.left_pad().get(r).copied().unwrap_or(0);
        if cache.len().saturating_sub(pad) != seq.len() || seq.len() > budget {
            // Not the row's exact history (cannot happen where this is called): keep nothing.
            return Ok(());
        }
        let kv = KvCache::gather_rows(&[(cache, r)], seq.len())?;
        self.prefixes
            .lock()
            .map_err(|_| Error::Msg("the prefix store's lock was poisoned".into()))?
            .insert(&self.model, seq, kv, budget);
        Ok(())
    }

    /// Prefills the prompts of `admit`: a prompt that extends a kept sequence continues its
    /// KV rows and runs only its new tokens; the others run together (left-padded). Returns
    /// the caches, where each admitted request's row is (`(cache, row)`, in `admit` order),
    /// and the last-position logits of each.
    fn prefill(
        &self,
        requests: &Live,
        admit: &[usize],
        stats: &mut GenerateStats,
    ) -> Result<Prefilled> {
        let mut caches = Vec::new();
        let mut place = vec![(0, 0); admit.len()];
        let mut logits = vec![Vec::new(); admit.len()];
        let mut fresh = Vec::with_capacity(admit.len());
        for (j, &i) in admit.iter().enumerate() {
            let prompt = &requests[i].prompt;
            let kept = if self.config.prefix_cache_tokens > 0 {
                self.prefixes
                    .lock()
                    .map_err(|_| Error::Msg("the prefix store's lock was poisoned".into()))?
                    .take(&self.model, prompt)
            } else {
                None
            };
            let Some(kv) = kept else {
                fresh.push(j);
                continue;
            };
            let reused = kv.len();
            let mut cache = KvCache::gather_rows(&[(&kv, 0)], prompt.len())?;
            let new = &prompt[reused..];
            let input = Tensor::from_vec(new.to_vec(), (1, new.len()), self.model.device())?;
            let l = self
                .model
                .forward_last(&input, &mut cache, &NoPerturbation)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            logits[j] = l.into_iter().next().unwrap_or_default();
            place[j] = (caches.len(), 0);
            caches.push(cache);
            stats.prefill_tokens += new.len();
            stats.reused_tokens += reused;
        }
        if fresh.is_empty() {
            return Ok((caches, place, logits));
        }
        let longest = fresh
            .iter()
            .map(|&j| requests[admit[j]].prompt.len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(fresh.len() * longest);
        let mut pads = Vec::with_capacity(fresh.len());
        for &j in &fresh {
            let p = &requests[admit[j]].prompt;
            pads.push(longest - p.len());
            ids.extend(std::iter::repeat_n(0, longest - p.len()));
            ids.extend_from_slice(p);
            stats.prefill_tokens += p.len();
        }
        let input = Tensor::from_vec(ids, (fresh.len(), longest), self.model.device())?;
        let mut cache = self.model.new_cache(longest, &pads);
        let rows = self
            .model
            .forward_last(&input, &mut cache, &NoPerturbation)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (k, (&j, l)) in fresh.iter().zip(rows).enumerate() {
            logits[j] = l;
            place[j] = (caches.len(), k);
        }
        caches.push(cache);
        Ok((caches, place, logits))
    }

    /// Whether a stop string ends within the newest token of `tokens`. Earlier tokens were
    /// checked when they were new, so only a window that can hold a stop string ending in the
    /// newest token is decoded (each token decodes to at least one byte; two more tokens
    /// cover a character split across tokens): O(stop length) per token, not O(length).
    fn tail_has_stop(&self, tokens: &[TokenId], stops: &[String]) -> Result<bool> {
        let tk = self.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid("stop strings need a tokenizer (Engine::with_tokenizer)")
        })?;
        let longest = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = tokens.len().saturating_sub(longest + 2);
        // A match in the window ends in the newest token: one ending earlier would have
        // finished the sequence then.
        let text = tk.decode(&tokens[from..], false)?;
        Ok(stops.iter().any(|s| text.contains(s.as_str())))
    }

    /// Samples the next token of `row` and records it; finishes the row and returns its
    /// completion if a stop rule fires.
    fn advance(
        &self,
        row: &mut Row,
        logits: &[f32],
        requests: &Live,
    ) -> Result<Option<Completion>> {
        let req = &requests[row.req];
        let p = &req.params;
        let drawn = sample_kept(logits, p, &mut row.rng)?;
        let tok = drawn.token;
        let lp = if self.config.exact_numerics {
            trainer_logprob(logits, tok, p, self.model.device())?
        } else {
            drawn.logprob
        };
        row.tokens.push(tok);
        row.logprobs.push(lp);
        if let Some(s) = row.supports.as_mut() {
            match &drawn.support {
                Support::Kept(ids) => s.push(Some(ids)),
                Support::Full => s.push(None),
                Support::Overflow => {
                    s.push(None);
                    s.overflowed += 1;
                }
            }
        }
        row.next_input = tok;
        let reason = if !p.ignore_eos && self.eos.contains(&tok) {
            Some(FinishReason::Eos)
        } else if p.stop_tokens.contains(&tok) {
            Some(FinishReason::StopToken)
        } else if !p.stop_strings.is_empty() && self.tail_has_stop(&row.tokens, &p.stop_strings)? {
            Some(FinishReason::StopString)
        } else if row.tokens.len() >= p.max_new_tokens
            || req.prompt.len() + row.tokens.len() >= self.max_context()
        {
            Some(FinishReason::MaxTokens)
        } else {
            None
        };
        row.state = SeqState::Decoding;
        Ok(reason.map(|finish_reason| {
            row.state = SeqState::Finished(finish_reason);
            Completion {
                tokens: std::mem::take(&mut row.tokens),
                logprobs: std::mem::take(&mut row.logprobs),
                finish_reason,
                supports: row.supports.take(),
            }
        }))
    }
}

impl crate::backend::RolloutBackend for Engine {
    fn generate(&self, requests: &[Request]) -> Result<crate::backend::Generation> {
        Ok(crate::backend::Generation {
            completions: Engine::generate(self, requests)?,
            policy_version: self.version,
        })
    }

    fn policy_version(&self) -> PolicyVersion {
        self.version
    }

    fn stats(&self) -> Option<GenerateStats> {
        Some(self.totals())
    }

    /// Rebuilds the model from `weights` in the engine's dtype, on its device (no copy where
    /// they already are; a LoRA run's base only once).
    fn publish(&mut self, version: PolicyVersion, weights: &ModelWeights) -> Result<()> {
        let (dtype, device) = (self.model.dtype(), self.model.device().clone());
        // A LoRA version reuses the base model (and its packed copies) of the last one.
        self.model = exact_model(
            Arc::new(self.models.build(weights, dtype, &device)?),
            self.config.exact_numerics,
        )?;
        self.version = version;
        // Sequences kept under the old weights are never continued by the new ones.
        if let Ok(mut p) = self.prefixes.lock() {
            *p = PrefixStore::default();
        }
        Ok(())
    }
}

/// `model`, or with `exact` a view of it that runs the exact numerics.
fn exact_model(model: Arc<Model>, exact: bool) -> Result<Arc<Model>> {
    if !exact || model.exact_numerics() {
        return Ok(model);
    }
    let mut m = (*model).clone();
    m.set_exact_numerics(true)?;
    Ok(Arc::new(m))
}

/// The log-prob of `token` as the trainer scores it (`alp-trainer`'s `score`): the logits row
/// at the trajectory's scoring temperature through `alp_model::token_logprobs`, the same
/// division and fused log-softmax-gather.
fn trainer_logprob(
    logits: &[f32],
    token: TokenId,
    params: &crate::SamplingParams,
    device: &Device,
) -> Result<f32> {
    let row = Tensor::from_slice(logits, (1, 1, logits.len()), device)?;
    let target = Tensor::from_vec(vec![token], (1, 1), device)?;
    let t = crate::sampling_info(params).scoring_temperature();
    Ok(alp_model::token_logprobs(&row, &target, t)?.to_vec2::<f32>()?[0][0])
}
