//! The embedded default: a character-level tokenizer with chat and tool tokens, compact
//! arithmetic tasks (easy: two-digit + and −, done in the head; hard: three-digit × two-digit,
//! unreliable without the calculator), and SFT demonstrations in which the tool appears on a
//! minority of the hard problems.

use alp_core::{ChatMessage, Result, Task, TaskSource, TokenId};
use alp_envs::math::{MathGenerator, MathTaskKind, Split, TaskStream};
use alp_envs::tools::{Calculator, Tool, ToolRegistry};
use alp_model::Tokenizer;
use alp_rollout::observation_tokens;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Special tokens (removed by `decode(.., skip_special_tokens = true)`).
pub const SPECIAL_TOKENS: &[&str] = &["<|pad|>", "<|user|>", "<|assistant|>", "<|im_end|>"];
/// Opening of a calculator call, one token for the tiny model.
pub const CALL_PREFIX: &str =
    "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"";
/// Closing of a calculator call, one token.
pub const CALL_SUFFIX: &str = "\"}}</tool_call>";
/// Multi-character pieces that are single (non-special) tokens.
pub const ADDED_TOKENS: &[&str] = &[
    CALL_PREFIX,
    CALL_SUFFIX,
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "\\boxed{",
];
/// The end-of-turn token.
pub const EOS: &str = "<|im_end|>";

/// The chat template of the default tokenizer (compact, one token per role marker).
pub const CHAT_TEMPLATE: &str = "{%- for m in messages -%}\
{%- if m.role == 'user' -%}<|user|>{{ m.content }}\
{%- elif m.role == 'assistant' -%}<|assistant|>{{ m.content }}<|im_end|>\
{%- elif m.role == 'tool' -%}<tool_response>{{ m.content }}</tool_response>\
{%- else -%}{{ m.content }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}";

/// Builds the default tokenizer: printable ASCII characters, the special and added tokens,
/// the chat template and `<|im_end|>` as EOS.
pub fn build_tokenizer() -> Result<Tokenizer> {
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::split::{Split as SplitPre, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior};
    let err =
        |e: Box<dyn std::error::Error + Send + Sync>| alp_core::Error::Tokenizer(e.to_string());
    let mut vocab: std::collections::HashMap<String, u32> = Default::default();
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(s.to_string(), i as u32);
    }
    let mut next = SPECIAL_TOKENS.len() as u32;
    for c in (b' '..=b'~').map(char::from) {
        vocab.insert(c.to_string(), next);
        next += 1;
    }
    vocab.insert("\n".into(), next);
    next += 1;
    for s in ADDED_TOKENS {
        vocab.insert(s.to_string(), next);
        next += 1;
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("?".into())
        .build()
        .map_err(err)?;
    let mut t = tokenizers::Tokenizer::new(model);
    let split = SplitPre::new(
        SplitPattern::Regex(".|\n".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(err)?;
    t.with_pre_tokenizer(Some(split));
    t.with_decoder(Some(Fuse::new()));
    t.add_special_tokens(SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(err)?;
    t.add_tokens(ADDED_TOKENS.iter().map(|s| AddedToken::from(*s, false)))
        .map_err(err)?;
    Tokenizer::from_tokenizer(t)
        .with_chat_template(CHAT_TEMPLATE)
        .with_eos_token(EOS)
}

/// The compact question of a generated task: `What is 942 * 59?` → `942*59=`.
fn compact(question: &str) -> String {
    let q = question
        .trim_start_matches("What is ")
        .trim_end_matches('?');
    format!("{}=", q.replace(' ', ""))
}

/// The run's tasks (`[tasks]`): the embedded arithmetic mix, or a dataset file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskMix {
    /// The embedded tasks: `arithmetic` (the default: two-digit ± and, as `hard_fraction`
    /// of them, three-digit × two-digit; answers of a few tokens) or `chain` (long sums of 8
    /// to 11 one-digit terms, demonstrated and answered as a worked solution of
    /// 63–125 tokens, one line per addition: the long-answer regime; size
    /// `rl.max_new_tokens` for it, e.g. 160).
    pub embedded: String,
    /// Share of hard (multiplication) tasks of the embedded arithmetic.
    pub hard_fraction: f64,
    /// A dataset to train on instead: JSONL, or Parquet as Hugging Face datasets ship it
    /// (GSM8K `question`/`answer`, MATH `problem`/`solution`, or `prompt`/`answer`
    /// records), with a checkpoint as `model.base`. Each pass goes through it in its own
    /// seeded order. Empty: the embedded arithmetic tasks.
    pub train_file: String,
    /// The held-out file the evaluations run on (needed with `train_file`).
    pub heldout_file: String,
    /// The records' shape: `auto` (from the first record's field names), `gsm8k`, `math` or
    /// `plain`.
    pub format: String,
}

impl Default for TaskMix {
    fn default() -> Self {
        TaskMix {
            embedded: "arithmetic".into(),
            hard_fraction: 0.5,
            train_file: String::new(),
            heldout_file: String::new(),
            format: "auto".into(),
        }
    }
}

/// The embedded task families `tasks.embedded` names.
pub const EMBEDDED_TASKS: &[&str] = &["arithmetic", "chain"];

/// The kind of the long-answer tasks (`tasks.embedded = "chain"`).
pub const CHAIN_KIND: &str = "chain";

/// The most tokens a chain task's worked solution takes with its end-of-turn token (eleven
/// terms take 120–125; a test draws the longest from the generator): `rl.max_new_tokens` must
/// leave room for it. The shortest (eight terms) take 63.
pub const CHAIN_MAX_ANSWER_TOKENS: usize = 130;

impl TaskMix {
    /// The embedded generators and their weights; an unknown `embedded` is a config error.
    pub fn generators(&self) -> alp_core::Result<Vec<(MathGenerator, f64)>> {
        let h = self.hard_fraction.clamp(0.0, 1.0);
        match self.embedded.as_str() {
            "arithmetic" => Ok(vec![
                (MathGenerator::new(MathTaskKind::AddSub, 1), 1.0 - h),
                (MathGenerator::new(MathTaskKind::Multiply, 2), h),
            ]),
            "chain" => Ok(vec![
                (MathGenerator::new(MathTaskKind::Chain, 1), 0.5),
                (MathGenerator::new(MathTaskKind::Chain, 2), 0.5),
            ]),
            other => Err(alp_core::Error::config(
                "tasks.embedded",
                format!(
                    "unknown task family `{other}`; known: {}",
                    EMBEDDED_TASKS.join(", ")
                ),
            )),
        }
    }

    /// The records' shape (`None`: detected from the first record).
    pub fn dataset_format(&self) -> alp_core::Result<Option<alp_envs::math::DatasetFormat>> {
        use alp_envs::math::DatasetFormat;
        Ok(match self.format.as_str() {
            "auto" => None,
            "gsm8k" => Some(DatasetFormat::gsm8k()),
            "math" => Some(DatasetFormat::math()),
            "plain" => Some(DatasetFormat::plain()),
            other => {
                return Err(alp_core::Error::config(
                    "tasks.format",
                    format!("unknown format `{other}`; known: auto, gsm8k, math, plain"),
                ))
            }
        })
    }

    /// The tasks of a dataset file (`train_file` or `heldout_file`); a bad record is an
    /// error naming the file, the line or row and the field.
    pub fn load(&self, path: &str) -> alp_core::Result<Vec<alp_core::Task>> {
        let p = std::path::Path::new(path);
        let (tasks, _) = alp_envs::math::load_tasks(
            p,
            self.dataset_format()?.as_ref(),
            "dataset",
            alp_envs::math::OnError::Reject,
        )?;
        if tasks.is_empty() {
            return Err(alp_core::Error::Parse {
                path: p.to_path_buf(),
                message: "holds no task: each record needs a question and an answer (GSM8K `question`/`answer`, MATH `problem`/`solution`, or `prompt`/`answer`)".into(),
            });
        }
        Ok(tasks)
    }
}

/// The kind of the default task's hard problems, the ones worth a calculator call.
pub const HARD_KIND: &str = "multiply";

/// Whether tasks of `kind` are the default task's tool-worthy ones (the evaluation's tool-call
/// rate counts them).
pub fn is_tool_worthy(kind: &str) -> bool {
    kind == HARD_KIND
}

/// The default task stream: easy (`add-sub`) and hard (`multiply`) tasks with compact
/// prompts, train or held-out.
#[derive(Debug, Clone)]
pub struct ArithmeticTasks {
    inner: TaskStream,
    compact: bool,
}

impl ArithmeticTasks {
    /// A stream of `split` with `seed` (an unknown `tasks.embedded`, which `validate`
    /// refuses, gives the arithmetic mix).
    pub fn new(mix: &TaskMix, split: Split, seed: u64) -> Self {
        let generators = mix
            .generators()
            .unwrap_or_else(|_| TaskMix::default().generators().unwrap_or_default());
        ArithmeticTasks {
            inner: TaskStream::new(generators, split, seed),
            compact: true,
        }
    }

    /// Full prompts instead of compact ones: the boxed-answer system instruction and
    /// `What is 942 * 59?` (for real instruct models).
    pub fn verbose(mut self) -> Self {
        self.compact = false;
        self
    }
}

impl TaskSource for ArithmeticTasks {
    fn next_task(&mut self) -> Option<Task> {
        let mut t = self.inner.next_task()?;
        if self.compact {
            let q = alp_envs::math::generators::question_of(&t).to_string();
            t.messages = vec![ChatMessage::new("user", compact(&q))];
        }
        Some(t)
    }
    fn cursor(&self) -> u64 {
        self.inner.cursor()
    }
    fn seek(&mut self, cursor: u64) {
        self.inner.seek(cursor)
    }
}

/// The calculator registry of the default.
pub fn registry() -> ToolRegistry {
    let mut r = ToolRegistry::new();
    r.register(Calculator);
    r
}

/// One SFT example: prompt tokens, response tokens, and the response's loss mask.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Prompt tokens.
    pub prompt: Vec<TokenId>,
    /// Response tokens.
    pub response: Vec<TokenId>,
    /// 1 where the model is trained (its own tokens), 0 on observations.
    pub mask: Vec<u8>,
    /// Whether the demonstration calls the tool.
    pub uses_tool: bool,
}

/// A demonstration for `task`: a direct `\\boxed{answer}`, or — with probability
/// `tool_fraction` on hard tasks — a calculator call, its response, then the boxed answer; a
/// chain task's is its worked solution (`alp_envs::math::generators::worked_solution`).
pub fn demonstration(
    tok: &Tokenizer,
    task: &Task,
    tool_fraction: f64,
    rng: &mut impl Rng,
) -> Result<SftExample> {
    let prompt = tok.encode(&tok.apply_chat_template(&task.messages, true, None)?, false)?;
    let answer = format!("\\boxed{{{}}}", task.answer);
    let end = tok.token_id(EOS)?;
    // A response in one turn: `text` then the end of the turn, every token trained.
    let direct = |text: &str| -> Result<SftExample> {
        let mut response = tok.encode(text, false)?;
        response.push(end);
        Ok(SftExample {
            prompt: prompt.clone(),
            mask: vec![1; response.len()],
            response,
            uses_tool: false,
        })
    };
    if task.kind == CHAIN_KIND {
        let q = &task.messages[0].content;
        let work = alp_envs::math::generators::worked_solution(q).ok_or_else(|| {
            alp_core::Error::Msg(format!("chain task `{q}` is not a sum of integers"))
        })?;
        return direct(&work);
    }
    let uses_tool = task.kind == HARD_KIND && rng.random_bool(tool_fraction.clamp(0.0, 1.0));
    if !uses_tool {
        return direct(&answer);
    }
    let q = &task.messages[0].content;
    let expr = q.trim_end_matches('=');
    let call = format!("{CALL_PREFIX}{expr}{CALL_SUFFIX}");
    let result = Calculator
        .call(&serde_json::json!({ "expression": expr }))
        .map_err(|e| alp_core::Error::Msg(e.to_string()))?;
    let obs = [ChatMessage::new("tool", result)];
    let call_tokens = tok.encode(&call, false)?;
    let obs_tokens = observation_tokens(tok, &task.messages, &call, false, &obs, None)?;
    let mut final_tokens = tok.encode(&answer, false)?;
    final_tokens.push(end);
    let mut response = call_tokens.clone();
    let mut mask = vec![1u8; call_tokens.len()];
    response.extend_from_slice(&obs_tokens);
    mask.extend(std::iter::repeat_n(0u8, obs_tokens.len()));
    response.extend_from_slice(&final_tokens);
    mask.extend(std::iter::repeat_n(1u8, final_tokens.len()));
    Ok(SftExample {
        prompt,
        response,
        mask,
        uses_tool,
    })
}

/// The endless, seeded stream of demonstrations from the train split (made one at a time, so
/// a long SFT never holds them all).
pub fn demonstration_stream<'a>(
    tok: &'a Tokenizer,
    mix: &TaskMix,
    tool_fraction: f64,
    seed: u64,
) -> impl Iterator<Item = Result<SftExample>> + 'a {
    let mut tasks = ArithmeticTasks::new(mix, Split::Train, seed ^ 0x5F7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    std::iter::from_fn(move || {
        Some(
            tasks
                .next_task()
                .ok_or_else(|| alp_core::Error::Msg("task stream ended".into()))
                .and_then(|t| demonstration(tok, &t, tool_fraction, &mut rng)),
        )
    })
}

/// The first `n` demonstrations of [`demonstration_stream`].
pub fn demonstrations(
    tok: &Tokenizer,
    mix: &TaskMix,
    tool_fraction: f64,
    seed: u64,
    n: usize,
) -> Result<Vec<SftExample>> {
    demonstration_stream(tok, mix, tool_fraction, seed)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_round_trips_and_uses_single_tokens_for_tool_markup() {
        let tok = build_tokenizer().unwrap();
        let s = format!("{CALL_PREFIX}942*59{CALL_SUFFIX}");
        let ids = tok.encode(&s, false).unwrap();
        assert_eq!(ids.len(), 2 + 6);
        assert_eq!(tok.decode(&ids, true).unwrap(), s);
        let chat = tok
            .apply_chat_template(&[ChatMessage::new("user", "12+5=")], true, None)
            .unwrap();
        assert_eq!(chat, "<|user|>12+5=<|assistant|>");
        let ids = tok.encode(&chat, false).unwrap();
        assert_eq!(ids.len(), 1 + 5 + 1);
        assert!(tok.vocab_size() <= alp_model::presets::alp_default().vocab_size);
        assert_eq!(tok.eos_ids(), &[tok.token_id(EOS).unwrap()]);
    }

    /// The long-answer family: every demonstration is the worked solution the verifier grades
    /// correct, 63 to `CHAIN_MAX_ANSWER_TOKENS` tokens long, each line the previous one with
    /// its first two terms added; a config that leaves no room for it is refused.
    #[test]
    fn chain_demonstrations_are_long_worked_solutions_the_verifier_accepts() {
        let tok = build_tokenizer().unwrap();
        let mix = TaskMix {
            embedded: CHAIN_KIND.into(),
            ..Default::default()
        };
        let mut tasks = ArithmeticTasks::new(&mix, Split::Train, 3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (mut shortest, mut longest) = (usize::MAX, 0);
        for _ in 0..2000 {
            let task = tasks.next_task().unwrap();
            assert_eq!(task.kind, CHAIN_KIND);
            let ex = demonstration(&tok, &task, 0.5, &mut rng).unwrap();
            shortest = shortest.min(ex.response.len());
            longest = longest.max(ex.response.len());
            let text = tok.decode(&ex.response, true).unwrap();
            assert!(alp_envs::math::grade(&task.answer, &text).correct, "{text}");
            let q = task.messages[0].content.trim_end_matches('=');
            let mut prev: Vec<i64> = q.split('+').map(|t| t.parse().unwrap()).collect();
            for line in text.lines().take_while(|l| !l.starts_with('\\')) {
                let now: Vec<i64> = line.split('+').map(|t| t.parse().unwrap()).collect();
                assert_eq!(now[0], prev[0] + prev[1], "{text}");
                assert_eq!(now[1..], prev[2..], "{text}");
                prev = now;
            }
            assert_eq!(prev.len(), 1, "{text}");
        }
        assert!(shortest >= 60, "{shortest}");
        assert!(
            longest <= CHAIN_MAX_ANSWER_TOKENS && longest > 120,
            "{longest}"
        );
        let mut cfg = crate::config::TrainConfig::default();
        cfg.tasks.embedded = CHAIN_KIND.into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("rl.max_new_tokens"), "{e}");
        cfg.rl.max_new_tokens = 160;
        cfg.rl.max_total_tokens = 200;
        cfg.validate().unwrap();
        cfg.tasks.embedded = "chains".into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("tasks.embedded") && e.contains("chain"), "{e}");
    }

    #[test]
    fn tool_demonstration_masks_the_observation() {
        let tok = build_tokenizer().unwrap();
        let task = Task {
            id: "t".into(),
            kind: "multiply".into(),
            messages: vec![ChatMessage::new("user", "942*59=")],
            answer: "55578".into(),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let ex = demonstration(&tok, &task, 1.0, &mut rng).unwrap();
        assert!(ex.uses_tool);
        let text = tok.decode(&ex.response, false).unwrap();
        assert_eq!(text, format!("{CALL_PREFIX}942*59{CALL_SUFFIX}<|im_end|><tool_response>55578</tool_response><|assistant|>\\boxed{{55578}}<|im_end|>"));
        let masked: Vec<TokenId> = ex
            .response
            .iter()
            .zip(&ex.mask)
            .filter(|(_, m)| **m == 0)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            tok.decode(&masked, false).unwrap(),
            "<|im_end|><tool_response>55578</tool_response><|assistant|>"
        );
    }
}
