//! `flotilla capacity`: capacity, allocation and free room per node, per GPU
//! and for the whole fleet, over the HTTP API.

use serde_json::Value;

use crate::client::Client;
use crate::render::{
    amount, count, human_bytes, millis, print_json, text, Column, Output, TextTable,
};

pub async fn run(client: &Client, stale: bool) -> anyhow::Result<()> {
    let capacity: Value = client
        .send(
            client
                .http
                .get(client.url("/api/v1/capacity"))
                .query(&[("stale", stale)]),
        )
        .await?;
    if let Output::Json = client.output {
        return print_json(&capacity);
    }
    print!("{}", capacity_table(&capacity));
    Ok(())
}

/// One line per node (`alloc/cap free` of each resource), its GPUs under
/// it (outside the table, so a long GPU name widens no column), then the
/// fleet's total.
fn capacity_table(capacity: &Value) -> String {
    let mut table = TextTable::new(&[
        Column::left("NODE", 24),
        Column::right("CPU (alloc/cap free)", 21),
        Column::right("MEMORY", 27),
        Column::right("GPU MEMORY", 27),
        Column::right("DESKTOPS", 12),
    ]);
    let line = |table: &mut TextTable, name: String, value: &Value| {
        let free = |key: &str, format: fn(u64) -> String| {
            format!(
                "{} {}",
                amount(&value[key], format),
                format(value[key]["free"].as_u64().unwrap_or(0))
            )
        };
        table.row([
            name,
            free("cpu_millis", millis),
            free("memory_bytes", human_bytes),
            free("gpu_memory_bytes", human_bytes),
            free("desktops", count),
        ]);
    };
    // The GPU lines printed after each table row (by row).
    let mut gpu_lines = Vec::new();
    for node in capacity["nodes"].as_array().into_iter().flatten() {
        let label = format!("{} ({})", text(&node["name"]), text(&node["status"]));
        line(&mut table, label, node);
        let gpus = node["gpus"].as_array().into_iter().flatten();
        gpu_lines.push(
            gpus.map(|gpu| {
                // `{:<3}` never padded a JSON value: `  gpu-0 NVIDIA H200 ...`.
                format!(
                    "  gpu-{} {:<40} {}\n",
                    gpu["index"],
                    text(&gpu["name"]),
                    amount(&gpu["memory_bytes"], human_bytes)
                )
            })
            .collect::<String>(),
        );
    }
    let total = &capacity["total"];
    line(
        &mut table,
        format!("TOTAL ({} ready)", total["nodes"]),
        total,
    );
    let mut out = String::new();
    // Line 0 is the header; line i + 1 is row i.
    for (index, table_line) in table.render().lines().enumerate() {
        out.push_str(table_line);
        out.push('\n');
        if let Some(gpus) = index.checked_sub(1).and_then(|row| gpu_lines.get(row)) {
            out.push_str(gpus);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_lines_read_as_before_with_gpus_under_their_node() {
        let amounts = |allocated: u64, capacity: u64| json!({"allocated": allocated, "capacity": capacity, "free": capacity - allocated});
        let node = json!({
            "name": "gpu-01", "status": "ready",
            "cpu_millis": amounts(500, 16000),
            "memory_bytes": amounts(2 << 30, 64 << 30),
            "gpu_memory_bytes": amounts(0, 140 << 30),
            "desktops": amounts(1, 16),
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": amounts(0, 140 << 30)}],
        });
        let mut total = node.clone();
        total["nodes"] = json!(1);
        let capacity = json!({"nodes": [node], "total": total});
        let text = capacity_table(&capacity);
        let lines: Vec<&str> = text.lines().collect();
        let row = |name: &str| {
            format!(
                "{:<24}  {:>21}  {:>27}  {:>27}  {:>12}",
                name,
                "500m/16000m 15500m",
                "2.0 GiB/64.0 GiB 62.0 GiB",
                "0 MiB/140.0 GiB 140.0 GiB",
                "1/16 15"
            )
        };
        assert_eq!(
            lines[0],
            format!(
                "{:<24}  {:>21}  {:>27}  {:>27}  {:>12}",
                "NODE", "CPU (alloc/cap free)", "MEMORY", "GPU MEMORY", "DESKTOPS"
            )
        );
        assert_eq!(lines[1], row("gpu-01 (ready)"));
        assert_eq!(
            lines[2],
            format!("  gpu-0 {:<40} 0 MiB/140.0 GiB", "NVIDIA H100 80GB HBM3")
        );
        assert_eq!(lines[3], row("TOTAL (1 ready)"));
        assert_eq!(lines.len(), 4);
    }
}
