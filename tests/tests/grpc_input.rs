//! Bad input on the gRPC door: wrong or missing credentials, undecodable Raft
//! payloads and invalid membership requests get clear errors, and the server
//! keeps serving.

use flotilla_proto::cluster::cluster_client::ClusterClient;
use flotilla_proto::cluster::{JoinRequest, StatusRequest};
use flotilla_proto::raft::raft_client::RaftClient;
use flotilla_proto::raft::RaftPayload;
use flotilla_tests::{with_token, ServerFlags, TestCluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_calls_are_refused_clearly() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, ServerFlags::default()).await?;
    let server = &cluster.servers[0];
    let read = |name: &str| {
        std::fs::read_to_string(server.data_dir.join(name))
            .map(|text| text.trim().to_owned())
            .expect("bootstrap wrote the file")
    };
    let (secret, node_token, join_token) = (
        read("cluster.secret"),
        read("node-join.token"),
        read("server-join.token"),
    );
    let endpoint = format!("http://{}", server.addr);
    let mut raft = RaftClient::connect(endpoint.clone()).await?;
    let mut operator = ClusterClient::connect(endpoint).await?;

    let garbage = || RaftPayload {
        json: b"{not json".to_vec(),
    };
    let status = raft
        .append_entries(garbage())
        .await
        .expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = raft
        .append_entries(with_token(garbage(), &cluster.token))
        .await
        .expect_err("operator token is not the cluster secret");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    for result in [
        raft.append_entries(with_token(garbage(), &secret)).await,
        raft.vote(with_token(garbage(), &secret)).await,
        raft.install_snapshot(with_token(garbage(), &secret)).await,
        raft.forward_write(with_token(garbage(), &secret)).await,
    ] {
        let status = result.expect_err("garbage payload");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("undecodable"), "{status:?}");
    }

    let status = operator
        .status(with_token(StatusRequest {}, &node_token))
        .await
        .expect_err("node token on the operator API");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let join = |node_id: u64, addr: &str| JoinRequest {
        node_id,
        addr: addr.to_owned(),
    };
    let status = operator
        .join(with_token(join(2, "127.0.0.1:1"), &cluster.token))
        .await
        .expect_err("operator token cannot join servers");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    for request in [
        join(0, "127.0.0.1:9"),
        join(2, "nonsense"),
        join(2, "host:0"),
    ] {
        let status = operator
            .join(with_token(request, &join_token))
            .await
            .expect_err("invalid join");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let status = operator
        .join(with_token(join(1, "127.0.0.1:9"), &join_token))
        .await
        .expect_err("node id 1 is taken at another address");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Unharmed.
    let status = operator
        .status(with_token(StatusRequest {}, &cluster.token))
        .await?
        .into_inner();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.members.len(), 1);
    assert!(cluster
        .create_task(&server.addr, "still fine", "k")
        .await?
        .is_some());
    Ok(())
}
