//! A 3-member etcd 3.4 cluster (Debian's `etcd-server`) on 127.0.0.1 with
//! default durability, as the peer in the Raft benchmark.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::Target;

pub struct EtcdCluster {
    _root: tempfile::TempDir,
    members: Vec<(Child, String)>,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        if Command::new("etcd").arg("--version").output().is_err() {
            bail!("etcd is not installed: apt-get install -y etcd-server (or pass --no-etcd)");
        }
        let root = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| (flotilla_tests::free_port(), flotilla_tests::free_port()))
            .collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(index, (_, peer))| format!("e{index}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (index, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(root.path().join(format!("e{index}.log")))?;
            let child = Command::new("etcd")
                .args([
                    "--name",
                    &format!("e{index}"),
                    "--data-dir",
                    &root.path().join(format!("e{index}")).display().to_string(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "flotilla-bench",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start etcd")?;
            members.push((child, format!("127.0.0.1:{client}")));
        }
        let cluster = EtcdCluster {
            _root: root,
            members,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.leader().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not elect a leader in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    /// Client address of the member that leads.
    async fn leader(&self) -> anyhow::Result<String> {
        let http = reqwest::Client::new();
        for (_, addr) in &self.members {
            let status: serde_json::Value = http
                .post(format!("http://{addr}/v3/maintenance/status"))
                .json(&serde_json::json!({}))
                .send()
                .await?
                .json()
                .await?;
            let member = status["header"]["member_id"].as_str().unwrap_or_default();
            let leader = status["leader"].as_str().unwrap_or_default();
            if !leader.is_empty() && leader != "0" && member == leader {
                return Ok(addr.clone());
            }
        }
        bail!("no etcd member leads")
    }

    pub async fn target(&self) -> anyhow::Result<EtcdTarget> {
        Ok(EtcdTarget {
            url: format!("http://{}/v3/kv/put", self.leader().await?),
        })
    }

    pub fn stop(mut self) {
        for (child, _) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct EtcdTarget {
    url: String,
}

/// Base64 without a crate: etcd's JSON gateway wants bytes fields encoded.
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut output = String::new();
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let value = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for position in 0..4 {
            if position <= chunk.len() {
                output.push(TABLE[((value >> (18 - 6 * position)) & 63) as usize] as char);
            } else {
                output.push('=');
            }
        }
    }
    output
}

impl Target for EtcdTarget {
    async fn write(&self, client: &reqwest::Client, key: String) -> anyhow::Result<()> {
        // The same payload a task carries: a title-sized value.
        let value = format!("{{\"title\":\"{key}\"}}");
        let response = client
            .post(&self.url)
            .json(&serde_json::json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()) }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("HTTP {}", response.status());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
