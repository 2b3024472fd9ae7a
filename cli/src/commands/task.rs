//! `flotilla task create|list|show|move|delete`: the board's cards, over the
//! HTTP API. A task's desktop request (`--cpu-millis`, `--memory`,
//! `--constraint`, `--egress`, `--app`, ...) is checked here as the server
//! would check it, so a bad one fails before anything is sent.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use flotilla_control_plane::types::{Column, DesktopProfile, DesktopResources, Egress, Task};
use serde_json::{json, Value};

use crate::client::Client;
use crate::parse::{parse_bytes, parse_label};
use crate::render::{print_json, Column as TableColumn, Output, TextTable};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task (in the backlog unless --column says otherwise).
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
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
        #[arg(long)]
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
        #[arg(long)]
        to: Column,
        /// Position in the destination column (default: last).
        #[arg(long)]
        position: Option<u32>,
    },
    /// Delete a task.
    Delete { id: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EgressArg {
    None,
    ControlPlane,
    Open,
}

impl From<EgressArg> for Egress {
    fn from(egress: EgressArg) -> Egress {
        match egress {
            EgressArg::None => Egress::None,
            EgressArg::ControlPlane => Egress::ControlPlane,
            EgressArg::Open => Egress::Open,
        }
    }
}

pub async fn run(client: &Client, command: TaskCommand) -> anyhow::Result<()> {
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
                egress.map(Egress::from),
            )?;
            let profile = DesktopProfile {
                apps,
                keyboard_layout: keyboard_layout.unwrap_or_default(),
                keyboard_variant: keyboard_variant.unwrap_or_default(),
            };
            profile.validate().map_err(anyhow::Error::msg)?;
            let profile = (!profile.is_empty())
                .then(|| serde_json::to_value(&profile))
                .transpose()?;
            let mut body = json!({"title": title, "description": description});
            if let Some(profile) = profile {
                body["profile"] = profile;
            }
            if let Some(repository) = repository {
                body["repository"] = json!(repository);
            }
            if let Some(column) = column {
                body["column"] = json!(column);
            }
            if let Some(resources) = resources {
                body["resources"] = resources;
            }
            let task: Task = client
                .send(client.http.post(client.url("/api/v1/tasks")).json(&body))
                .await?;
            print_task(client.output, &task)
        }
        TaskCommand::List { column, stale } => {
            let mut query = Vec::new();
            if let Some(column) = column {
                query.push(("column", column.to_string()));
            }
            if stale {
                query.push(("stale", "true".to_owned()));
            }
            let list: Value = client
                .send(client.http.get(client.url("/api/v1/tasks")).query(&query))
                .await?;
            let tasks: Vec<Task> =
                serde_json::from_value(list["tasks"].clone()).context("decode the task list")?;
            print_tasks(client.output, &tasks)
        }
        TaskCommand::Show { id } => show(client, &id).await,
        TaskCommand::Move { id, to, position } => {
            let mut body = json!({"column": to});
            if let Some(position) = position {
                body["position"] = json!(position);
            }
            let task: Task = client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/api/v1/tasks/{id}/move")))
                        .json(&body),
                )
                .await?;
            print_task(client.output, &task)
        }
        TaskCommand::Delete { id } => {
            let _: Value = client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/api/v1/tasks/{id}"))),
                )
                .await?;
            match client.output {
                Output::Json => println!("{}", json!({"deleted": id})),
                Output::Table => println!("deleted {id}"),
            }
            Ok(())
        }
    }
}

/// `flotilla task show ID`: the task and its desktop.
async fn show(client: &Client, id: &str) -> anyhow::Result<()> {
    let view: Value = client
        .send(client.http.get(client.url(&format!("/api/v1/tasks/{id}"))))
        .await?;
    if let Output::Json = client.output {
        return print_json(&view);
    }
    let task: Task = serde_json::from_value(view.clone()).context("decode the task")?;
    print_task(Output::Table, &task)?;
    match view.get("desktop").filter(|desktop| !desktop.is_null()) {
        Some(desktop) => {
            let node = desktop["node"].as_str().unwrap_or("(not placed)");
            println!(
                "desktop:     {} on {node}, {}",
                desktop["id"].as_str().unwrap_or("?"),
                desktop["state"].as_str().unwrap_or("?")
            );
            if let Some(reason) = desktop["reason"].as_str() {
                println!("             {reason}");
            }
        }
        None => {
            println!("desktop:     none (tasks in planning, implementation and review get one)")
        }
    }
    Ok(())
}

fn print_tasks(output: Output, tasks: &[Task]) -> anyhow::Result<()> {
    if let Output::Json = output {
        return print_json(&tasks);
    }
    let mut table = TextTable::new(&[
        TableColumn::left("ID", 36),
        TableColumn::left("COLUMN", 14),
        TableColumn::right("POS", 3),
        TableColumn::left("TITLE", 0),
    ]);
    for task in tasks {
        table.row([
            task.id.to_string(),
            task.column.to_string(),
            task.position.to_string(),
            task.title.clone(),
        ]);
    }
    table.print();
    Ok(())
}

fn print_task(output: Output, task: &Task) -> anyhow::Result<()> {
    if let Output::Json = output {
        return print_json(task);
    }
    println!("id:          {}", task.id);
    println!("title:       {}", task.title);
    println!("column:      {} (position {})", task.column, task.position);
    if let Some(repository) = &task.repository {
        println!("repository:  {repository}");
    }
    if !task.description.is_empty() {
        println!("description: {}", task.description);
    }
    println!("revision:    {}", task.revision);
    Ok(())
}

/// The desktop request `task create`'s flags make, checked as the server
/// checks it; `None` when no flag asked for anything (the server's default).
fn resources_json(
    cpu_millis: Option<u64>,
    memory: Option<u64>,
    gpu_memory: Option<u64>,
    needs_gpu: bool,
    constraints: Vec<(String, String)>,
    egress: Option<Egress>,
) -> anyhow::Result<Option<Value>> {
    if cpu_millis.is_none()
        && memory.is_none()
        && gpu_memory.is_none()
        && !needs_gpu
        && constraints.is_empty()
        && egress.is_none()
    {
        return Ok(None);
    }
    let default = DesktopResources::default();
    let resources = DesktopResources {
        cpu_millis: cpu_millis.unwrap_or(default.cpu_millis),
        memory_bytes: memory.unwrap_or(default.memory_bytes),
        gpu_memory_bytes: gpu_memory.unwrap_or(0),
        needs_gpu,
        labels: constraints.into_iter().collect(),
        egress: egress.unwrap_or_default(),
        profile: Default::default(),
    };
    resources.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(
        serde_json::to_value(resources).context("encode the resources")?,
    ))
}
