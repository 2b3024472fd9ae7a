//! `flotilla node list|status|cordon|uncordon|remove|drain`: the fleet's
//! nodes as the control plane sees them, over the HTTP API. `drain
//! --monitor` follows a drain by polling the node; Ctrl-C stops following,
//! never the drain.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::desktop::print_desktops;
use crate::parse::parse_duration;
use crate::render::{
    amount, count, human_bytes, millis, print_json, text, Column, Output, TextTable,
};

#[derive(Subcommand)]
pub enum NodeCommand {
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
        deadline: Option<Duration>,
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

/// What `node drain`'s flags ask for.
struct DrainRequest {
    deadline: Option<Duration>,
    force: bool,
    monitor: bool,
    disable: bool,
    max_parallel: u32,
}

pub async fn run(client: &Client, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::List { stale } => list(client, stale).await,
        NodeCommand::Status { name } => status(client, &name).await,
        NodeCommand::Cordon { name } => set_eligibility(client, &name, false).await,
        NodeCommand::Uncordon { name } => set_eligibility(client, &name, true).await,
        NodeCommand::Remove { name } => remove(client, &name).await,
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
                result = drain(client, &name, request) => result,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("stopped following; the drain goes on (cancel it with --disable)");
                    Ok(())
                }
            }
        }
    }
}

async fn list(client: &Client, stale: bool) -> anyhow::Result<()> {
    let nodes: Value = client
        .send(
            client
                .http
                .get(client.url("/api/v1/nodes"))
                .query(&[("stale", stale)]),
        )
        .await?;
    if let Output::Json = client.output {
        return print_json(&nodes);
    }
    let mut table = TextTable::new(&[
        Column::left("NAME", 20),
        Column::left("STATUS", 12),
        Column::left("ELIGIBLE", 10),
        Column::left("DRAIN", 8),
        Column::right("DESKTOPS", 8),
        Column::right("CPU", 13),
        Column::right("MEMORY", 19),
        Column::right("GPU MEMORY", 19),
    ]);
    for node in nodes.as_array().into_iter().flatten() {
        table.row([
            text(&node["name"]).to_owned(),
            text(&node["status"]).to_owned(),
            text(&node["eligibility"]).to_owned(),
            drain_state(node).to_owned(),
            amount(&node["desktops"], count),
            amount(&node["cpu_millis"], millis),
            amount(&node["memory_bytes"], human_bytes),
            amount(&node["gpu_memory_bytes"], human_bytes),
        ]);
    }
    table.print();
    Ok(())
}

async fn get_node(client: &Client, name: &str) -> anyhow::Result<Value> {
    client
        .send(
            client
                .http
                .get(client.url(&format!("/api/v1/nodes/{name}"))),
        )
        .await
}

async fn status(client: &Client, name: &str) -> anyhow::Result<()> {
    let node = get_node(client, name).await?;
    if let Output::Json = client.output {
        return print_json(&node);
    }
    println!("name:        {}", text(&node["name"]));
    println!("id:          {}", text(&node["id"]));
    println!(
        "status:      {}, {}, drain: {}",
        text(&node["status"]),
        text(&node["eligibility"]),
        drain_state(&node)
    );
    if let Some(deadline) = node["drain"]["deadline_ms"].as_u64() {
        let left = deadline.saturating_sub(now_ms()) / 1000;
        println!("drain:       deadline in {left}s");
    }
    println!("address:     {}", text(&node["address"]));
    println!("desktops:    {}", amount(&node["desktops"], count));
    println!("cpu:         {}", amount(&node["cpu_millis"], millis));
    println!(
        "memory:      {}",
        amount(&node["memory_bytes"], human_bytes)
    );
    println!(
        "gpu memory:  {}",
        amount(&node["gpu_memory_bytes"], human_bytes)
    );
    if let Some(labels) = node["labels"].as_object().filter(|l| !l.is_empty()) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!("labels:      {}", labels.join(", "));
    }
    println!("GPUs:");
    for gpu in node["gpus"].as_array().into_iter().flatten() {
        println!(
            "  gpu-{}  {}  {}  {}  uuid {}{}",
            gpu["index"],
            text(&gpu["name"]),
            amount(&gpu["allocation"], human_bytes),
            text(&gpu["driver"]),
            text(&gpu["uuid"]),
            if gpu["cpu_implementation"].as_bool() == Some(true) {
                "  (CPU implementation)"
            } else {
                ""
            }
        );
    }
    println!("desktops:");
    print_desktops(
        node["desktops_placed"]
            .as_array()
            .map_or(&[][..], Vec::as_slice),
    );
    Ok(())
}

async fn set_eligibility(client: &Client, name: &str, eligible: bool) -> anyhow::Result<()> {
    let node: Value = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/nodes/{name}/eligibility")))
                .json(&json!({ "eligible": eligible })),
        )
        .await?;
    if let Output::Json = client.output {
        return print_json(&node);
    }
    println!(
        "node {} is {}",
        text(&node["name"]),
        text(&node["eligibility"])
    );
    Ok(())
}

async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    let _: Value = client
        .send(
            client
                .http
                .delete(client.url(&format!("/api/v1/nodes/{name}"))),
        )
        .await?;
    match client.output {
        Output::Json => println!("{}", json!({ "removed": name })),
        Output::Table => println!("removed node {name}"),
    }
    Ok(())
}

async fn drain(client: &Client, name: &str, drain: DrainRequest) -> anyhow::Result<()> {
    let node: Value = if drain.disable {
        client
            .send(
                client
                    .http
                    .delete(client.url(&format!("/api/v1/nodes/{name}/drain"))),
            )
            .await?
    } else {
        let mut body = json!({ "force": drain.force, "max_parallel": drain.max_parallel });
        if let Some(deadline) = drain.deadline {
            body["deadline_secs"] = json!(deadline.as_secs());
        }
        client
            .send(
                client
                    .http
                    .post(client.url(&format!("/api/v1/nodes/{name}/drain")))
                    .json(&body),
            )
            .await?
    };
    if !drain.monitor || drain.disable {
        if let Output::Json = client.output {
            return print_json(&node);
        }
        if drain.disable {
            println!(
                "drain of {} cancelled; it stays {} (uncordon to take new desktops)",
                text(&node["name"]),
                text(&node["eligibility"])
            );
        } else {
            println!(
                "draining {}: {} desktops to move; follow with `flotilla node drain {} --monitor`",
                text(&node["name"]),
                node["desktops"]["allocated"],
                text(&node["name"])
            );
        }
        return Ok(());
    }
    monitor_drain(client, name).await
}

/// Follows a drain until it completes; Ctrl-C leaves it running.
async fn monitor_drain(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut last = None;
    loop {
        let node = get_node(client, name).await?;
        let left = node["desktops"]["allocated"].as_u64().unwrap_or(0);
        let draining = node["draining"].as_bool().unwrap_or(false);
        if last != Some((left, draining)) {
            last = Some((left, draining));
            match client.output {
                Output::Json => println!(
                    "{}",
                    json!({"name": node["name"], "draining": draining, "desktops_left": left})
                ),
                Output::Table => println!(
                    "{}  {}: {left} desktop(s) left",
                    time_of_day(),
                    text(&node["name"])
                ),
            }
        }
        if !draining {
            if node["drained_at_ms"].is_u64() {
                if let Output::Table = client.output {
                    println!("drain of {} complete", text(&node["name"]));
                }
                return Ok(());
            }
            anyhow::bail!("the drain of {name} was cancelled");
        }
        // Polling, not synchronisation: the drain's progress is only seen
        // by asking again.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn drain_state(node: &Value) -> &'static str {
    if node["draining"].as_bool() == Some(true) {
        "draining"
    } else if node["drained_at_ms"].is_u64() {
        "drained"
    } else {
        "-"
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// `HH:MM:SS` (UTC) for `drain --monitor`'s progress lines.
fn time_of_day() -> String {
    let seconds = now_ms() / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
