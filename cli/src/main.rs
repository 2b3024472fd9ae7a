//! `flotilla`: the one binary. Runs servers (`server`, `dev`) and node
//! agents (`node-agent`), and is the operator's command line (`cluster`,
//! `task`, `node`, `capacity`, `gpu`, `desktop`, `project`, `repo`, `pr`, `llm`,
//! `usage`, `budget`). This file is the top of the
//! command tree and the dispatch; each command group lives in `commands/`.

mod client;
mod commands;
mod parse;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{connect, ClientArgs};
use crate::commands::cluster::ClusterCommand;
use crate::commands::compositor::{CompositorArgs, DesktopSessionArgs};
use crate::commands::desktop::{DesktopCommand, RemoteExit};
use crate::commands::dev::DevArgs;
use crate::commands::gpu::GpuCommand;
use crate::commands::node::NodeCommand;
use crate::commands::node_agent::NodeAgentArgs;
use crate::commands::server::ServerArgs;
use crate::commands::task::TaskCommand;

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
    /// Projects: sets of hosted repositories.
    Project {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: commands::project::ProjectCommand,
    },
    /// Hosted git repositories (`PROJECT/NAME`).
    Repo {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: commands::project::RepoCommand,
    },
    /// Pull requests of a hosted repository (`PROJECT/NAME`).
    Pr {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: commands::pr::PrCommand,
    },
    /// The LLM gateway's model providers.
    Llm {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: commands::llm::LlmCommand,
    },
    /// Model usage (tokens, cost) per task and model.
    Usage {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: commands::llm::UsageArgs,
    },
    /// Budgets of model usage per task or project.
    Budget {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: commands::llm::BudgetCommand,
    },
    /// Inspect desktops.
    Desktop {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: DesktopCommand,
    },
}

/// A sandbox helper's status as this process's exit code.
fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))
}

fn main() -> ExitCode {
    // A sandbox's init must start single-threaded (it forks): handled before
    // the async runtime exists. Internal: the node agent runs it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "sandbox-init" {
        return exit_code(flotilla_node_agent::sandbox::init::main(
            std::path::Path::new(&args[2]),
        ));
    }
    // Internal: the node agent's sandbox zygote, which forks sandboxes.
    if args.len() == 2 && args[1] == "sandbox-zygote" {
        return exit_code(flotilla_node_agent::sandbox::zygote::zygote_main());
    }
    // Internal too: the node agent runs it for `desktop exec` (setns into a
    // user namespace needs a single-threaded process).
    if args.len() >= 5 && args[1] == "sandbox-exec" && args[3] == "--" {
        let command: Vec<String> = args[4..]
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        return exit_code(flotilla_node_agent::sandbox::init::exec_main(
            std::path::Path::new(&args[2]),
            &command,
        ));
    }
    // Internal: git runs it as a hosted repository's proc-receive hook; it
    // hands the push's ref updates to the server over the hook socket.
    if args.len() == 3 && args[1] == "git-hook" && args[2] == "proc-receive" {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        return match flotilla_git::run_proc_receive_hook_from_env(stdin.lock(), stdout.lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("flotilla git-hook: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    // The compositor and the session run their own event loops, single-threaded.
    match &cli.command {
        TopCommand::Compositor(args) => return commands::compositor::run_compositor(args),
        TopCommand::DesktopSession(args) => return commands::compositor::run_desktop_session(args),
        _ => {}
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
        Err(error) if error.downcast_ref::<RemoteExit>().is_some() => {
            let code = error.downcast_ref::<RemoteExit>().map_or(1, |e| e.0);
            exit_code(code)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        TopCommand::Server(args) => commands::server::run(args).await,
        TopCommand::Dev(args) => commands::dev::run(args).await,
        TopCommand::NodeAgent(args) => commands::node_agent::run(args).await,
        // Handled in main, outside the async runtime.
        TopCommand::Compositor(_) | TopCommand::DesktopSession(_) => {
            anyhow::bail!("the compositor runs outside the async runtime")
        }
        TopCommand::Cluster { client, command } => {
            commands::cluster::run(&connect(client)?, command).await
        }
        TopCommand::Task { client, command } => {
            commands::task::run(&connect(client)?, command).await
        }
        TopCommand::Node { client, command } => {
            commands::node::run(&connect(client)?, command).await
        }
        TopCommand::Project { client, command } => {
            commands::project::run_project(&connect(client)?, command).await
        }
        TopCommand::Repo { client, command } => {
            commands::project::run_repo(&connect(client)?, command).await
        }
        TopCommand::Pr { client, command } => commands::pr::run(&connect(client)?, command).await,
        TopCommand::Capacity { client, stale } => {
            commands::capacity::run(&connect(client)?, stale).await
        }
        TopCommand::Gpu { client, command } => commands::gpu::run(&connect(client)?, command).await,
        TopCommand::Desktop { client, command } => {
            commands::desktop::run(&connect(client)?, command).await
        }
        TopCommand::Llm { client, command } => commands::llm::run(&connect(client)?, command).await,
        TopCommand::Usage { client, args } => commands::llm::usage(&connect(client)?, args).await,
        TopCommand::Budget { client, command } => {
            commands::llm::budget(&connect(client)?, command).await
        }
    }
}
