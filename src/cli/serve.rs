//! `sknet serve`: the HTTP inference server, until SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use sknet::device::default_device;
use sknet::infer;
use sknet::serve::{ServeConfig, ServedModel, Server};

use super::args::{load_weights, parse_input_size, preprocessing, WeightsArgs};
use super::CliError;

/// `sknet serve` arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// How long the first request of a batch waits for more, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Most requests waiting for a forward pass; more are answered 503.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body, in MB.
    #[arg(long, default_value_t = 20)]
    pub max_body_mb: usize,
    /// A request's deadline, in milliseconds (504 past it).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Crop size `S` or `HxW` (default: the weights' preprocessing, else the network's size).
    #[arg(long)]
    pub input: Option<String>,
}

fn address(host: &str, port: u16) -> Result<SocketAddr, CliError> {
    let bad = |message: String| CliError::Argument {
        arg: format!("--host {host}"),
        message,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("not an address this machine resolves: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

/// Resolves once SIGTERM or SIGINT arrives.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves until stopped.
pub fn run(args: ServeArgs) -> Result<String, CliError> {
    let mut config = ServeConfig::new(address(&args.host, args.port)?);
    config.max_batch = args.max_batch;
    config.max_wait = Duration::from_millis(args.max_wait_ms);
    config.queue = args.queue;
    config.max_body_bytes = args.max_body_mb.saturating_mul(1_000_000);
    config.timeout = Duration::from_millis(args.timeout_ms);
    config.validate()?;
    let size = args.input.as_deref().map(parse_input_size).transpose()?;
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let preprocess = preprocessing(loaded.preprocess, size, model.config.default_input);
    let classes = infer::class_names(loaded.classes, model.config.num_classes)?;
    let served = ServedModel {
        model,
        preprocess,
        classes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Image decoding runs here: a few threads bound its memory.
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(served, &config, &device).await?;
        let addr = server.local_addr()?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{addr}")?;
        stdout.flush()?;
        server.run(stop_signal()).await?;
        Ok::<_, CliError>(())
    })?;
    Ok(String::new())
}
