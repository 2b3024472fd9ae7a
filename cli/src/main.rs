//! `flotilla`: the one binary. Runs servers (`server`, `dev`) and is the
//! operator's command line (`cluster`, `task`).

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla_control_plane::server::{self, RaftTuning, ServerOptions, StartMode};
use flotilla_control_plane::types::Column;

use crate::client::{Client, Output};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Run fleets of AI coding agents, each in its own GPU-backed desktop"
)]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// Run a control-plane server.
    Server(ServerArgs),
    /// Run the whole system on this machine (one server, dev data directory).
    Dev(DevArgs),
    /// Inspect and change cluster membership.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, list and move tasks on the board.
    Task {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TaskCommand,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// This server's id in the cluster (1 or more), stable for its lifetime.
    #[arg(long)]
    node_id: u64,
    /// Where the Raft log, snapshots and secrets live.
    #[arg(long)]
    data_dir: PathBuf,
    /// HOST:PORT serving gRPC and HTTP.
    #[arg(long)]
    listen: SocketAddr,
    /// HOST:PORT other servers reach this one at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Start a new cluster with this server as its only member.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster at HOST:PORT (needs --token-file with a server-join token).
    #[arg(long, requires = "token_file")]
    join: Option<String>,
    /// File holding the server-join token, for --join.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Args)]
struct TuningArgs {
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = RaftTuning::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout.
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_min_ms)]
    election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_max_ms)]
    election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = RaftTuning::default().snapshot_every)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, default_value_t = RaftTuning::default().keep_logs)]
    keep_logs: u64,
}

impl From<TuningArgs> for RaftTuning {
    fn from(args: TuningArgs) -> RaftTuning {
        RaftTuning {
            heartbeat_ms: args.heartbeat_ms,
            election_timeout_min_ms: args.election_timeout_min_ms,
            election_timeout_max_ms: args.election_timeout_max_ms,
            snapshot_every: args.snapshot_every,
            keep_logs: args.keep_logs,
        }
    }
}

#[derive(Args)]
struct DevArgs {
    /// Data directory (default: the user's data directory, flotilla/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
}

#[derive(Args)]
struct ClientArgs {
    /// Server to talk to.
    #[arg(
        long,
        env = "FLOTILLA_ADDR",
        default_value = "127.0.0.1:7100",
        global = true
    )]
    addr: String,
    /// Operator token (default: the token `flotilla dev` saved).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Table,
    Json,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Leader, term and members.
    Status,
    /// Remove a server from the cluster.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Create a task in the backlog.
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        repository: Option<String>,
    },
    /// List tasks.
    List {
        #[arg(long, value_parser = parse_column)]
        column: Option<Column>,
        /// Read this server's state without a quorum round-trip.
        #[arg(long)]
        stale: bool,
    },
    /// Show one task.
    Show { id: String },
    /// Move a task to another column.
    Move {
        id: String,
        #[arg(long, value_parser = parse_column)]
        to: Column,
        /// Position in the destination column (default: last).
        #[arg(long)]
        position: Option<u32>,
    },
    /// Delete a task.
    Delete { id: String },
}

fn parse_column(text: &str) -> Result<Column, String> {
    text.parse()
}

/// The default dev data directory, shared by `flotilla dev` and the CLI's
/// token lookup.
fn dev_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from(".local/share"))
        .join("flotilla")
        .join("dev")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        TopCommand::Server(args) => run_server(args).await,
        TopCommand::Dev(args) => run_dev(args).await,
        TopCommand::Cluster { client, command } => {
            let client = connect(client)?;
            match command {
                ClusterCommand::Status => client.cluster_status().await,
                ClusterCommand::Remove { id } => client.cluster_remove(id).await,
            }
        }
        TopCommand::Task { client, command } => {
            let client = connect(client)?;
            match command {
                TaskCommand::Create {
                    title,
                    description,
                    repository,
                } => client.task_create(&title, &description, repository).await,
                TaskCommand::List { column, stale } => client.task_list(column, stale).await,
                TaskCommand::Show { id } => client.task_show(&id).await,
                TaskCommand::Move { id, to, position } => client.task_move(&id, to, position).await,
                TaskCommand::Delete { id } => client.task_delete(&id).await,
            }
        }
    }
}

fn connect(args: ClientArgs) -> anyhow::Result<Client> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let path = dev_data_dir().join("operator.token");
            std::fs::read_to_string(&path)
                .map(|token| token.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no token: pass --token or set FLOTILLA_TOKEN (no dev token at {})",
                        path.display()
                    )
                })?
        }
    };
    let output = match args.output {
        OutputArg::Table => Output::Table,
        OutputArg::Json => Output::Json,
    };
    Client::new(args.addr, token, output)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let start = match (args.bootstrap, args.join) {
        (true, _) => StartMode::Bootstrap,
        (false, Some(seed)) => {
            let path = args
                .token_file
                .expect("clap requires --token-file with --join");
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("read the server-join token from {}", path.display()))?
                .trim()
                .to_owned();
            if token.is_empty() {
                anyhow::bail!(
                    "{} is empty; it must hold a server-join token",
                    path.display()
                );
            }
            StartMode::Join { seed, token }
        }
        (false, None) => StartMode::Existing,
    };
    let options = ServerOptions {
        node_id: args.node_id,
        data_dir: args.data_dir,
        listen: args.listen,
        advertise: args.advertise,
        start,
        tuning: args.tuning.into(),
    };
    server::run(options, shutdown_signal(), |_| {}).await
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    init_logging();
    let data_dir = args.data_dir.unwrap_or_else(dev_data_dir);
    let start = if data_dir.join("flotilla-server.json").exists() {
        StartMode::Existing
    } else {
        StartMode::Bootstrap
    };
    let options = ServerOptions {
        node_id: 1,
        data_dir: data_dir.clone(),
        listen: args.listen,
        advertise: None,
        start,
        tuning: RaftTuning::default(),
    };
    let token_path = data_dir.join("operator.token");
    server::run(options, shutdown_signal(), move |running| {
        let control = running.control.clone();
        let addr = running.local_addr;
        tokio::spawn(async move {
            // Announce once the token works, so the printed command succeeds.
            while !control.state.with_state(|state| state.has_tokens()) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            println!();
            println!(
                "Flotilla is running (dev mode: one server, data in {}).",
                data_dir.display()
            );
            println!("  API:    http://{addr}/api/v1   (OpenAPI: /api/v1/openapi.json)");
            println!(
                "  token:  {} (the CLI finds it by itself)",
                token_path.display()
            );
            println!(
                "  try:    flotilla task create --title 'my first task' && flotilla task list"
            );
            println!("Press Ctrl-C to stop.");
        });
    })
    .await
}
