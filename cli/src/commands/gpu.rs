//! `flotilla gpu info`: each GPU as gpud opened it (capabilities, memory)
//! and, per desktop, the GPU memory gpud charges it against its budget.

use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::render::{human_bytes, print_json, text, Column, Output, TextTable};

#[derive(Subcommand)]
pub enum GpuCommand {
    /// Each GPU's capabilities and, per desktop, the GPU memory gpud
    /// charges it and its budget.
    Info {
        /// Only this node's GPUs.
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(client: &Client, command: GpuCommand) -> anyhow::Result<()> {
    let GpuCommand::Info { node } = command;
    let mut request = client.http.get(client.url("/api/v1/gpus"));
    if let Some(node) = &node {
        request = request.query(&[("node", node)]);
    }
    let info: Value = client.send(request).await?;
    if let Output::Json = client.output {
        return print_json(&info);
    }
    let flag = |value: &Value| {
        if value.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    let gpus = info["gpus"].as_array().cloned().unwrap_or_default();
    if gpus.is_empty() && info["cpu_rendered"].as_array().is_none_or(|l| l.is_empty()) {
        println!("no GPUs");
    }
    for gpu in &gpus {
        println!(
            "{} gpu-{}  {}  ({})",
            text(&gpu["node"]),
            gpu["index"],
            text(&gpu["name"]),
            text(&gpu["driver"])
        );
        println!("  uuid:     {}", text(&gpu["uuid"]));
        println!(
            "  memory:   {}, {} charged to desktops",
            human_bytes(gpu["memory_bytes"].as_u64().unwrap_or(0)),
            human_bytes(gpu["charged_bytes"].as_u64().unwrap_or(0))
        );
        let c = &gpu["capabilities"];
        if c.is_null() {
            println!("  gpud:     not opened (the CPU renders for its desktops)");
        } else {
            println!(
                "  vulkan:   {}, {} queue(s); dma-buf {}, DRM modifiers {}, memory budget {}, external memory fd {}, semaphore fd {}, fence fd {}, video encode {}",
                text(&c["api_version"]),
                c["queue_count"],
                flag(&c["dma_buf"]),
                flag(&c["drm_format_modifiers"]),
                flag(&c["memory_budget"]),
                flag(&c["external_memory_fd"]),
                flag(&c["external_semaphore_fd"]),
                flag(&c["external_fence_fd"]),
                flag(&c["video_encode"]),
            );
        }
        println!(
            "  desktops: {} (charged of budget)",
            gpu["desktops"].as_array().map_or(0, Vec::len)
        );
        charges_table(&gpu["desktops"]).print();
    }
    if let Some(list) = info["cpu_rendered"].as_array().filter(|l| !l.is_empty()) {
        println!("rendered on the CPU (nodes without a GPU): {}", list.len());
        charges_table(&info["cpu_rendered"]).print();
    }
    Ok(())
}

/// `    dt-1      256 MiB of    1.0 GiB`, one line per desktop.
fn charges_table(list: &Value) -> TextTable {
    let mut table = TextTable::new(&[
        Column::left("", 24).gap(1),
        Column::right("", 10).gap(1),
        Column::left("", 0).gap(1),
        Column::right("", 10),
    ])
    .indent(4);
    for desktop in list.as_array().into_iter().flatten() {
        table.row([
            text(&desktop["desktop"]).to_owned(),
            human_bytes(desktop["charged_bytes"].as_u64().unwrap_or(0)),
            "of".to_owned(),
            human_bytes(desktop["budget_bytes"].as_u64().unwrap_or(0)),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn charges_line_up_as_before() {
        let list = json!([
            {"desktop": "dt-1", "charged_bytes": 262_144, "budget_bytes": 1 << 20},
            {"desktop": "dt-22", "charged_bytes": 3u64 << 29, "budget_bytes": 2u64 << 30},
        ]);
        let expected: String = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|desktop| {
                format!(
                    "    {:<24} {:>10} of {:>10}\n",
                    text(&desktop["desktop"]),
                    human_bytes(desktop["charged_bytes"].as_u64().unwrap_or(0)),
                    human_bytes(desktop["budget_bytes"].as_u64().unwrap_or(0)),
                )
            })
            .collect();
        assert_eq!(charges_table(&list).render(), expected);
        assert_eq!(charges_table(&json!([])).render(), "");
    }
}
