//! `flotilla desktop list|exec|screenshot|input|logs`: running desktops,
//! over the HTTP API. `exec` streams the remote command's output here and
//! ends with its exit status ([`RemoteExit`], which `main` turns into ours).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::parse::parse_bytes;
use crate::render::{print_json, text, Column, Output, TextTable};

#[derive(Subcommand)]
pub enum DesktopCommand {
    /// Every desktop: task, node and state.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Run a command inside a running desktop's sandbox, as its user; its
    /// stdout and stderr stream here and its exit status is ours.
    Exec {
        /// The desktop (see `flotilla desktop list`).
        id: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Save a running desktop's current frame as a PNG.
    Screenshot {
        id: String,
        /// Where to write it.
        #[arg(short, long, default_value = "screenshot.png")]
        output_file: PathBuf,
    },
    /// Type into a running desktop, press a key, or list its windows.
    Input {
        id: String,
        /// Text typed through the desktop's keymap; `\n` is Enter, `\t` Tab.
        #[arg(long, group = "what")]
        text: Option<String>,
        /// A key (xkb keysym name: Return, Escape, F5, Control_L) tapped.
        #[arg(long, group = "what")]
        key: Option<String>,
        /// List the desktop's windows.
        #[arg(long, group = "what")]
        windows: bool,
        /// Any control request as JSON (e.g. {"op":"motion","x":10,"y":20}).
        #[arg(long, group = "what")]
        json: Option<String>,
        /// Give this window the keyboard first: an app id (foot, chromium)
        /// or a part of its title (`--windows` lists them).
        #[arg(long, requires = "what", conflicts_with = "windows")]
        window: Option<String>,
    },
    /// The tail of a running desktop's output.
    Logs {
        id: String,
        /// Bytes from the end, e.g. 64KiB (at most 16MiB).
        #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
        tail: u64,
    },
}

/// A `desktop exec` whose remote command exited with this (non-zero)
/// status: `flotilla` exits with it too.
#[derive(Debug, thiserror::Error)]
#[error("the command exited with status {0}")]
pub struct RemoteExit(pub i32);

pub async fn run(client: &Client, command: DesktopCommand) -> anyhow::Result<()> {
    match command {
        DesktopCommand::List { stale } => list(client, stale).await,
        DesktopCommand::Exec { id, command } => exec(client, &id, command).await,
        DesktopCommand::Logs { id, tail } => logs(client, &id, tail).await,
        DesktopCommand::Screenshot { id, output_file } => {
            screenshot(client, &id, &output_file).await
        }
        DesktopCommand::Input {
            id,
            text,
            key,
            windows,
            json,
            window,
        } => {
            let request = match (text, key, windows, json) {
                (Some(text), None, false, None) => {
                    json!({"op": "text", "text": unescape(&text)})
                }
                (None, Some(key), false, None) => json!({"op": "key", "name": key}),
                (None, None, true, None) => json!({"op": "windows"}),
                (None, None, false, Some(json)) => {
                    serde_json::from_str(&json).context("--json is not a JSON object")?
                }
                _ => anyhow::bail!("give one of --text, --key, --windows or --json"),
            };
            if let Some(name) = window {
                let listed = send_input(client, &id, &json!({"op": "windows"})).await?;
                let windows = listed["windows"].as_array().map_or(&[][..], Vec::as_slice);
                let window = find_window(windows, &name)?;
                send_input(client, &id, &json!({"op": "focus", "id": window})).await?;
            }
            input(client, &id, request).await
        }
    }
}

async fn list(client: &Client, stale: bool) -> anyhow::Result<()> {
    let list: Value = client
        .send(
            client
                .http
                .get(client.url("/api/v1/desktops"))
                .query(&[("stale", stale)]),
        )
        .await?;
    if let Output::Json = client.output {
        return print_json(&list["desktops"]);
    }
    print_desktops(list["desktops"].as_array().map_or(&[][..], Vec::as_slice));
    Ok(())
}

/// The desktop table, for `desktop list` and `node status`.
pub fn print_desktops(desktops: &[Value]) {
    desktops_table(desktops).print();
}

fn desktops_table(desktops: &[Value]) -> TextTable {
    let mut table = TextTable::new(&[
        Column::left("ID", 12),
        Column::left("TASK", 36),
        Column::left("NODE", 20),
        Column::left("STATE", 9),
        Column::left("INTENT", 8),
        Column::left("REASON", 0),
    ]);
    for desktop in desktops {
        table.row([
            text(&desktop["id"]),
            text(&desktop["task"]),
            desktop["node"].as_str().unwrap_or("(pending)"),
            text(&desktop["state"]),
            text(&desktop["intent"]),
            desktop["reason"].as_str().unwrap_or(""),
        ]);
    }
    table
}

/// `flotilla desktop exec ID -- COMMAND...`.
async fn exec(client: &Client, id: &str, command: Vec<String>) -> anyhow::Result<()> {
    let response = client
        .send_raw(
            client
                .http
                .post(client.url(&format!("/api/v1/desktops/{id}/exec")))
                .json(&json!({ "command": command })),
        )
        .await?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut lines = ndjson::Lines::new(response);
    while let Some(line) = lines.next().await? {
        let value: Value = serde_json::from_slice(&line).with_context(|| {
            format!(
                "decode the server's answer: {}",
                String::from_utf8_lossy(&line)
            )
        })?;
        if let Some(text) = value["stdout"].as_str() {
            let mut out = std::io::stdout().lock();
            out.write_all(&engine.decode(text)?)?;
            out.flush()?;
        } else if let Some(text) = value["stderr"].as_str() {
            let mut err = std::io::stderr().lock();
            err.write_all(&engine.decode(text)?)?;
            err.flush()?;
        } else if let Some(code) = value["exit_code"].as_i64() {
            return match code {
                0 => Ok(()),
                code => Err(RemoteExit(code as i32).into()),
            };
        } else if let Some(message) = value["error"].as_str() {
            anyhow::bail!("{message}");
        }
    }
    anyhow::bail!("the server ended the session without an exit status")
}

/// `flotilla desktop logs ID`.
async fn logs(client: &Client, id: &str, tail: u64) -> anyhow::Result<()> {
    let mut response = client
        .send_raw(
            client
                .http
                .get(client.url(&format!("/api/v1/desktops/{id}/logs")))
                .query(&[("tail", tail)]),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response.chunk().await.context("read the log")? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}

/// Saves desktop `id`'s current frame as a PNG at `path`.
async fn screenshot(client: &Client, id: &str, path: &Path) -> anyhow::Result<()> {
    let response = client
        .send_raw(
            client
                .http
                .get(client.url(&format!("/api/v1/desktops/{id}/screenshot"))),
        )
        .await?;
    let png = response.bytes().await.context("read the screenshot")?;
    std::fs::write(path, &png).with_context(|| format!("write {}", path.display()))?;
    eprintln!("{} ({} bytes)", path.display(), png.len());
    Ok(())
}

/// Sends one control request (a JSON object) to desktop `id`; its answer.
async fn send_input(client: &Client, id: &str, request: &Value) -> anyhow::Result<Value> {
    client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/desktops/{id}/input")))
                .json(request),
        )
        .await
}

/// No window of the desktop answers to a `--window` name.
#[derive(Debug, thiserror::Error)]
#[error("no window is {name:?} (by app id or title); the desktop has: {have}")]
pub struct NoSuchWindow {
    name: String,
    have: String,
}

/// The id of the window `name` means: the one whose app id is `name`,
/// else the first whose app id starts with it (chromium's app windows are
/// `chrome-<page>-<profile>`), else the first whose title contains it
/// (ignoring case).
fn find_window(windows: &[Value], name: &str) -> Result<u64, NoSuchWindow> {
    let app_id = |w: &&Value| w["app_id"].as_str().unwrap_or_default().to_owned();
    let lower = name.to_lowercase();
    let by_app = windows.iter().find(|w| app_id(w) == name);
    let by_prefix = || windows.iter().find(|w| app_id(w).starts_with(name));
    let by_title = || {
        windows.iter().find(|w| {
            w["title"]
                .as_str()
                .is_some_and(|title| title.to_lowercase().contains(&lower))
        })
    };
    by_app
        .or_else(by_prefix)
        .or_else(by_title)
        .and_then(|w| w["id"].as_u64())
        .ok_or_else(|| NoSuchWindow {
            name: name.to_owned(),
            have: match windows
                .iter()
                .map(|w| format!("{} ({})", text(&w["app_id"]), text(&w["title"])))
                .collect::<Vec<_>>()
                .join(", ")
            {
                none if none.is_empty() => "no windows".to_owned(),
                some => some,
            },
        })
}

/// Sends one control request (a JSON object) to desktop `id` and prints
/// the answer.
async fn input(client: &Client, id: &str, request: Value) -> anyhow::Result<()> {
    let answer = send_input(client, id, &request).await?;
    if let Output::Json = client.output {
        return print_json(&answer);
    }
    if let Some(windows) = answer["windows"].as_array() {
        print!("{}", windows_list(windows));
    }
    Ok(())
}

/// `3 * foot             1280x800+0+0  ~`: id, focus, app, geometry,
/// title, one window a line (a list, not a table: the geometry is not
/// padded, as scripts that split on spaces expect).
fn windows_list(windows: &[Value]) -> String {
    windows
        .iter()
        .map(|window| {
            format!(
                "{:>3} {} {:<16} {}x{}+{}+{}  {}\n",
                // A JSON value ignores `{:>3}`: `3 * foot`, as always.
                window["id"],
                if window["focused"] == true { "*" } else { " " },
                text(&window["app_id"]),
                window["width"],
                window["height"],
                window["x"],
                window["y"],
                text(&window["title"])
            )
        })
        .collect()
}

/// `\n`, `\t` and `\\` in a `--text` argument (shells pass them literally).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Newline-separated records from a streamed response (`desktop exec`).
mod ndjson {
    /// Longest record accepted (a base64 chunk of 1 MiB and then some).
    const MAX_LINE: usize = 4 << 20;

    pub struct Lines {
        response: reqwest::Response,
        buffer: Vec<u8>,
        done: bool,
    }

    impl Lines {
        pub fn new(response: reqwest::Response) -> Lines {
            Lines {
                response,
                buffer: Vec::new(),
                done: false,
            }
        }

        /// The next record without its newline; `None` at the end.
        pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
            loop {
                if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    return Ok(Some(line[..line.len() - 1].to_vec()));
                }
                if self.done {
                    return Ok(None);
                }
                anyhow::ensure!(self.buffer.len() <= MAX_LINE, "an answer line is too long");
                match self.response.chunk().await? {
                    Some(chunk) => self.buffer.extend_from_slice(&chunk),
                    None => self.done = true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_become_keys() {
        assert_eq!(unescape(r"ls -l\n"), "ls -l\n");
        assert_eq!(unescape(r"a\tb\\c\q\"), "a\tb\\c\\q\\");
    }

    #[test]
    fn a_window_is_found_by_app_id_then_by_title() {
        let windows = [
            json!({"id": 1, "app_id": "foot", "title": "chromium notes"}),
            json!({"id": 2, "app_id": "chromium", "title": "New Tab - Chromium"}),
        ];
        assert_eq!(find_window(&windows, "chromium").ok(), Some(2));
        assert_eq!(find_window(&windows, "foot").ok(), Some(1));
        assert_eq!(find_window(&windows, "new tab").ok(), Some(2));
        assert_eq!(find_window(&windows, "chrom").ok(), Some(2));
        assert_eq!(find_window(&windows, "NOTES").ok(), Some(1));
        let error = find_window(&windows, "gimp").unwrap_err().to_string();
        assert_eq!(
            error,
            "no window is \"gimp\" (by app id or title); the desktop has: \
             foot (chromium notes), chromium (New Tab - Chromium)"
        );
        assert!(find_window(&[], "foot")
            .unwrap_err()
            .to_string()
            .ends_with("no windows"));
    }

    #[test]
    fn the_window_list_reads_as_before() {
        let windows = [
            json!({"id": 3, "focused": true, "app_id": "foot", "width": 1280,
                "height": 800, "x": 0, "y": 0, "title": "~"}),
            json!({"id": 12, "focused": false, "app_id": "chromium", "width": 640,
                "height": 80, "x": 64, "y": 0, "title": "page"}),
        ];
        assert_eq!(
            windows_list(&windows),
            "3 * foot             1280x800+0+0  ~\n\
             12   chromium         640x80+64+0  page\n"
        );
    }

    #[test]
    fn the_desktop_table_lines_up_as_before() {
        let desktops = [
            json!({"id": "dt-1", "task": "8c1d", "node": "gpu-01", "state": "running",
                "intent": "run"}),
            json!({"id": "dt-2", "task": "9f2e", "state": "pending", "intent": "run",
                "reason": "no node has 8 GiB free"}),
        ];
        let mut expected = format!(
            "{:<12}  {:<36}  {:<20}  {:<9}  {:<8}  REASON\n",
            "ID", "TASK", "NODE", "STATE", "INTENT"
        );
        for desktop in &desktops {
            let line = format!(
                "{:<12}  {:<36}  {:<20}  {:<9}  {:<8}  {}",
                text(&desktop["id"]),
                text(&desktop["task"]),
                desktop["node"].as_str().unwrap_or("(pending)"),
                text(&desktop["state"]),
                text(&desktop["intent"]),
                desktop["reason"].as_str().unwrap_or("")
            );
            // The hand-aligned table left trailing spaces after an empty reason.
            expected += line.trim_end();
            expected.push('\n');
        }
        assert_eq!(desktops_table(&desktops).render(), expected);
    }
}
