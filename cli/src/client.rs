//! The operator CLI's side of the APIs: HTTP/JSON for tasks, gRPC for the
//! cluster, and how answers are printed.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use flotilla_control_plane::auth::with_bearer;
use flotilla_control_plane::control::cluster_client;
use flotilla_control_plane::types::{Column, Task};
use flotilla_proto::cluster::{ClusterStatus, RemoveMemberRequest, StatusRequest};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

#[derive(Clone, Copy)]
pub enum Output {
    Table,
    Json,
}

pub struct Client {
    addr: String,
    token: String,
    pub(crate) output: Output,
    pub(crate) http: reqwest::Client,
}

impl Client {
    pub fn new(addr: String, token: String, output: Output) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("build the HTTP client")?;
        Ok(Client {
            addr,
            token,
            output,
            http,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request`, retrying a few times when the server is unreachable
    /// or answers 503 (no leader yet). Every attempt carries the same
    /// idempotency key, so a retried write still applies once.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = self.send_raw(request).await?;
        let body = response.text().await.context("read the server's answer")?;
        if body.is_empty() {
            return serde_json::from_str("null").context("decode an empty answer");
        }
        serde_json::from_str(&body).with_context(|| format!("decode the server's answer: {body}"))
    }

    /// Sends `request` with the token and an idempotency key, retrying an
    /// unreachable server or a 503 (nothing was done) up to three times;
    /// an error answer becomes an error with the server's message. The
    /// successful response is returned unread (it may be a stream).
    pub(crate) async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        const ATTEMPTS: usize = 3;
        let request = request
            .bearer_auth(&self.token)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string());
        let mut attempt = 1;
        let response = loop {
            let this_try = request
                .try_clone()
                .expect("requests with JSON or empty bodies can be cloned");
            let result = this_try.send().await;
            let retryable = match &result {
                Ok(response) => response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                Err(error) => error.is_connect() || error.is_timeout(),
            };
            if !retryable || attempt == ATTEMPTS {
                break result.with_context(|| format!("reach the server at {}", self.addr))?;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.context("read the server's answer")?;
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|value| value["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(response)
    }

    fn print_tasks(&self, tasks: &[Task]) {
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(tasks).expect("tasks serialize")
            ),
            Output::Table => {
                println!("{:<36}  {:<14}  {:>3}  TITLE", "ID", "COLUMN", "POS");
                for task in tasks {
                    println!(
                        "{:<36}  {:<14}  {:>3}  {}",
                        task.id, task.column, task.position, task.title
                    );
                }
            }
        }
    }

    fn print_task(&self, task: &Task) {
        match self.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(task).expect("task serializes")
            ),
            Output::Table => {
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
            }
        }
    }

    pub async fn task_create(
        &self,
        title: &str,
        description: &str,
        repository: Option<String>,
        column: Option<Column>,
        resources: Option<Value>,
        profile: Option<Value>,
    ) -> anyhow::Result<()> {
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
        let task: Task = self
            .send(self.http.post(self.url("/api/v1/tasks")).json(&body))
            .await?;
        self.print_task(&task);
        Ok(())
    }

    pub async fn task_list(&self, column: Option<Column>, stale: bool) -> anyhow::Result<()> {
        let mut query = Vec::new();
        if let Some(column) = column {
            query.push(("column", column.to_string()));
        }
        if stale {
            query.push(("stale", "true".to_owned()));
        }
        let list: Value = self
            .send(self.http.get(self.url("/api/v1/tasks")).query(&query))
            .await?;
        let tasks: Vec<Task> =
            serde_json::from_value(list["tasks"].clone()).context("decode the task list")?;
        self.print_tasks(&tasks);
        Ok(())
    }

    pub async fn task_show(&self, id: &str) -> anyhow::Result<()> {
        let view: Value = self
            .send(self.http.get(self.url(&format!("/api/v1/tasks/{id}"))))
            .await?;
        if let Output::Json = self.output {
            println!("{}", serde_json::to_string_pretty(&view)?);
            return Ok(());
        }
        let task: Task = serde_json::from_value(view.clone()).context("decode the task")?;
        self.print_task(&task);
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

    pub async fn task_move(
        &self,
        id: &str,
        to: Column,
        position: Option<u32>,
    ) -> anyhow::Result<()> {
        let mut body = json!({"column": to});
        if let Some(position) = position {
            body["position"] = json!(position);
        }
        let task: Task = self
            .send(
                self.http
                    .post(self.url(&format!("/api/v1/tasks/{id}/move")))
                    .json(&body),
            )
            .await?;
        self.print_task(&task);
        Ok(())
    }

    pub async fn task_delete(&self, id: &str) -> anyhow::Result<()> {
        let _: Value = self
            .send(self.http.delete(self.url(&format!("/api/v1/tasks/{id}"))))
            .await?;
        if let Output::Json = self.output {
            println!("{}", json!({"deleted": id}));
        } else {
            println!("deleted {id}");
        }
        Ok(())
    }

    pub async fn cluster_status(&self) -> anyhow::Result<()> {
        let mut client = cluster_client(&self.addr).map_err(|error| anyhow!("{error}"))?;
        let status = client
            .status(with_bearer(StatusRequest {}, &self.token))
            .await
            .map_err(|status| anyhow!("{} ({:?})", status.message(), status.code()))
            .with_context(|| format!("ask {} for the cluster status", self.addr))?
            .into_inner();
        self.print_status(&status);
        Ok(())
    }

    pub async fn cluster_remove(&self, id: u64) -> anyhow::Result<()> {
        let mut client = cluster_client(&self.addr).map_err(|error| anyhow!("{error}"))?;
        let status = client
            .remove_member(with_bearer(
                RemoveMemberRequest { node_id: id },
                &self.token,
            ))
            .await
            .map_err(|status| anyhow!("{} ({:?})", status.message(), status.code()))
            .with_context(|| format!("remove server {id}"))?
            .into_inner();
        self.print_status(&status);
        Ok(())
    }

    fn print_status(&self, status: &ClusterStatus) {
        match self.output {
            Output::Json => {
                let members: Vec<Value> = status
                    .members
                    .iter()
                    .map(
                        |member| json!({"id": member.id, "addr": member.addr, "role": member.role}),
                    )
                    .collect();
                let value = json!({
                    "leader": status.leader,
                    "term": status.term,
                    "members": members,
                    "cluster_id": status.cluster_id,
                    "node_id": status.node_id,
                    "last_log_index": status.last_log_index,
                    "last_applied": status.last_applied,
                    "revision": status.revision,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("status serializes")
                );
            }
            Output::Table => {
                let leader = status.leader.map_or("none".to_owned(), |id| id.to_string());
                println!(
                    "cluster {}  leader {}  term {}",
                    status.cluster_id, leader, status.term
                );
                println!("{:>4}  {:<8}  ADDR", "ID", "ROLE");
                for member in &status.members {
                    let marker = if Some(member.id) == status.leader {
                        " (leader)"
                    } else {
                        ""
                    };
                    println!(
                        "{:>4}  {:<8}  {}{marker}",
                        member.id, member.role, member.addr
                    );
                }
            }
        }
    }
}
