//! `flotilla server`: one control-plane server (Raft member, HTTP API,
//! gRPC). Also owns the fleet flags (`--scheduler`, `--desktop-memory`, ...)
//! that `flotilla dev` takes too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use flotilla_control_plane::fleet::FleetOptions;
use flotilla_control_plane::scheduler::Strategy;
use flotilla_control_plane::server::{self, RaftTuning, ServerOptions, StartMode};
use flotilla_control_plane::types::DesktopResources;

use crate::commands::process::{init_logging, read_token_file, shutdown_signal};
use crate::parse::{parse_bytes, parse_duration};

#[derive(Args)]
pub struct ServerArgs {
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
    /// HOST:PORT of the desktop door, the only port desktops reach: hosted
    /// git (and later the gateway) for desktop tokens only (default: --listen's
    /// port + 1).
    #[arg(long)]
    desktop_listen: Option<SocketAddr>,
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
    #[command(flatten)]
    fleet: FleetArgs,
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

/// How the control plane runs the fleet: heartbeats, placement and the
/// default desktop request.
#[derive(Args)]
pub struct FleetArgs {
    /// Shortest node heartbeat lease; bigger fleets get longer ones.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    node_heartbeat_ttl: Duration,
    /// Heartbeats per second the leader takes from the whole fleet.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    max_node_heartbeats_per_second: u32,
    /// Placement strategy.
    #[arg(long, value_enum, default_value = "binpack")]
    scheduler: StrategyArg,
    /// Default desktop CPU request, millicores.
    #[arg(long, default_value_t = DesktopResources::default().cpu_millis)]
    desktop_cpu_millis: u64,
    /// Default desktop memory request.
    #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
    desktop_memory: u64,
    /// Default desktop GPU memory request (0: no GPU needed).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    desktop_gpu_memory: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Binpack,
    Spread,
}

impl FleetArgs {
    /// The fleet options the flags give, checked.
    pub fn options(&self) -> anyhow::Result<FleetOptions> {
        let default_resources = DesktopResources {
            cpu_millis: self.desktop_cpu_millis,
            memory_bytes: self.desktop_memory,
            gpu_memory_bytes: self.desktop_gpu_memory,
            needs_gpu: self.desktop_gpu_memory > 0,
            labels: Default::default(),
            egress: Default::default(),
            profile: Default::default(),
        };
        default_resources
            .validate()
            .map_err(|error| anyhow::anyhow!("default desktop request: {error}"))?;
        if self.node_heartbeat_ttl < Duration::from_millis(500) {
            anyhow::bail!("--node-heartbeat-ttl must be at least 500ms");
        }
        Ok(FleetOptions {
            min_heartbeat_ttl: self.node_heartbeat_ttl,
            max_heartbeats_per_second: self.max_node_heartbeats_per_second,
            strategy: match self.scheduler {
                StrategyArg::Binpack => Strategy::Binpack,
                StrategyArg::Spread => Strategy::Spread,
            },
            default_resources,
            ..FleetOptions::default()
        })
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let start = match (args.bootstrap, args.join) {
        (true, _) => StartMode::Bootstrap,
        (false, Some(seed)) => {
            let path = args
                .token_file
                .expect("clap requires --token-file with --join");
            let token = read_token_file(&path, "server-join")?;
            StartMode::Join { seed, token }
        }
        (false, None) => StartMode::Existing,
    };
    let options = ServerOptions {
        node_id: args.node_id,
        data_dir: args.data_dir,
        listen: args.listen,
        advertise: args.advertise,
        desktop_listen: Some(match args.desktop_listen {
            Some(addr) => addr,
            None => server::default_desktop_listen(args.listen)?,
        }),
        start,
        tuning: args.tuning.into(),
        fleet: args.fleet.options()?,
    };
    server::run(options, shutdown_signal(), |_| {}).await
}
