//! `flotilla pr create|list|show|diff|merge|close`: pull requests of a hosted
//! repository (`PROJECT/NAME`), over the HTTP API. `show` says whether it
//! merges now and which files conflict; `diff` prints a unified diff built
//! from the API's hunks.

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::Client;
use crate::render::{print_json, text, Column, Output, TextTable};

#[derive(Clone, Copy, ValueEnum)]
pub enum Style {
    MergeCommit,
    Squash,
    FastForward,
}

impl Style {
    fn as_str(self) -> &'static str {
        match self {
            Style::MergeCommit => "merge-commit",
            Style::Squash => "squash",
            Style::FastForward => "fast-forward",
        }
    }
}

#[derive(Subcommand)]
pub enum PrCommand {
    /// Open a pull request of a pushed branch.
    Create {
        /// `PROJECT/NAME`.
        repo: String,
        /// The branch that lands, e.g. flotilla/<task>.
        #[arg(long)]
        source: String,
        /// The branch it lands on (default: the repository's default branch).
        #[arg(long)]
        base: Option<String>,
        #[arg(long)]
        title: String,
        /// The task whose work it is.
        #[arg(long)]
        task: Option<String>,
    },
    /// A repository's pull requests.
    List { repo: String },
    /// One pull request: its branches, whether it merges, the files it changes.
    Show { repo: String, number: u64 },
    /// What it changes, as a unified diff.
    Diff { repo: String, number: u64 },
    /// Merge it on the server (default: the project's merge style).
    Merge {
        repo: String,
        number: u64,
        #[arg(long, value_enum)]
        style: Option<Style>,
    },
    /// Close it without merging.
    Close { repo: String, number: u64 },
}

fn split(repo: &str) -> anyhow::Result<(&str, &str)> {
    match repo.split_once('/') {
        Some((project, name)) if !project.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((project, name))
        }
        _ => anyhow::bail!("{repo:?} is not PROJECT/NAME"),
    }
}

fn short(commit: &Value) -> String {
    text(commit).chars().take(12).collect()
}

pub async fn run(client: &Client, command: PrCommand) -> anyhow::Result<()> {
    let base = |repo: &str| -> anyhow::Result<String> {
        let (project, name) = split(repo)?;
        Ok(format!("/api/v1/projects/{project}/repos/{name}/pulls"))
    };
    match command {
        PrCommand::Create {
            repo,
            source,
            base: onto,
            title,
            task,
        } => {
            let pull: Value = client
                .send(client.http.post(client.url(&base(&repo)?)).json(&json!({
                    "title": title, "source": source, "base": onto, "task_id": task,
                })))
                .await?;
            match client.output {
                Output::Json => print_json(&pull),
                Output::Table => {
                    println!(
                        "opened {repo}#{}: {} onto {}",
                        pull["number"],
                        text(&pull["source"]),
                        text(&pull["base"])
                    );
                    Ok(())
                }
            }
        }
        PrCommand::List { repo } => {
            let list: Value = client
                .send(client.http.get(client.url(&base(&repo)?)))
                .await?;
            if let Output::Json = client.output {
                return print_json(&list["pulls"]);
            }
            let mut table = TextTable::new(&[
                Column::right("#", 4),
                Column::left("STATE", 7),
                Column::left("SOURCE", 24),
                Column::left("BASE", 12),
                Column::left("TITLE", 0),
            ]);
            for pull in list["pulls"].as_array().into_iter().flatten() {
                table.row([
                    pull["number"].to_string(),
                    text(&pull["state"]).to_owned(),
                    text(&pull["source"]).to_owned(),
                    text(&pull["base"]).to_owned(),
                    text(&pull["title"]).to_owned(),
                ]);
            }
            table.print();
            Ok(())
        }
        PrCommand::Show { repo, number } => {
            let url = client.url(&format!("{}/{number}", base(&repo)?));
            let pull: Value = client.send(client.http.get(url)).await?;
            if let Output::Json = client.output {
                return print_json(&pull);
            }
            println!(
                "{repo}#{number} {}  [{}]",
                text(&pull["title"]),
                text(&pull["state"])
            );
            println!(
                "  {} ({}) onto {} ({})",
                text(&pull["source"]),
                short(&pull["head"]),
                text(&pull["base"]),
                short(&pull["base_commit"])
            );
            match pull["mergeable"].as_str() {
                Some("clean") if pull["fast_forward"] == true => {
                    println!("  merges cleanly (fast-forward possible)")
                }
                Some("clean") => println!("  merges cleanly"),
                Some("up_to_date") => println!("  already in {}", text(&pull["base"])),
                Some("needs_merge") => {
                    let files: Vec<&str> = pull["conflicts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "  needs a merge of {}: conflicts in {}",
                        text(&pull["base"]),
                        files.join(", ")
                    );
                }
                _ => {}
            }
            if let Some(commit) = pull["merge_commit"].as_str() {
                println!("  merged as {commit}");
            }
            let mut table = TextTable::new(&[
                Column::left("STATUS", 9),
                Column::right("+", 6),
                Column::right("-", 6),
                Column::left("FILE", 0),
            ])
            .indent(2);
            for file in pull["files"].as_array().into_iter().flatten() {
                table.row([
                    text(&file["status"]).to_owned(),
                    file["additions"].to_string(),
                    file["deletions"].to_string(),
                    text(&file["path"]).to_owned(),
                ]);
            }
            table.print();
            Ok(())
        }
        PrCommand::Diff { repo, number } => {
            let url = client.url(&format!("{}/{number}/diff", base(&repo)?));
            let diff: Value = client.send(client.http.get(url)).await?;
            if let Output::Json = client.output {
                return print_json(&diff);
            }
            print!("{}", unified(&diff));
            Ok(())
        }
        PrCommand::Merge {
            repo,
            number,
            style,
        } => {
            let url = client.url(&format!("{}/{number}/merge", base(&repo)?));
            let body = json!({"style": style.map(Style::as_str)});
            let pull: Value = client.send(client.http.post(url).json(&body)).await?;
            match client.output {
                Output::Json => print_json(&pull),
                Output::Table => {
                    println!("merged {repo}#{number} as {}", text(&pull["merge_commit"]));
                    Ok(())
                }
            }
        }
        PrCommand::Close { repo, number } => {
            let url = client.url(&format!("{}/{number}/close", base(&repo)?));
            let pull: Value = client.send(client.http.post(url)).await?;
            match client.output {
                Output::Json => print_json(&pull),
                Output::Table => {
                    println!("closed {repo}#{number}");
                    Ok(())
                }
            }
        }
    }
}

/// The API's files and hunks as a unified diff.
fn unified(diff: &Value) -> String {
    let mut out = String::new();
    for file in diff["files"].as_array().into_iter().flatten() {
        let path = text(&file["path"]);
        let old = file["old_path"].as_str().unwrap_or(path);
        let (from, to) = match file["status"].as_str() {
            Some("added") => ("/dev/null".to_owned(), format!("b/{path}")),
            Some("deleted") => (format!("a/{old}"), "/dev/null".to_owned()),
            _ => (format!("a/{old}"), format!("b/{path}")),
        };
        out.push_str(&format!("--- {from}\n+++ {to}\n"));
        if file["binary"] == true {
            out.push_str("Binary file\n");
        }
        for hunk in file["hunks"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "@@ -{},{} +{},{} @@{}\n",
                hunk["old_start"],
                hunk["old_lines"],
                hunk["new_start"],
                hunk["new_lines"],
                hunk["header"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(|h| format!(" {h}"))
                    .unwrap_or_default()
            ));
            for line in hunk["lines"].as_array().into_iter().flatten() {
                let mark = match line["kind"].as_str() {
                    Some("added") => '+',
                    Some("removed") => '-',
                    _ => ' ',
                };
                out.push(mark);
                out.push_str(text(&line["content"]));
                out.push('\n');
            }
        }
    }
    out
}
