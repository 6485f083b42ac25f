//! `alp serve`: the sampling engine behind an HTTP server (alp-serve).
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// `alp serve`'s flags.
#[derive(Args)]
pub struct ServeArgs {
    /// Model directory to serve from the start (without it: 503 until the first reload).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to bind (loopback by default; 0.0.0.0 exposes it to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Weights dtype: auto (the directory's torch_dtype), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Largest `n` of one request.
    #[arg(long, default_value_t = 64)]
    pub max_n: usize,
    /// Largest `max_tokens` of one request.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// The served model's name.
    #[arg(long, default_value = "alp")]
    pub name: String,
}

/// Serves until the process is stopped.
pub fn run(a: ServeArgs) -> Result<()> {
    let ip: std::net::IpAddr = a
        .host
        .parse()
        .with_context(|| format!("--host {} is not an IP address", a.host))?;
    let cfg = alp_serve::ServeConfig {
        listen: std::net::SocketAddr::new(ip, a.port),
        model: a.model,
        model_name: a.name,
        dtype: a.dtype,
        device: a.device,
        engine: alp_rollout::EngineConfig {
            max_batch: a.max_batch,
            ..Default::default()
        },
        reload_token: std::env::var("ALP_RELOAD_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        max_n: a.max_n,
        max_tokens: a.max_tokens,
        ..Default::default()
    };
    let reload = if cfg.reload_token.is_some() {
        "on"
    } else {
        "off (set ALP_RELOAD_TOKEN)"
    };
    let weights = if cfg.model.is_some() {
        "weights version 0"
    } else {
        "no weights until the first reload"
    };
    let server = alp_serve::Server::start(cfg)?;
    println!(
        "alp serve: listening on {} ({weights}; reload {reload})",
        server.url()
    );
    std::io::stdout().flush()?;
    server.wait()?;
    Ok(())
}
