//! `flotilla project create|list|show` and `flotilla repo create|import|list|show`:
//! projects and their hosted repositories, over the HTTP API. `repo show`
//! prints the clone URL (the operator token is git's password).

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::render::{print_json, text, Column, Output, TextTable};

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// 1-64 of A-Z a-z 0-9 - _ (part of every clone URL).
        id: String,
        /// New repositories' first branch.
        #[arg(long, default_value = "main")]
        default_branch: String,
    },
    /// List projects.
    List,
    /// A project and its repositories.
    Show { id: String },
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create an empty repository in a project (hosted on every server).
    Create {
        /// `PROJECT/NAME`.
        repo: String,
    },
    /// Import a repository from an upstream (http(s)://, git://, file://);
    /// its default branch is mirrored back there as it moves.
    Import {
        /// `PROJECT/NAME`.
        repo: String,
        /// The upstream URL, without credentials.
        url: String,
        /// A file holding the upstream's token (git's HTTP password); it is
        /// kept sealed in the cluster and never shown or given to desktops.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// A project's repositories.
    List { project: String },
    /// A repository's refs and clone URL (`PROJECT/NAME`).
    Show { repo: String },
}

pub async fn run_project(client: &Client, command: ProjectCommand) -> anyhow::Result<()> {
    match command {
        ProjectCommand::Create { id, default_branch } => {
            let project: Value = client
                .send(
                    client
                        .http
                        .post(client.url("/api/v1/projects"))
                        .json(&json!({"id": id, "default_branch": default_branch})),
                )
                .await?;
            match client.output {
                Output::Json => print_json(&project),
                Output::Table => {
                    println!("created project {}", text(&project["id"]));
                    Ok(())
                }
            }
        }
        ProjectCommand::List => {
            let list: Value = client
                .send(client.http.get(client.url("/api/v1/projects")))
                .await?;
            if let Output::Json = client.output {
                return print_json(&list["projects"]);
            }
            let mut table = TextTable::new(&[
                Column::left("PROJECT", 20),
                Column::left("DEFAULT BRANCH", 0),
            ]);
            for project in list["projects"].as_array().into_iter().flatten() {
                table.row([text(&project["id"]), text(&project["default_branch"])]);
            }
            table.print();
            Ok(())
        }
        ProjectCommand::Show { id } => {
            let project = get(client, &format!("/api/v1/projects/{id}")).await?;
            if let Output::Json = client.output {
                return print_json(&project);
            }
            println!(
                "project {}  default branch {}",
                text(&project["id"]),
                text(&project["default_branch"])
            );
            print_repos(client, &project["repos"]);
            Ok(())
        }
    }
}

pub async fn run_repo(client: &Client, command: RepoCommand) -> anyhow::Result<()> {
    match command {
        RepoCommand::Create { repo } => {
            let (project, name) = split(&repo)?;
            let created: Value = client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/api/v1/projects/{project}/repos")))
                        .json(&json!({"name": name})),
                )
                .await?;
            match client.output {
                Output::Json => print_json(&created),
                Output::Table => {
                    println!(
                        "created {project}/{name}: {}",
                        client.url(text(&created["clone_path"]))
                    );
                    Ok(())
                }
            }
        }
        RepoCommand::Import {
            repo,
            url,
            token_file,
        } => {
            let (project, name) = split(&repo)?;
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|error| anyhow::anyhow!("read {}: {error}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let imported: Value = client
                .send(
                    client
                        .http
                        .post(client.url(&format!("/api/v1/projects/{project}/repos")))
                        .json(&json!({"name": name, "upstream": url, "upstream_token": token})),
                )
                .await?;
            match client.output {
                Output::Json => print_json(&imported),
                Output::Table => {
                    let refs = imported["refs"].as_object().map_or(0, |refs| refs.len());
                    println!(
                        "imported {project}/{name} from {url}: {refs} refs; clone {}",
                        client.url(text(&imported["clone_path"]))
                    );
                    Ok(())
                }
            }
        }
        RepoCommand::List { project } => {
            let found = get(client, &format!("/api/v1/projects/{project}")).await?;
            if let Output::Json = client.output {
                return print_json(&found["repos"]);
            }
            print_repos(client, &found["repos"]);
            Ok(())
        }
        RepoCommand::Show { repo } => {
            let (project, name) = split(&repo)?;
            let found = get(client, &format!("/api/v1/projects/{project}/repos/{name}")).await?;
            if let Output::Json = client.output {
                return print_json(&found);
            }
            println!("repository {project}/{name}");
            if let Some(upstream) = found["upstream"].as_object() {
                let state = match (&upstream["error"], found["mirror_behind"] == true) {
                    (Value::String(error), _) => format!("mirror failing: {error}"),
                    (_, true) => "mirror behind (pushing)".to_owned(),
                    _ => format!("mirrored at {}", text(&upstream["pushed"])),
                };
                println!("  upstream: {}  {state}", text(&upstream["url"]));
            }
            println!(
                "  clone:  git clone {}  (password: the operator token)",
                client.url(text(&found["clone_path"]))
            );
            let mut table =
                TextTable::new(&[Column::left("REF", 30), Column::left("COMMIT", 0)]).indent(2);
            for (name, commit) in found["refs"].as_object().into_iter().flatten() {
                table.row([name.as_str(), text(commit)]);
            }
            table.print();
            Ok(())
        }
    }
}

async fn get(client: &Client, path: &str) -> anyhow::Result<Value> {
    client.send(client.http.get(client.url(path))).await
}

/// `PROJECT/NAME`, each non-empty.
fn split(repo: &str) -> anyhow::Result<(&str, &str)> {
    match repo.split_once('/') {
        Some((project, name)) if !project.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((project, name))
        }
        _ => anyhow::bail!("{repo:?} is not PROJECT/NAME"),
    }
}

fn print_repos(client: &Client, repos: &Value) {
    let mut table = TextTable::new(&[
        Column::left("REPOSITORY", 24),
        Column::right("REFS", 4),
        Column::left("CLONE URL", 0),
    ]);
    for repo in repos.as_array().into_iter().flatten() {
        let refs = repo["refs"].as_object().map_or(0, |refs| refs.len());
        table.row([
            format!("{}/{}", text(&repo["project"]), text(&repo["name"])),
            refs.to_string(),
            client.url(text(&repo["clone_path"])),
        ]);
    }
    table.print();
}
