//! `flotilla node-agent`: register this host with the control plane and run
//! the desktops placed on it. The flags become [`AgentOptions`], checked here
//! (subnet, display size, base image, devices) before anything starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use flotilla_node_agent::sandbox::net::NetworkSettings;
use flotilla_node_agent::AgentOptions;

use crate::commands::process::{init_logging, read_token_file, shutdown_signal};
use crate::parse::{parse_bytes, parse_duration, parse_label};

#[derive(Args)]
pub struct NodeAgentArgs {
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
    stop_grace: Duration,
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
    /// gpud) and the --desktop-app apps. The default; kept so that older
    /// command lines still work.
    #[arg(long, conflicts_with = "desktop_command")]
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
    /// Run this command in each desktop instead of its session (no
    /// screen: for tests and special nodes). Also what desktops run when a
    /// session is impossible here (no sandboxes or no gpud): default
    /// `sleep infinity`.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    desktop_command: Option<Vec<String>>,
    /// Give sandboxes loopback only (no veth, bridge or NAT).
    #[arg(long)]
    no_desktop_network: bool,
    /// The desktops' /16: the bridge takes .0.1, policies take /18s.
    #[arg(long, default_value = "10.88.0.0/16", value_parser = parse_subnet)]
    desktop_subnet: Ipv4Addr,
    /// The host bridge desktops' veths are ports of.
    #[arg(long, default_value = "flotilla0")]
    desktop_bridge: String,
    /// The servers' desktop doors (IP:PORT) desktops with egress
    /// control-plane may reach; repeatable (default: each --join address's
    /// port + 1, the servers' default --desktop-listen).
    #[arg(long = "desktop-endpoint")]
    desktop_endpoints: Vec<SocketAddr>,
    /// A range (CIDR) desktops with egress open may reach although it is
    /// private, link-local or otherwise not the internet (refused by
    /// default: the node's LAN, cloud metadata); repeatable.
    #[arg(long = "egress-allow")]
    egress_allow: Vec<ipnet::Ipv4Net>,
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

#[derive(Clone, Copy, ValueEnum)]
enum RuntimeArg {
    Sandbox,
    Process,
}

/// A `node-agent` flag value that does not parse; clap prints the message
/// after the flag's name.
#[derive(Debug, thiserror::Error)]
pub enum NodeAgentArgError {
    #[error("{text:?} is not a subnet; use A.B.0.0/16")]
    NotASubnet { text: String },
    #[error("the desktop subnet must be a /16, not /{prefix}")]
    SubnetNotSlash16 { text: String, prefix: String },
    #[error("{address:?}: {source}")]
    SubnetAddress {
        address: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("{text} has host bits set; use A.B.0.0/16")]
    SubnetHostBits { text: String },
    #[error("{text:?} is not WIDTHxHEIGHT (e.g. 1280x800)")]
    NotADisplaySize { text: String },
    #[error("{side} {part:?} is not a number")]
    DisplaySideNotANumber {
        side: &'static str,
        part: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("{side} {value} must be even, from 64 to 8192")]
    DisplaySideOutOfRange { side: &'static str, value: u32 },
    /// The server's rules for node names refuse it.
    #[error("{reason}")]
    NodeName { name: String, reason: String },
}

/// `A.B.0.0/16`.
fn parse_subnet(text: &str) -> Result<Ipv4Addr, NodeAgentArgError> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| NodeAgentArgError::NotASubnet {
            text: text.to_owned(),
        })?;
    if prefix != "16" {
        return Err(NodeAgentArgError::SubnetNotSlash16 {
            text: text.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    let address: Ipv4Addr = address
        .parse()
        .map_err(|source| NodeAgentArgError::SubnetAddress {
            address: address.to_owned(),
            source,
        })?;
    if u32::from(address) & 0xFFFF != 0 {
        return Err(NodeAgentArgError::SubnetHostBits {
            text: text.to_owned(),
        });
    }
    Ok(address)
}

/// `WIDTHxHEIGHT`, each 64 to 8192 and even.
fn parse_display_size(text: &str) -> Result<(u32, u32), NodeAgentArgError> {
    let (width, height) =
        text.split_once('x')
            .ok_or_else(|| NodeAgentArgError::NotADisplaySize {
                text: text.to_owned(),
            })?;
    let parse = |part: &str, side: &'static str| -> Result<u32, NodeAgentArgError> {
        let value: u32 =
            part.parse()
                .map_err(|source| NodeAgentArgError::DisplaySideNotANumber {
                    side,
                    part: part.to_owned(),
                    source,
                })?;
        if !(64..=8192).contains(&value) || !value.is_multiple_of(2) {
            return Err(NodeAgentArgError::DisplaySideOutOfRange { side, value });
        }
        Ok(value)
    };
    Ok((parse(width, "width")?, parse(height, "height")?))
}

fn parse_node_name(text: &str) -> Result<String, NodeAgentArgError> {
    flotilla_control_plane::types::validate_node_name(text).map_err(|error| {
        NodeAgentArgError::NodeName {
            name: text.to_owned(),
            reason: error.to_string(),
        }
    })?;
    Ok(text.to_owned())
}

pub async fn run(args: NodeAgentArgs) -> anyhow::Result<()> {
    init_logging();
    let options = agent_options(args)?;
    flotilla_node_agent::run(options, shutdown_signal()).await
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
    // The session unless a command was asked for (--desktop-session is
    // the default, said explicitly).
    options.desktop_session = args.desktop_session || args.desktop_command.is_none();
    if !args.desktop_apps.is_empty() {
        options.desktop_apps = args.desktop_apps;
    }
    options.desktop_keyboard = (args.desktop_keyboard_layout, args.desktop_keyboard_variant);
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
        let settings = NetworkSettings {
            bridge: args.desktop_bridge,
            subnet: args.desktop_subnet,
            control_plane: args.desktop_endpoints,
            pool_size: args.netns_pool as usize,
            egress_allow: args.egress_allow,
            resolvers: flotilla_node_agent::sandbox::net::resolvers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            ..Default::default()
        };
        settings
            .validate()
            .map_err(|error| anyhow::anyhow!("desktop network: {error}"))?;
        Some(settings)
    };
    if let Some(command) = args.desktop_command {
        options.desktop_command = command;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `flotilla node-agent ARGS` parsed as the binary parses it.
    fn parse(args: &[&str]) -> Result<NodeAgentArgs, clap::Error> {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: NodeAgentArgs,
        }
        let matches = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(std::iter::once("node-agent").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches).map(|cli| cli.args)
    }

    #[test]
    fn the_readme_node_agent_runs_desktop_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("node-join.token");
        std::fs::write(&token, "flo_node_x\n").expect("write the token");
        let token = token.to_str().expect("utf-8 path");
        // The README's "A real cluster" command, as written.
        let readme = [
            "--join",
            "10.0.0.1:7100,10.0.0.2:7100,10.0.0.3:7100",
            "--token-file",
            token,
            "--name",
            "gpu-01",
            "--data-dir",
            "/var/lib/flotilla-node",
            "--label",
            "zone=west",
        ];
        let options = agent_options(parse(&readme).expect("parses")).expect("options");
        assert!(
            options.desktop_session,
            "desktops run the compositor and apps"
        );
        // --desktop-command opts out; --desktop-session says the default.
        let mut command = readme.to_vec();
        command.extend(["--desktop-command", "sleep", "60"]);
        let options = agent_options(parse(&command).expect("parses")).expect("options");
        assert!(!options.desktop_session);
        assert_eq!(options.desktop_command, ["sleep", "60"]);
        let mut session = readme.to_vec();
        session.push("--desktop-session");
        assert!(
            agent_options(parse(&session).expect("parses"))
                .expect("options")
                .desktop_session
        );
        session.extend(["--desktop-command", "true"]);
        assert!(parse(&session).is_err(), "the two conflict");
    }

    #[test]
    fn subnets_are_slash_16s_without_host_bits() {
        assert_eq!(
            parse_subnet("10.88.0.0/16").ok(),
            Some(Ipv4Addr::new(10, 88, 0, 0))
        );
        let message = |text: &str| parse_subnet(text).expect_err("refused").to_string();
        assert_eq!(
            message("10.88.0.0"),
            "\"10.88.0.0\" is not a subnet; use A.B.0.0/16"
        );
        assert_eq!(
            message("10.88.0.0/24"),
            "the desktop subnet must be a /16, not /24"
        );
        assert!(message("10.888.0.0/16").starts_with("\"10.888.0.0\": "));
        assert_eq!(
            message("10.88.1.0/16"),
            "10.88.1.0/16 has host bits set; use A.B.0.0/16"
        );
    }

    #[test]
    fn display_sizes_are_even_and_bounded() {
        assert_eq!(parse_display_size("1280x800").ok(), Some((1280, 800)));
        let message = |text: &str| parse_display_size(text).expect_err("refused").to_string();
        assert_eq!(
            message("1280"),
            "\"1280\" is not WIDTHxHEIGHT (e.g. 1280x800)"
        );
        assert_eq!(message("widex800"), "width \"wide\" is not a number");
        assert_eq!(
            message("1280x801"),
            "height 801 must be even, from 64 to 8192"
        );
        assert_eq!(message("32x800"), "width 32 must be even, from 64 to 8192");
    }

    #[test]
    fn node_names_are_checked_as_the_server_checks_them() {
        assert_eq!(parse_node_name("gpu-01").ok(), Some("gpu-01".to_owned()));
        assert!(parse_node_name("GPU 01").is_err());
    }
}
