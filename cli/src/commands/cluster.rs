//! `flotilla cluster status|remove`: Raft membership, over the servers'
//! gRPC cluster service (not the HTTP API, so it works while a server has
//! no leader to serve HTTP writes).

use anyhow::{anyhow, Context};
use clap::Subcommand;
use flotilla_control_plane::control::cluster_client;
use flotilla_proto::cluster::{ClusterStatus, RemoveMemberRequest, StatusRequest};
use serde_json::{json, Value};

use crate::client::Client;
use crate::render::{print_json, Column, Output, TextTable};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Leader, term and members.
    Status,
    /// Remove a server from the cluster.
    Remove { id: u64 },
}

pub async fn run(client: &Client, command: ClusterCommand) -> anyhow::Result<()> {
    let mut cluster = cluster_client(client.addr()).map_err(|error| anyhow!("{error}"))?;
    let status = match command {
        ClusterCommand::Status => cluster
            .status(client.authorized(StatusRequest {}))
            .await
            .map_err(|status| anyhow!("{} ({:?})", status.message(), status.code()))
            .with_context(|| format!("ask {} for the cluster status", client.addr()))?,
        ClusterCommand::Remove { id } => cluster
            .remove_member(client.authorized(RemoveMemberRequest { node_id: id }))
            .await
            .map_err(|status| anyhow!("{} ({:?})", status.message(), status.code()))
            .with_context(|| format!("remove server {id}"))?,
    }
    .into_inner();
    print_status(client.output, &status)
}

fn print_status(output: Output, status: &ClusterStatus) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            let members: Vec<Value> = status
                .members
                .iter()
                .map(|member| json!({"id": member.id, "addr": member.addr, "role": member.role}))
                .collect();
            print_json(&json!({
                "leader": status.leader,
                "term": status.term,
                "members": members,
                "cluster_id": status.cluster_id,
                "node_id": status.node_id,
                "last_log_index": status.last_log_index,
                "last_applied": status.last_applied,
                "revision": status.revision,
            }))
        }
        Output::Table => {
            let leader = status.leader.map_or("none".to_owned(), |id| id.to_string());
            println!(
                "cluster {}  leader {}  term {}",
                status.cluster_id, leader, status.term
            );
            let mut table = TextTable::new(&[
                Column::right("ID", 4),
                Column::left("ROLE", 8),
                Column::left("ADDR", 0),
            ]);
            for member in &status.members {
                let marker = if Some(member.id) == status.leader {
                    " (leader)"
                } else {
                    ""
                };
                table.row([
                    member.id.to_string(),
                    member.role.clone(),
                    format!("{}{marker}", member.addr),
                ]);
            }
            table.print();
            Ok(())
        }
    }
}
