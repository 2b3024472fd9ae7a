//! `flotilla dev`: the whole system on this machine: one bootstrapped
//! server and (unless `--no-node`) one node agent for this host, with the
//! data in the dev directory (`client::dev_data_dir`) and the operator token where the CLI
//! finds it by itself. It prints how to reach the board once the token works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use flotilla_control_plane::server::{self, RaftTuning, ServerOptions, StartMode};
use flotilla_node_agent::AgentOptions;

use crate::client::dev_data_dir;
use crate::commands::process::{init_logging, read_token_file, shutdown_signal};
use crate::commands::server::FleetArgs;

#[derive(Args)]
pub struct DevArgs {
    /// Data directory (default: $FLOTILLA_DEV_DIR, else
    /// /var/lib/flotilla/dev as root, else ~/.local/share/flotilla/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The desktop door, the only port desktops reach (default: --listen's
    /// port + 1).
    #[arg(long)]
    desktop_listen: Option<SocketAddr>,
    /// Run only the control plane, no node agent.
    #[arg(long)]
    no_node: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging();
    let data_dir = args.data_dir.unwrap_or_else(dev_data_dir);
    if !args.no_node {
        // The node agent's directory lies inside: refuse now, having made
        // nothing, if its sandboxes could not reach their roots there (and
        // make the directory so that they can).
        let root = rustix::process::geteuid().is_root();
        flotilla_node_agent::preflight::prepare_data_dir(&data_dir, root)?;
    }
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
        desktop_listen: Some(match args.desktop_listen {
            Some(addr) => addr,
            None => server::default_desktop_listen(args.listen)?,
        }),
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
        let logins = running.logins.clone();
        let addr = running.local_addr;
        let desktop_door = running.desktop_addr;
        let handle = tokio::spawn(async move {
            // Announce once the token works, so the printed command succeeds.
            while !control.state.with_state(|state| state.has_tokens()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
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
                    logins.issue(token.trim())
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
                match agent_options(&data_dir, addr, desktop_door) {
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
        let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
    }
    result
}

/// The dev node agent: this host, named after it, data beside the server's.
fn agent_options(
    data_dir: &Path,
    addr: SocketAddr,
    desktop_door: Option<SocketAddr>,
) -> anyhow::Result<AgentOptions> {
    let token = read_token_file(&data_dir.join("node-join.token"), "node-join")?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut options = AgentOptions::new(
        vec![addr.to_string()],
        token,
        node_name(&host),
        data_dir.join("node-agent"),
    );
    // Desktops reach the desktop door, not the client port.
    if let (Some(network), Some(door)) = (options.network.as_mut(), desktop_door) {
        network.control_plane = vec![door];
    }
    // dev leaves nothing on the host when it exits.
    options.remove_network_on_exit = true;
    // Each desktop is a real one: compositor, terminal, browser.
    options.desktop_session = true;
    Ok(options)
}

/// A valid node name from a host name: lowercase, other characters `-`, at
/// most 40; `dev-node` when nothing is left.
fn node_name(host: &str) -> String {
    let name: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    match name.trim_matches('-') {
        "" => "dev-node".to_owned(),
        name => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_node_is_named_after_the_host() {
        assert_eq!(node_name("Build_Box.local\n"), "build-box-local");
        assert_eq!(node_name("---"), "dev-node");
        assert_eq!(node_name(""), "dev-node");
        assert_eq!(node_name(&"a".repeat(50)).len(), 40);
    }
}
