//! The LLM gateway from the command line: `flotilla llm provider
//! add|list|remove`, `flotilla usage`, `flotilla budget set`. Money is typed
//! in US dollars (`--price claude=3,15` is $3 in and $15 out per million
//! tokens; `--cost 25` is $25) and sent as the API's integers.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::Client;
use crate::parse::parse_duration;
use crate::render::{print_json, text, Column, Output, TextTable};

#[derive(Subcommand)]
pub enum LlmCommand {
    /// Model providers the gateway forwards to.
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Anthropic,
    Openai,
    OpenaiCompatible,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Anthropic => "anthropic",
            Kind::Openai => "openai",
            Kind::OpenaiCompatible => "openai-compatible",
        }
    }
}

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Add a provider; its key is sealed by the servers and never shown again.
    Add {
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// As its SDK takes it: https://api.anthropic.com,
        /// https://api.openai.com/v1, http://gpu-7:8000/v1 (vLLM, Ollama...).
        #[arg(long)]
        base_url: String,
        /// A file holding the API key (none for a local server without one).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// A model agents may ask for: NAME, or NAME=UPSTREAM when the
        /// provider calls it otherwise. Repeat for each.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// MODEL=IN,OUT[,CACHE_READ,CACHE_WRITE] in US dollars per million
        /// tokens, e.g. claude-sonnet=3,15,0.3,3.75.
        #[arg(long = "price")]
        prices: Vec<String>,
    },
    /// Every provider and the models it serves.
    List,
    /// Remove a provider: calls to its models fail from then on.
    Remove { name: String },
}

#[derive(Args)]
pub struct UsageArgs {
    /// Only this task's calls.
    #[arg(long, conflicts_with = "project")]
    task: Option<String>,
    /// Only this project's calls.
    #[arg(long)]
    project: Option<String>,
    /// Only calls this recent (e.g. 24h, 7d; counted by the hour).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
}

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Replace a task's or project's budget; with no limit given, remove it.
    Set {
        #[arg(long, conflicts_with = "project", required_unless_present = "project")]
        task: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// The most tokens (input + output + cache).
        #[arg(long)]
        tokens: Option<u64>,
        /// The most US dollars, e.g. 25 or 2.50.
        #[arg(long)]
        cost: Option<String>,
    },
}

/// `3`, `0.075`, `15.5` as an integer count of 10^-`scale` units; no
/// negatives, no exponents, at most `scale` decimals.
fn dollars(text: &str, scale: u32) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("{text:?} is not an amount of US dollars like 3, 0.3 or 15.75");
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    if fraction.len() > scale as usize {
        anyhow::bail!("{text:?} has more than {scale} decimals");
    }
    let unit = 10u64.pow(scale);
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().map_err(|_| bad())? * 10u64.pow(scale - fraction.len() as u32)
    };
    whole
        .checked_mul(unit)
        .and_then(|units| units.checked_add(fraction))
        .ok_or_else(|| anyhow::anyhow!("{text:?} is too large"))
}

/// `MODEL=IN,OUT[,CACHE_READ,CACHE_WRITE]` → the model and the API's price
/// (micro-dollars per million tokens).
fn price(text: &str) -> anyhow::Result<(String, Value)> {
    let (model, amounts) = text.split_once('=').with_context(|| {
        format!("--price {text:?} is not MODEL=IN,OUT[,CACHE_READ,CACHE_WRITE]")
    })?;
    let amounts: Vec<u64> = amounts
        .split(',')
        .map(|amount| dollars(amount, 6))
        .collect::<anyhow::Result<_>>()?;
    if !(amounts.len() == 2 || amounts.len() == 4) {
        anyhow::bail!("--price {text:?} needs 2 or 4 amounts: IN,OUT[,CACHE_READ,CACHE_WRITE]");
    }
    let at = |index: usize| amounts.get(index).copied().unwrap_or(0);
    Ok((
        model.to_owned(),
        json!({"input": at(0), "output": at(1), "cache_read": at(2), "cache_write": at(3)}),
    ))
}

/// Micro-dollars per million tokens as `$3.75`.
fn per_million(micros: &Value) -> String {
    let micros = micros.as_u64().unwrap_or(0);
    format!("${}", trim(micros as f64 / 1e6))
}

fn trim(value: f64) -> String {
    let text = format!("{value:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub async fn run(client: &Client, command: LlmCommand) -> anyhow::Result<()> {
    let LlmCommand::Provider { command } = command;
    match command {
        ProviderCommand::Add {
            name,
            kind,
            base_url,
            key_file,
            models,
            prices,
        } => {
            let key = match key_file {
                Some(path) => {
                    let key = std::fs::read_to_string(&path)
                        .with_context(|| format!("read the key file {}", path.display()))?;
                    let key = key.trim().to_owned();
                    if key.is_empty() {
                        anyhow::bail!("the key file {} is empty", path.display());
                    }
                    Some(key)
                }
                None => None,
            };
            let mut priced: Vec<(String, Value)> = prices
                .iter()
                .map(|text| price(text))
                .collect::<anyhow::Result<_>>()?;
            let mut bodies = Vec::new();
            for model in &models {
                let (name, upstream) = match model.split_once('=') {
                    Some((name, upstream)) => (name, Some(upstream)),
                    None => (model.as_str(), None),
                };
                let price = priced
                    .iter()
                    .position(|(priced, _)| priced == name)
                    .map(|index| priced.remove(index).1);
                bodies.push(json!({"name": name, "upstream": upstream, "price": price}));
            }
            if let Some((model, _)) = priced.first() {
                anyhow::bail!("--price names {model:?}, which no --model adds");
            }
            let provider: Value = client
                .send(
                    client
                        .http
                        .post(client.url("/api/v1/llm/providers"))
                        .json(&json!({
                            "name": name, "kind": kind.as_str(), "base_url": base_url, "key": key,
                            "models": bodies,
                        })),
                )
                .await?;
            match client.output {
                Output::Json => print_json(&provider),
                Output::Table => {
                    println!(
                        "added provider {name} ({}) at {base_url}: {} model(s){}",
                        kind.as_str(),
                        models.len(),
                        if provider["has_key"] == true {
                            ", key sealed"
                        } else {
                            ""
                        }
                    );
                    Ok(())
                }
            }
        }
        ProviderCommand::List => {
            let list: Value = client
                .send(client.http.get(client.url("/api/v1/llm/providers")))
                .await?;
            if let Output::Json = client.output {
                return print_json(&list["providers"]);
            }
            let mut table = TextTable::new(&[
                Column::left("PROVIDER", 16),
                Column::left("KIND", 17),
                Column::left("MODEL", 28),
                Column::left("UPSTREAM", 28),
                Column::right("IN/MTOK", 8),
                Column::right("OUT/MTOK", 8),
                Column::left("BASE URL", 0),
            ]);
            for provider in list["providers"].as_array().into_iter().flatten() {
                for (model, route) in provider["models"].as_object().into_iter().flatten() {
                    table.row([
                        text(&provider["name"]).to_owned(),
                        text(&provider["kind"]).to_owned(),
                        model.clone(),
                        text(&route["upstream"]).to_owned(),
                        per_million(&route["price"]["input"]),
                        per_million(&route["price"]["output"]),
                        text(&provider["base_url"]).to_owned(),
                    ]);
                }
            }
            table.print();
            Ok(())
        }
        ProviderCommand::Remove { name } => {
            client
                .send_raw(
                    client
                        .http
                        .delete(client.url(&format!("/api/v1/llm/providers/{name}"))),
                )
                .await?;
            println!("removed provider {name}");
            Ok(())
        }
    }
}

pub async fn usage(client: &Client, args: UsageArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(task) = &args.task {
        query.push(("task", task.clone()));
    }
    if let Some(project) = &args.project {
        query.push(("project", project.clone()));
    }
    if let Some(since) = args.since {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let since_ms = now.saturating_sub(since).as_millis();
        query.push(("since_ms", since_ms.to_string()));
    }
    let usage: Value = client
        .send(client.http.get(client.url("/api/v1/usage")).query(&query))
        .await?;
    if let Output::Json = client.output {
        return print_json(&usage);
    }
    let mut table = TextTable::new(&[
        Column::left("HOUR (UTC)", 20),
        Column::left("TASK", 36),
        Column::left("MODEL", 24),
        Column::right("CALLS", 6),
        Column::right("INPUT", 10),
        Column::right("OUTPUT", 10),
        Column::right("CACHED", 10),
        Column::right("COST", 0),
    ]);
    let line = |table: &mut TextTable, hour: String, task: &str, model: &str, usage: &Value| {
        let cached = usage["cache_read_tokens"].as_u64().unwrap_or(0)
            + usage["cache_write_tokens"].as_u64().unwrap_or(0);
        table.row([
            hour,
            task.to_owned(),
            model.to_owned(),
            usage["calls"].to_string(),
            usage["input_tokens"].to_string(),
            usage["output_tokens"].to_string(),
            cached.to_string(),
            format!(
                "${}",
                trim(usage["cost_nanos"].as_u64().unwrap_or(0) as f64 / 1e9)
            ),
        ]);
    };
    for row in usage["rows"].as_array().into_iter().flatten() {
        let hour = UNIX_EPOCH + Duration::from_millis(row["hour_ms"].as_u64().unwrap_or(0));
        let hour = humantime::format_rfc3339_seconds(hour).to_string();
        line(
            &mut table,
            hour,
            text(&row["task_id"]),
            text(&row["model"]),
            &row["usage"],
        );
    }
    line(&mut table, "total".to_owned(), "", "", &usage["totals"]);
    table.print();
    Ok(())
}

pub async fn budget(client: &Client, command: BudgetCommand) -> anyhow::Result<()> {
    let BudgetCommand::Set {
        task,
        project,
        tokens,
        cost,
    } = command;
    let max_cost_nanos = cost.as_deref().map(|cost| dollars(cost, 9)).transpose()?;
    let (path, what) = match (&task, &project) {
        (Some(task), _) => (
            format!("/api/v1/tasks/{task}/budget"),
            format!("task {task}"),
        ),
        (None, Some(project)) => (
            format!("/api/v1/projects/{project}/budget"),
            format!("project {project}"),
        ),
        (None, None) => anyhow::bail!("say whose budget: --task ID or --project NAME"),
    };
    let answer: Value = client
        .send(client.http.put(client.url(&path)).json(&json!({
            "max_tokens": tokens, "max_cost_nanos": max_cost_nanos,
        })))
        .await?;
    match client.output {
        Output::Json => print_json(&answer),
        Output::Table => {
            match (tokens, &cost) {
                (None, None) => println!("{what} has no budget now"),
                _ => println!(
                    "{what}: at most {} tokens, at most {}",
                    tokens.map_or("unlimited".to_owned(), |t| t.to_string()),
                    cost.as_ref()
                        .map_or("unlimited".to_owned(), |c| format!("${c}"))
                ),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_exact_integers() {
        assert_eq!(dollars("3", 6).unwrap(), 3_000_000);
        assert_eq!(dollars("0.075", 6).unwrap(), 75_000);
        assert_eq!(dollars(".5", 9).unwrap(), 500_000_000);
        assert_eq!(dollars("15.75", 6).unwrap(), 15_750_000);
        for bad in ["", ".", "-1", "1e3", "1.2.3", "$3", "0.0000001"] {
            assert!(dollars(bad, 6).is_err(), "{bad}");
        }
        assert!(dollars("99999999999999999999", 6).is_err());
    }

    #[test]
    fn prices_name_a_model_and_two_or_four_amounts() {
        let (model, value) = price("claude=3,15,0.3,3.75").unwrap();
        assert_eq!(model, "claude");
        assert_eq!(
            value,
            json!({"input": 3_000_000, "output": 15_000_000, "cache_read": 300_000, "cache_write": 3_750_000})
        );
        assert!(price("claude=3").is_err());
        assert!(price("claude").is_err());
        assert!(price("claude=3,x").is_err());
    }
}
