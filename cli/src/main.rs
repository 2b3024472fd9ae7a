//! `flotilla`: the one binary. Runs servers (`server`, `dev`) and node
//! agents (`node-agent`), and is the operator's command line (`cluster`,
//! `task`, `node`, `capacity`, `desktop`).

mod client;
mod fleet;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla_control_plane::fleet::FleetOptions;
use flotilla_control_plane::scheduler::Strategy;
use flotilla_control_plane::server::{self, RaftTuning, ServerOptions, StartMode};
use flotilla_control_plane::types::{Column, DesktopResources};
use flotilla_node_agent::host::{parse_bytes, parse_duration};
use flotilla_node_agent::AgentOptions;

use crate::client::{Client, Output};
use crate::fleet::{parse_label, resources_json, DrainRequest};

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
    /// Run a node agent: register this host and run the desktops placed on it.
    NodeAgent(NodeAgentArgs),
    /// Run a desktop's Wayland compositor (inside its sandbox; rendering
    /// through gpud).
    Compositor(CompositorArgs),
    /// A desktop's session (inside its sandbox): the compositor, then its
    /// apps, restarted when they exit.
    #[command(hide = true)]
    DesktopSession(DesktopSessionArgs),
    /// List, inspect, cordon and drain nodes.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Capacity, allocation and free room per node, per GPU and in total.
    Capacity {
        #[command(flatten)]
        client: ClientArgs,
        /// Read this server's state without a quorum round-trip.
        #[arg(long)]
        stale: bool,
    },
    /// GPUs as gpud serves them.
    Gpu {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: GpuCommand,
    },
    /// Inspect desktops.
    Desktop {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: DesktopCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Every node: status, eligibility, drain, desktops and resources.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// One node with its GPUs and desktops.
    Status { name: String },
    /// Stop placing new desktops on a node.
    Cordon { name: String },
    /// Let a node take new desktops again.
    Uncordon { name: String },
    /// Forget a node that is down (decommissioned).
    Remove { name: String },
    /// Move a node's desktops elsewhere (the node becomes ineligible).
    Drain {
        name: String,
        /// Stop the desktops still there after this long (e.g. 30m; default 1h).
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Stop every desktop now instead of migrating a batch at a time.
        #[arg(long, conflicts_with = "deadline")]
        force: bool,
        /// Follow the drain to the end (Ctrl-C stops following, not the drain).
        #[arg(long)]
        monitor: bool,
        /// Cancel the node's drain.
        #[arg(long, conflicts_with_all = ["deadline", "force"])]
        disable: bool,
        /// Desktops migrated at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        max_parallel: u32,
    },
}

#[derive(clap::Args)]
struct DesktopSessionArgs {
    /// gpud's socket for this desktop.
    #[arg(long, env = "FLOTILLA_GPU_SOCKET")]
    gpu_socket: PathBuf,
    /// An app to run (program and arguments, split at spaces); repeatable.
    #[arg(long = "app")]
    apps: Vec<String>,
    /// How the apps' windows share the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Tiled)]
    layout: LayoutArg,
    /// The keyboard's xkb layout (us, de, fr, ...; empty: us).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_layout: String,
    /// The xkb layout's variant (dvorak, nodeadkeys, ...; empty: none).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_variant: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LayoutArg {
    /// Every window fills the output.
    Maximized,
    /// Side by side when there are two (the oldest on the left).
    Tiled,
}

impl From<LayoutArg> for flotilla_compositor::Layout {
    fn from(layout: LayoutArg) -> Self {
        match layout {
            LayoutArg::Maximized => flotilla_compositor::Layout::Maximized,
            LayoutArg::Tiled => flotilla_compositor::Layout::Tiled,
        }
    }
}

#[derive(clap::Args)]
struct CompositorArgs {
    /// gpud's socket for this desktop.
    #[arg(long, env = "FLOTILLA_GPU_SOCKET")]
    gpu_socket: PathBuf,
    /// The Wayland socket's name in $XDG_RUNTIME_DIR (WAYLAND_DISPLAY).
    #[arg(long, default_value = "wayland-1")]
    socket_name: String,
    /// Output refresh rate in Hz.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=240))]
    refresh: u32,
    /// The control socket (input, windows, focus) for the node agent.
    #[arg(long)]
    control: Option<PathBuf>,
    /// How toplevels share the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Maximized)]
    layout: LayoutArg,
    /// The keyboard's xkb layout (us, de, fr, ...; empty: us).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_layout: String,
    /// The xkb layout's variant (dvorak, nodeadkeys, ...; empty: none).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    keyboard_variant: String,
}

#[derive(Subcommand)]
enum GpuCommand {
    /// Each GPU's capabilities and, per desktop, the GPU memory gpud
    /// charges it and its budget.
    Info {
        /// Only this node's GPUs.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum DesktopCommand {
    /// Every desktop: task, node and state.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Run a command inside a running desktop's sandbox, as its user; its
    /// stdout and stderr stream here and its exit status is ours.
    Exec {
        /// The desktop (see `flotilla desktop list`).
        id: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Save a running desktop's current frame as a PNG.
    Screenshot {
        id: String,
        /// Where to write it.
        #[arg(short, long, default_value = "screenshot.png")]
        output_file: PathBuf,
    },
    /// Type into a running desktop, press a key, or list its windows.
    Input {
        id: String,
        /// Text typed through the desktop's keymap; `\n` is Enter, `\t` Tab.
        #[arg(long, group = "what")]
        text: Option<String>,
        /// A key (xkb keysym name: Return, Escape, F5, Control_L) tapped.
        #[arg(long, group = "what")]
        key: Option<String>,
        /// List the desktop's windows.
        #[arg(long, group = "what")]
        windows: bool,
        /// Any control request as JSON (e.g. {"op":"motion","x":10,"y":20}).
        #[arg(long, group = "what")]
        json: Option<String>,
    },
    /// The tail of a running desktop's output.
    Logs {
        id: String,
        /// Bytes from the end, e.g. 64KiB (at most 16MiB).
        #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
        tail: u64,
    },
}

#[derive(Args)]
struct NodeAgentArgs {
    /// Control-plane server(s), HOST:PORT; repeat or comma-separate.
    #[arg(long, required = true, value_delimiter = ',')]
    join: Vec<String>,
    /// File holding a node-join token.
    #[arg(long)]
    token_file: PathBuf,
    /// This node's name (a-z, 0-9, '-').
    #[arg(long, value_parser = parse_node_name)]
    name: String,
    /// Where the node keeps its identity and runtime journal.
    #[arg(long)]
    data_dir: PathBuf,
    /// Label the node (key=value); repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Millicores offered to desktops (default: the host's CPUs minus the reserve).
    #[arg(long)]
    cpu_millis: Option<u64>,
    /// Memory offered to desktops, e.g. 16GiB (default: the host's minus the reserve).
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Most desktops on this node.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    desktop_slots: u32,
    /// Millicores held back for the host.
    #[arg(long, default_value_t = 250)]
    reserve_cpu_millis: u64,
    /// Memory held back for the host.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    reserve_memory: u64,
    /// Time between SIGTERM and SIGKILL when stopping a desktop.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stop_grace: std::time::Duration,
    /// Do not enumerate GPUs (a host without Vulkan).
    #[arg(long)]
    no_gpus: bool,
    /// Do not run gpud (desktops get no GPU socket).
    #[arg(long)]
    no_gpud: bool,
    /// GPU-memory budget of a desktop that asked for none (its display).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    display_gpu_memory: u64,
    /// Display size gpud offers each desktop, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800", value_parser = parse_display_size)]
    display_size: (u32, u32),
    /// Run desktops without cgroup limits.
    #[arg(long)]
    no_cgroups: bool,
    /// How desktops run: `sandbox` (namespaces; needs root) or `process`.
    #[arg(long, value_enum, default_value = "sandbox")]
    runtime: RuntimeArg,
    /// Most processes in one desktop (cgroup pids limit).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    pids_limit: u64,
    /// Run each desktop's session in its sandbox: the compositor (through
    /// gpud) and the --desktop-app apps, instead of --desktop-command.
    #[arg(long)]
    desktop_session: bool,
    /// An app the desktop session runs (program and arguments, split at
    /// spaces); repeatable. Default: foot and chromium (skipped when not
    /// installed).
    #[arg(long = "desktop-app")]
    desktop_apps: Vec<String>,
    /// The desktops' keyboard: xkb layout (us, de, fr, ...).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    desktop_keyboard_layout: String,
    /// The desktops' keyboard: xkb variant (dvorak, nodeadkeys, ...).
    #[arg(long, default_value = "", value_parser = flotilla_compositor::keymap::check_name)]
    desktop_keyboard_variant: String,
    /// Command each desktop runs under the process runtime.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, default_values = ["sleep", "infinity"])]
    desktop_command: Vec<String>,
    /// Give sandboxes loopback only (no veth, bridge or NAT).
    #[arg(long)]
    no_desktop_network: bool,
    /// The desktops' /16: the bridge takes .0.1, policies take /18s.
    #[arg(long, default_value = "10.88.0.0/16", value_parser = parse_subnet)]
    desktop_subnet: std::net::Ipv4Addr,
    /// The host bridge desktops' veths are ports of.
    #[arg(long, default_value = "flotilla0")]
    desktop_bridge: String,
    /// Control-plane endpoints (IP:PORT) desktops with egress control-plane
    /// may reach; repeatable (default: the --join addresses).
    #[arg(long = "desktop-endpoint")]
    desktop_endpoints: Vec<std::net::SocketAddr>,
    /// Network namespaces kept ready for starting desktops.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=256))]
    netns_pool: u64,
    /// On shutdown leave sandboxes running; the next start adopts them.
    #[arg(long)]
    leave_desktops_running: bool,
    /// A directory whose usr/ is layered (overlayfs, read-only) over the
    /// host's /usr in every desktop.
    #[arg(long)]
    desktop_image: Option<PathBuf>,
    /// A host character device every desktop gets in its /dev; repeatable.
    #[arg(long = "desktop-device")]
    desktop_devices: Vec<PathBuf>,
    /// Keep each destroyed desktop's home and workspace under DATA/kept/.
    #[arg(long)]
    keep_desktop_files: bool,
}

/// `A.B.0.0/16`.
fn parse_subnet(text: &str) -> Result<std::net::Ipv4Addr, String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a subnet; use A.B.0.0/16"))?;
    if prefix != "16" {
        return Err(format!("the desktop subnet must be a /16, not /{prefix}"));
    }
    let address: std::net::Ipv4Addr = address
        .parse()
        .map_err(|error| format!("{address:?}: {error}"))?;
    if u32::from(address) & 0xFFFF != 0 {
        return Err(format!("{text} has host bits set; use A.B.0.0/16"));
    }
    Ok(address)
}

fn parse_node_name(text: &str) -> Result<String, String> {
    flotilla_control_plane::types::validate_node_name(text)?;
    Ok(text.to_owned())
}

#[derive(Args)]
struct FleetArgs {
    /// Shortest node heartbeat lease; bigger fleets get longer ones.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    node_heartbeat_ttl: std::time::Duration,
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
enum RuntimeArg {
    Sandbox,
    Process,
}

#[derive(Clone, Copy, ValueEnum)]
enum EgressArg {
    None,
    ControlPlane,
    Open,
}

impl EgressArg {
    fn policy(self) -> flotilla_control_plane::types::Egress {
        use flotilla_control_plane::types::Egress;
        match self {
            EgressArg::None => Egress::None,
            EgressArg::ControlPlane => Egress::ControlPlane,
            EgressArg::Open => Egress::Open,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Binpack,
    Spread,
}

impl FleetArgs {
    fn options(&self) -> anyhow::Result<FleetOptions> {
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
        if self.node_heartbeat_ttl < std::time::Duration::from_millis(500) {
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

#[derive(Args)]
struct DevArgs {
    /// Data directory (default: the user's data directory, flotilla/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Run only the control plane, no node agent.
    #[arg(long)]
    no_node: bool,
    #[command(flatten)]
    fleet: FleetArgs,
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
    /// Create a task (in the backlog unless --column says otherwise).
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        repository: Option<String>,
        #[arg(long, value_parser = parse_column)]
        column: Option<Column>,
        /// Desktop CPU request in millicores (default: the server's).
        #[arg(long)]
        cpu_millis: Option<u64>,
        /// Desktop memory request, e.g. 4GiB.
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// GPU memory the desktop needs on one GPU, e.g. 8GiB.
        #[arg(long, value_parser = parse_bytes)]
        gpu_memory: Option<u64>,
        /// The desktop needs a GPU.
        #[arg(long)]
        needs_gpu: bool,
        /// Only on nodes with this label (key=value); repeatable.
        #[arg(long = "constraint", value_parser = parse_label)]
        constraints: Vec<(String, String)>,
        /// What its desktop may reach: none, control-plane (default) or open.
        #[arg(long, value_enum)]
        egress: Option<EgressArg>,
        /// An app its desktop session starts instead of the node's (a
        /// command line); repeatable.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Its desktop's xkb keyboard layout (default: the node's).
        #[arg(long)]
        keyboard_layout: Option<String>,
        /// Its xkb variant.
        #[arg(long, requires = "keyboard_layout")]
        keyboard_variant: Option<String>,
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

fn run_compositor(args: &CompositorArgs) -> ExitCode {
    if args.socket_name.is_empty() || args.socket_name.contains('/') || args.socket_name.len() > 64
    {
        eprintln!("error: --socket-name must be a plain name (e.g. wayland-1)");
        return ExitCode::from(2);
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        eprintln!("error: XDG_RUNTIME_DIR is not set (the Wayland socket lives there)");
        return ExitCode::from(2);
    }
    let options = flotilla_compositor::Options {
        socket_name: args.socket_name.clone(),
        gpu_socket: args.gpu_socket.clone(),
        refresh_mhz: args.refresh * 1000,
        control: args.control.clone(),
        layout: args.layout.into(),
        keyboard_layout: args.keyboard_layout.clone(),
        keyboard_variant: args.keyboard_variant.clone(),
    };
    match flotilla_compositor::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("compositor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // A sandbox's init must start single-threaded (it forks): handled before
    // the async runtime exists. Internal: the node agent runs it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "sandbox-init" {
        let status = flotilla_node_agent::sandbox::init::main(std::path::Path::new(&args[2]));
        return ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX));
    }
    // Internal: the node agent's sandbox zygote, which forks sandboxes.
    if args.len() == 2 && args[1] == "sandbox-zygote" {
        let status = flotilla_node_agent::sandbox::zygote::zygote_main();
        return ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX));
    }
    // Internal too: the node agent runs it for `desktop exec` (setns into a
    // user namespace needs a single-threaded process).
    if args.len() >= 5 && args[1] == "sandbox-exec" && args[3] == "--" {
        let command: Vec<String> = args[4..]
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let status =
            flotilla_node_agent::sandbox::init::exec_main(std::path::Path::new(&args[2]), &command);
        return ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX));
    }
    let cli = Cli::parse();
    // The compositor runs its own event loop, single-threaded.
    if let TopCommand::Compositor(args) = &cli.command {
        return run_compositor(args);
    }
    if let TopCommand::DesktopSession(args) = &cli.command {
        let options = flotilla_compositor::session::SessionOptions {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("flotilla")),
            gpu_socket: args.gpu_socket.clone(),
            apps: args
                .apps
                .iter()
                .map(|app| app.split_whitespace().map(str::to_owned).collect())
                .collect(),
            layout: match args.layout {
                LayoutArg::Maximized => "maximized",
                LayoutArg::Tiled => "tiled",
            },
            keyboard_layout: args.keyboard_layout.clone(),
            keyboard_variant: args.keyboard_variant.clone(),
        };
        let status = flotilla_compositor::session::run(&options);
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `desktop exec` ends with the remote command's status.
        Err(error) if error.downcast_ref::<fleet::RemoteExit>().is_some() => {
            let code = error.downcast_ref::<fleet::RemoteExit>().map_or(1, |e| e.0);
            ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
        }
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
                    column,
                    cpu_millis,
                    memory,
                    gpu_memory,
                    needs_gpu,
                    constraints,
                    egress,
                    apps,
                    keyboard_layout,
                    keyboard_variant,
                } => {
                    let resources = resources_json(
                        cpu_millis,
                        memory,
                        gpu_memory,
                        needs_gpu,
                        constraints,
                        egress.map(EgressArg::policy),
                    )?;
                    let profile = flotilla_control_plane::types::DesktopProfile {
                        apps,
                        keyboard_layout: keyboard_layout.unwrap_or_default(),
                        keyboard_variant: keyboard_variant.unwrap_or_default(),
                    };
                    profile.validate().map_err(anyhow::Error::msg)?;
                    let profile = (!profile.is_empty())
                        .then(|| serde_json::to_value(&profile))
                        .transpose()?;
                    client
                        .task_create(&title, &description, repository, column, resources, profile)
                        .await
                }
                TaskCommand::List { column, stale } => client.task_list(column, stale).await,
                TaskCommand::Show { id } => client.task_show(&id).await,
                TaskCommand::Move { id, to, position } => client.task_move(&id, to, position).await,
                TaskCommand::Delete { id } => client.task_delete(&id).await,
            }
        }
        TopCommand::NodeAgent(args) => run_node_agent(args).await,
        // Handled in main, outside the async runtime.
        TopCommand::Compositor(_) | TopCommand::DesktopSession(_) => {
            anyhow::bail!("the compositor runs outside the async runtime")
        }
        TopCommand::Node { client, command } => {
            let client = connect(client)?;
            match command {
                NodeCommand::List { stale } => client.node_list(stale).await,
                NodeCommand::Status { name } => client.node_status(&name).await,
                NodeCommand::Cordon { name } => client.node_eligibility(&name, false).await,
                NodeCommand::Uncordon { name } => client.node_eligibility(&name, true).await,
                NodeCommand::Remove { name } => client.node_remove(&name).await,
                NodeCommand::Drain {
                    name,
                    deadline,
                    force,
                    monitor,
                    disable,
                    max_parallel,
                } => {
                    let request = DrainRequest {
                        deadline,
                        force,
                        monitor,
                        disable,
                        max_parallel,
                    };
                    tokio::select! {
                        result = client.node_drain(&name, request) => result,
                        _ = tokio::signal::ctrl_c() => {
                            eprintln!("stopped following; the drain goes on (cancel it with --disable)");
                            Ok(())
                        }
                    }
                }
            }
        }
        TopCommand::Capacity { client, stale } => connect(client)?.capacity(stale).await,
        TopCommand::Gpu {
            client,
            command: GpuCommand::Info { node },
        } => connect(client)?.gpu_info(node.as_deref()).await,
        TopCommand::Desktop { client, command } => {
            let client = connect(client)?;
            match command {
                DesktopCommand::List { stale } => client.desktop_list(stale).await,
                DesktopCommand::Exec { id, command } => client.desktop_exec(&id, command).await,
                DesktopCommand::Logs { id, tail } => client.desktop_logs(&id, tail).await,
                DesktopCommand::Screenshot { id, output_file } => {
                    client.desktop_screenshot(&id, &output_file).await
                }
                DesktopCommand::Input {
                    id,
                    text,
                    key,
                    windows,
                    json,
                } => {
                    let request = match (text, key, windows, json) {
                        (Some(text), None, false, None) => {
                            serde_json::json!({"op": "text", "text": unescape(&text)})
                        }
                        (None, Some(key), false, None) => {
                            serde_json::json!({"op": "key", "name": key})
                        }
                        (None, None, true, None) => serde_json::json!({"op": "windows"}),
                        (None, None, false, Some(json)) => {
                            serde_json::from_str(&json).context("--json is not a JSON object")?
                        }
                        _ => anyhow::bail!("give one of --text, --key, --windows or --json"),
                    };
                    client.desktop_input(&id, request).await
                }
            }
        }
    }
}

fn read_token_file(path: &std::path::Path, kind: &str) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("read the {kind} token from {}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        anyhow::bail!("{} is empty; it must hold a {kind} token", path.display());
    }
    Ok(token)
}

fn agent_options(args: NodeAgentArgs) -> anyhow::Result<AgentOptions> {
    let token = read_token_file(&args.token_file, "node-join")?;
    let mut options = AgentOptions::new(args.join, token, args.name, args.data_dir);
    options.labels = args.labels.into_iter().collect();
    options.cpu_millis = args.cpu_millis;
    options.memory_bytes = args.memory;
    options.desktop_slots = args.desktop_slots;
    options.reserve_cpu_millis = args.reserve_cpu_millis;
    options.reserve_memory_bytes = args.reserve_memory;
    options.stop_grace = args.stop_grace;
    options.gpus = !args.no_gpus;
    options.gpud = !args.no_gpud;
    options.desktop_session = args.desktop_session;
    if !args.desktop_apps.is_empty() {
        options.desktop_apps = args.desktop_apps.clone();
    }
    options.desktop_keyboard = (
        args.desktop_keyboard_layout.clone(),
        args.desktop_keyboard_variant.clone(),
    );
    options.display_gpu_memory = args.display_gpu_memory;
    options.display_size = args.display_size;
    options.cgroups = !args.no_cgroups;
    options.sandbox = matches!(args.runtime, RuntimeArg::Sandbox);
    options.pids_limit = args.pids_limit;
    options.leave_desktops_running = args.leave_desktops_running;
    if let Some(image) = &args.desktop_image {
        flotilla_node_agent::sandbox::validate_base_image(image).map_err(anyhow::Error::msg)?;
    }
    for device in &args.desktop_devices {
        flotilla_node_agent::sandbox::validate_device(device).map_err(anyhow::Error::msg)?;
    }
    options.base_image = args.desktop_image;
    options.devices = args.desktop_devices;
    options.keep_desktop_files = args.keep_desktop_files;
    options.network = if args.no_desktop_network {
        None
    } else {
        let settings = flotilla_node_agent::sandbox::net::NetworkSettings {
            bridge: args.desktop_bridge,
            subnet: args.desktop_subnet,
            control_plane: args.desktop_endpoints,
            pool_size: args.netns_pool as usize,
            ..Default::default()
        };
        settings
            .validate()
            .map_err(|error| anyhow::anyhow!("desktop network: {error}"))?;
        Some(settings)
    };
    options.desktop_command = args.desktop_command;
    Ok(options)
}

async fn run_node_agent(args: NodeAgentArgs) -> anyhow::Result<()> {
    init_logging();
    let options = agent_options(args)?;
    flotilla_node_agent::run(options, shutdown_signal()).await
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
        start,
        tuning: args.tuning.into(),
        fleet: args.fleet.options()?,
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
        fleet: args.fleet.options()?,
    };
    let token_path = data_dir.join("operator.token");
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let agent_slot = agent_task.clone();
    let run_node = !args.no_node;
    let result = server::run(options, shutdown_signal(), move |running| {
        let control = running.control.clone();
        let addr = running.local_addr;
        let handle = tokio::spawn(async move {
            // Announce once the token works, so the printed command succeeds.
            while !control.state.with_state(|state| state.has_tokens()) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            println!();
            println!(
                "Flotilla is running (dev mode: one server{}, data in {}).",
                if run_node { " and one node agent" } else { "" },
                data_dir.display()
            );
            // The board, with a one-time sign-in code (10 minutes).
            match std::fs::read_to_string(&token_path) {
                Ok(token) => println!(
                    "  board:  http://{addr}/#login={}   (sign-in link, valid once for 10 minutes)",
                    control.logins.issue(token.trim())
                ),
                Err(_) => println!("  board:  http://{addr}/"),
            }
            println!("  API:    http://{addr}/api/v1   (OpenAPI: /api/v1/openapi.json)");
            println!(
                "  token:  {} (the CLI finds it by itself)",
                token_path.display()
            );
            println!(
                "  try:    flotilla task create --title 'my first task' --column planning && flotilla desktop list && flotilla node list"
            );
            println!("Press Ctrl-C to stop.");
            if run_node {
                match dev_agent_options(&data_dir, addr) {
                    Ok(options) => {
                        let stopped = async {
                            let _ = agent_stopped.await;
                        };
                        if let Err(error) = flotilla_node_agent::run(options, stopped).await {
                            tracing::error!("the dev node agent stopped: {error:#}");
                        }
                    }
                    Err(error) => tracing::error!("cannot start the dev node agent: {error:#}"),
                }
            }
        });
        *agent_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    })
    .await;
    let _ = stop_agent.send(());
    let handle = agent_task.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(handle) = handle {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), handle).await;
    }
    result
}

/// The dev node agent: this host, named after it, data beside the server's.
fn dev_agent_options(data_dir: &std::path::Path, addr: SocketAddr) -> anyhow::Result<AgentOptions> {
    let token = read_token_file(&data_dir.join("node-join.token"), "node-join")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let name = match name.trim_matches('-') {
        "" => "dev-node".to_owned(),
        name => name.to_owned(),
    };
    let mut options = AgentOptions::new(
        vec![addr.to_string()],
        token,
        name,
        data_dir.join("node-agent"),
    );
    // dev leaves nothing on the host when it exits.
    options.remove_network_on_exit = true;
    // Each desktop is a real one: compositor, terminal, browser.
    options.desktop_session = true;
    Ok(options)
}

/// `WIDTHxHEIGHT`, each 64 to 8192 and even.
fn parse_display_size(text: &str) -> Result<(u32, u32), String> {
    let (width, height) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT (e.g. 1280x800)"))?;
    let parse = |part: &str, what: &str| -> Result<u32, String> {
        let value: u32 = part
            .parse()
            .map_err(|_| format!("{what} {part:?} is not a number"))?;
        if !(64..=8192).contains(&value) || !value.is_multiple_of(2) {
            return Err(format!("{what} {value} must be even, from 64 to 8192"));
        }
        Ok(value)
    };
    Ok((parse(width, "width")?, parse(height, "height")?))
}

/// `\n`, `\t` and `\\` in a `--text` argument (shells pass them literally).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}
