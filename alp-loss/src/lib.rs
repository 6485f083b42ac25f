//! `alp-loss` holds every RL objective of the alp workspace as a pure function over typed
//! tensor inputs: GRPO, Bypass, TIS, MIS, IcePop, GSPO, CISPO, Token-ALP and Seq-ALP (each with
//! an optional dual clip), selected by the serde-tagged [`Objective`] enum; aggregation modes;
//! group advantage estimators; KL-to-reference estimators; and ratio-tail diagnostics.
//! It depends on candle and alp-core only, never on model code.
//!
//! ```
//! use alp_loss::{Aggregation, LossInputs, Objective};
//! use candle_core::{Device, Tensor, Var};
//!
//! let dev = Device::Cpu;
//! let logp = Var::new(&[[-1.0f64, -2.0], [-0.5, -0.1]], &dev)?;
//! let logp_infer = Tensor::new(&[[-1.1f64, -1.9], [-0.5, -0.3]], &dev)?;
//! let adv = Tensor::new(&[1.0f64, -1.0], &dev)?;
//! let mask = Tensor::new(&[[1.0f64, 1.0], [1.0, 0.0]], &dev)?;
//! let obj: Objective = serde_json::from_str(r#"{"method": "alp-seq", "dual_clip": 3.0}"#).unwrap();
//! assert!(!obj.needs_logp_old());
//! let out = obj.compute(
//!     &LossInputs { logp: logp.as_tensor(), logp_old: None, logp_infer: &logp_infer, advantages: &adv, mask: &mask },
//!     Aggregation::TokenMean,
//! )?;
//! let grads = out.loss.backward()?;
//! assert!(grads.get(logp.as_tensor()).is_some());
//! # Ok::<(), alp_core::Error>(())
//! ```
#![warn(missing_docs)]
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod advantage;
pub mod aggregate;
pub mod diagnostics;
pub mod inputs;
pub mod kl;
pub mod names;
pub mod objectives;

pub use advantage::{compute_advantages, AdvantageEstimator, Advantages};
pub use aggregate::{masked_mean, masked_row_mean, Aggregation};
pub use diagnostics::{entropy_from_logits, mismatch_report, RatioCollector, RatioInputs};
pub use inputs::{LossInputs, LossOutput};
pub use kl::{kl_per_token, KlEstimator, KlPenalty};
pub use objectives::{Level, Objective, PolicyObjective, METHODS};
