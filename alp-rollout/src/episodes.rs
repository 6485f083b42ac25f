//! Multi-turn episodes: generate a turn, hand its text to an [`Environment`], append the
//! observation tokens (loss mask 0), continue, until the environment is done or a limit is hit.

use crate::backend::Request;
use crate::backend::RolloutBackend;
use crate::sampling::SamplingParams;
use alp_core::{
    mix_seed, ChatMessage, Environment, Error, FinishReason, Outcome, PolicyVersion, Result,
    SamplingInfo, SamplingSupports, Step, Task, TokenId, Trajectory, TrajectoryGroup,
};
use alp_model::Tokenizer;
use serde::{Deserialize, Serialize};

/// Limits and sampling of episodes. The runner owns both limits (turns and tokens): when one
/// is hit before the environment ends the episode, it asks the environment for the outcome of
/// a truncated episode ([`Environment::truncate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpisodeConfig {
    /// Most model turns per episode.
    pub max_turns: usize,
    /// Most response tokens per episode (generated and observation tokens together).
    pub max_total_tokens: usize,
    /// Sampling of every turn (`max_new_tokens` bounds one turn; `seed` is mixed with the
    /// episode and turn).
    pub sampling: SamplingParams,
    /// Strings that end a turn and hand it to the environment (besides EOS).
    pub turn_stop_strings: Vec<String>,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        EpisodeConfig {
            max_turns: 4,
            max_total_tokens: 512,
            sampling: SamplingParams::default(),
            turn_stop_strings: vec!["</tool_call>".into()],
        }
    }
}

impl EpisodeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_turns == 0 {
            return Err(Error::config("max_turns", "must be at least 1"));
        }
        if self.max_total_tokens == 0 {
            return Err(Error::config("max_total_tokens", "must be at least 1"));
        }
        self.sampling.validate()
    }
}

struct Episode {
    task: usize,
    env: Box<dyn Environment>,
    messages: Vec<ChatMessage>,
    prompt: Vec<TokenId>,
    response: Vec<TokenId>,
    mask: Vec<u8>,
    logp: Vec<f32>,
    supports: SamplingSupports,
    turns: u32,
    seed: u64,
    done: Option<(Outcome, FinishReason)>,
    /// The oldest weight version that sampled any of its turns.
    version: Option<PolicyVersion>,
    /// Where its turns stop: the sampling's and the runner's stop strings, then the
    /// environment's.
    stops: Vec<String>,
    /// The tools its chat template shows (the runner's, else the environment's).
    tools: Option<serde_json::Value>,
}

impl Episode {
    /// Ends the episode by a runner limit (`why`), with the environment's truncated outcome.
    fn truncate(&mut self, why: FinishReason) -> Result<()> {
        let mut outcome = self.env.truncate()?;
        outcome.truncated = true;
        self.done = Some((outcome, why));
        Ok(())
    }
}

/// What a trajectory records of how its tokens were sampled.
pub fn sampling_info(p: &SamplingParams) -> SamplingInfo {
    SamplingInfo {
        temperature: p.temperature,
        top_k: p.top_k as u32,
        top_p: p.top_p,
        min_p: p.min_p,
    }
}

fn render(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tools: Option<&serde_json::Value>,
) -> Result<String> {
    tok.apply_chat_template(messages, add_generation_prompt, tools)
}

/// The tokens the chat template puts between the end of the model's turn and the start of its
/// next turn: the closing of the assistant message (unless the model already generated its
/// end-of-turn token), the observation messages, and the generation prompt.
pub fn observation_tokens(
    tok: &Tokenizer,
    history: &[ChatMessage],
    assistant_text: &str,
    ended_with_eos: bool,
    observation: &[ChatMessage],
    tools: Option<&serde_json::Value>,
) -> Result<Vec<TokenId>> {
    let mut with_turn = history.to_vec();
    with_turn.push(ChatMessage::new("assistant", assistant_text));
    let closed = render(tok, &with_turn, false, tools)?;
    let mut full = with_turn.clone();
    full.extend_from_slice(observation);
    let next = render(tok, &full, true, tools)?;
    let appended = next.strip_prefix(closed.as_str()).ok_or_else(|| {
        Error::Tokenizer(
            "the chat template does not render a conversation as a prefix of its continuation; multi-turn episodes need one that does".into(),
        )
    })?;
    let at = closed.rfind(assistant_text).ok_or_else(|| {
        Error::Tokenizer(
            "the chat template changes the assistant's text; cannot find the end of the turn"
                .into(),
        )
    })?;
    let mut closing = &closed[at + assistant_text.len()..];
    if ended_with_eos {
        for &e in tok.eos_ids() {
            let s = tok.decode(&[e], false)?;
            if let Some(rest) = closing.strip_prefix(s.as_str()) {
                closing = rest;
                break;
            }
        }
    }
    tok.encode(&format!("{closing}{appended}"), false)
}

/// Most environment steps run at once (tools such as the Python sandbox wait on processes).
const MAX_PARALLEL_STEPS: usize = 16;

/// `env.step(text)` of every active episode, several at once (a tool call, e.g. a sandboxed
/// interpreter, runs while others do); results in the order of `active`.
fn step_envs(eps: &mut [Episode], active: &[usize], texts: &[String]) -> Vec<Result<Step>> {
    let mut envs: Vec<(usize, &mut Box<dyn Environment>)> = eps
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| active.binary_search(i).is_ok())
        .map(|(i, e)| (i, &mut e.env))
        .collect();
    let per = envs.len().div_ceil(MAX_PARALLEL_STEPS).max(1);
    let mut out: Vec<Option<Result<Step>>> = (0..active.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = envs
            .chunks_mut(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter_mut()
                        .map(|(i, env)| {
                            let k = active.binary_search(i).expect("an active episode");
                            (k, env.step(&texts[k]))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A panicked step leaves its results empty (reported below).
        for results in handles.into_iter().filter_map(|h| h.join().ok()) {
            for (k, r) in results {
                out[k] = Some(r);
            }
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Msg("an environment step panicked".into()))))
        .collect()
}

/// A batch of episodes for [`run_episodes`]: which tasks, how each episode's environment is
/// made, how many samples per task and with which settings.
#[derive(Clone, Copy)]
pub struct Episodes<'a> {
    /// The tasks; one [`TrajectoryGroup`] each.
    pub tasks: &'a [Task],
    /// Builds a fresh environment per episode.
    pub make_env: &'a dyn Fn(&Task) -> Result<Box<dyn Environment>>,
    /// Episodes per task (the group of GRPO-style advantages).
    pub group_size: usize,
    /// Turn and token limits, sampling parameters, stop strings.
    pub config: &'a EpisodeConfig,
    /// Tool descriptions for the chat template, if any.
    pub tools: Option<&'a serde_json::Value>,
}

/// Runs `group_size` episodes of every task, all turns batched through `backend`, and returns
/// one [`TrajectoryGroup`] per task. Every trajectory is stamped with the oldest weight
/// version the backend reported for its turns.
pub fn run_episodes(
    backend: &dyn RolloutBackend,
    tokenizer: &Tokenizer,
    episodes: &Episodes,
) -> Result<Vec<TrajectoryGroup>> {
    let Episodes {
        tasks,
        make_env,
        group_size,
        config,
        tools,
    } = *episodes;
    config.validate()?;
    if group_size == 0 {
        return Err(Error::config("group_size", "must be at least 1"));
    }
    let mut eps = Vec::with_capacity(tasks.len() * group_size);
    for (ti, task) in tasks.iter().enumerate() {
        for g in 0..group_size {
            let mut env = make_env(task)?;
            let messages = env.reset(task)?;
            // The runner's tools, else those the environment declares.
            let tools = tools.cloned().or_else(|| env.tool_specs());
            let mut stops = config.sampling.stop_strings.clone();
            for s in config
                .turn_stop_strings
                .iter()
                .cloned()
                .chain(env.turn_stop_strings())
            {
                if !stops.contains(&s) {
                    stops.push(s);
                }
            }
            let text = render(tokenizer, &messages, true, tools.as_ref())?;
            let prompt = tokenizer.encode(&text, false)?;
            eps.push(Episode {
                task: ti,
                env,
                messages,
                prompt,
                response: Vec::new(),
                mask: Vec::new(),
                logp: Vec::new(),
                supports: SamplingSupports::default(),
                turns: 0,
                seed: mix_seed(config.sampling.seed, (ti * group_size + g) as u64),
                done: None,
                version: None,
                stops,
                tools,
            });
        }
    }
    for turn in 0..config.max_turns {
        let active: Vec<usize> = (0..eps.len()).filter(|&i| eps[i].done.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let mut requests = Vec::with_capacity(active.len());
        for &i in &active {
            let e = &eps[i];
            let room = config.max_total_tokens.saturating_sub(e.response.len());
            let mut params = config.sampling.clone();
            params.max_new_tokens = params.max_new_tokens.min(room).max(1);
            params.seed = mix_seed(e.seed, turn as u64);
            params.stop_strings = e.stops.clone();
            let mut prompt = e.prompt.clone();
            prompt.extend_from_slice(&e.response);
            requests.push(Request { prompt, params });
        }
        let generation = backend.generate(&requests)?;
        if generation.completions.len() != requests.len() {
            return Err(Error::Msg(format!(
                "the rollout backend answered {} of {} requests",
                generation.completions.len(),
                requests.len()
            )));
        }
        let completions = generation.completions;
        for &i in &active {
            let v = &mut eps[i].version;
            *v = Some(v.map_or(generation.policy_version, |v| {
                v.min(generation.policy_version)
            }));
        }
        let mut texts = Vec::with_capacity(active.len());
        for (&i, c) in active.iter().zip(&completions) {
            let e = &mut eps[i];
            e.turns += 1;
            e.response.extend_from_slice(&c.tokens);
            e.mask.extend(std::iter::repeat_n(1u8, c.tokens.len()));
            e.logp.extend_from_slice(&c.logprobs);
            match &c.supports {
                Some(s) => e.supports.extend(s),
                None => e.supports.push_full(c.tokens.len()),
            }
            texts.push(tokenizer.decode(&c.tokens, true)?);
        }
        let steps = step_envs(&mut eps, &active, &texts);
        for (((&i, c), text), step) in active.iter().zip(completions).zip(texts).zip(steps) {
            let e = &mut eps[i];
            match step? {
                Step::Done(outcome) => {
                    e.done = Some((outcome, c.finish_reason));
                }
                Step::Observation(obs) => {
                    let out_of_room = e.response.len() >= config.max_total_tokens;
                    if turn + 1 == config.max_turns || out_of_room {
                        e.truncate(if out_of_room {
                            FinishReason::MaxTokens
                        } else {
                            FinishReason::TurnLimit
                        })?;
                        continue;
                    }
                    let ended_with_eos = c.finish_reason == FinishReason::Eos;
                    let obs_tokens = observation_tokens(
                        tokenizer,
                        &e.messages,
                        &text,
                        ended_with_eos,
                        &obs,
                        e.tools.as_ref(),
                    )?;
                    e.messages.push(ChatMessage::new("assistant", text));
                    e.messages.extend(obs);
                    e.response.extend_from_slice(&obs_tokens);
                    e.mask.extend(std::iter::repeat_n(0u8, obs_tokens.len()));
                    e.logp.extend(std::iter::repeat_n(0.0f32, obs_tokens.len()));
                    e.supports.push_full(obs_tokens.len());
                    if e.response.len() >= config.max_total_tokens {
                        e.truncate(FinishReason::MaxTokens)?;
                    }
                }
            }
        }
    }
    for e in eps.iter_mut().filter(|e| e.done.is_none()) {
        e.truncate(FinishReason::TurnLimit)?;
    }
    let sampling = sampling_info(&config.sampling);
    let mut groups: Vec<TrajectoryGroup> = tasks
        .iter()
        .map(|t| TrajectoryGroup {
            task_id: t.id.clone(),
            trajectories: Vec::with_capacity(group_size),
        })
        .collect();
    for e in eps {
        let (outcome, finish_reason) = e
            .done
            .ok_or_else(|| Error::Msg("an episode did not finish".into()))?;
        let t = Trajectory {
            prompt: e.prompt,
            response: e.response,
            loss_mask: e.mask,
            logp_infer: e.logp,
            policy_version: e.version.unwrap_or_else(|| backend.policy_version()),
            outcome,
            sampling,
            finish_reason,
            num_turns: e.turns,
            supports: (config.sampling.truncates() && config.sampling.keep_sampling_mask)
                .then_some(e.supports),
        };
        t.validate()?;
        groups[e.task].trajectories.push(t);
    }
    Ok(groups)
}
