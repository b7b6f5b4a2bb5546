//! The client API's token (guarantee 8 for the API port): a node with peers
//! will not start without one; with one, a caller without it (or with a wrong
//! one) reads and writes nothing, while health and reflection stay open.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::time::Duration;

use tessera::config::{DiscoveryMode, NodeConfig};
use tessera::secret::{ApiToken, ClusterSecret, SecretError};
use tessera::server::{self, NodeHandle, NodeOptions, ServerError};
use tessera_client::{Client, ClientConfig, Error, ListFilter, NewTicket, TicketUpdate};

const TOKEN: &str = "auth-test-api-token-0123456789abcdef";
const HOUR: Duration = Duration::from_secs(3600);

fn secret() -> ClusterSecret {
    ClusterSecret::new(b"auth-test-cluster-secret-0123456789abcdef").expect("secret")
}

fn token() -> ApiToken {
    ApiToken::new(TOKEN.as_bytes()).expect("token")
}

/// A node configured to find peers (none of which exist).
fn clustered() -> NodeConfig {
    NodeConfig {
        discovery: Some(DiscoveryMode::Static),
        seeds: vec!["127.0.0.1:9".into()],
        expected_size: Some(3),
        gossip_listen: Some("127.0.0.1:0".parse().expect("addr")),
        peer_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..common::config()
    }
}

async fn client(node: &NodeHandle, token: Option<&str>) -> Client {
    let config = ClientConfig {
        call_timeout: Duration::from_secs(5),
        token: token.map(str::to_owned),
        ..ClientConfig::default()
    };
    common::client_with(node, config).await
}

/// A token file with the given mode.
#[cfg(unix)]
fn token_file(contents: &str, mode: u32) -> tempfile::NamedTempFile {
    use std::os::unix::fs::PermissionsExt;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), contents).expect("write");
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    file
}

#[tokio::test]
async fn a_node_with_peers_refuses_to_start_without_an_api_token() {
    let started = server::start_with(
        clustered(),
        NodeOptions {
            secret: Some(secret()),
            ..NodeOptions::default()
        },
    )
    .await;
    let Err(error) = started else {
        panic!("a clustered node started with an open API");
    };
    assert!(matches!(error, ServerError::ApiTokenMissing), "{error:?}");
    let message = error.to_string();
    for names in ["api_token_file", "TESSERA_API_TOKEN", "peers"] {
        assert!(message.contains(names), "{message}");
    }

    // Reusing the cluster secret as the token is refused too.
    let same = ApiToken::new(b"auth-test-cluster-secret-0123456789abcdef").unwrap();
    let started = server::start_with(
        clustered(),
        NodeOptions {
            secret: Some(secret()),
            api_token: Some(same),
            ..NodeOptions::default()
        },
    )
    .await;
    assert!(matches!(started, Err(ServerError::ApiTokenIsClusterSecret)));
}

#[cfg(unix)]
#[tokio::test]
async fn a_world_readable_token_file_is_refused() {
    let readable = token_file(&format!("{TOKEN}\n"), 0o644);
    let config = NodeConfig {
        api_token_file: Some(readable.path().to_owned()),
        ..common::config()
    };
    let Err(error) = server::start(config).await else {
        panic!("started with a world-readable token file");
    };
    assert!(
        matches!(
            error,
            ServerError::Secret(SecretError::WorldReadable { .. })
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("API token file"), "{message}");
    assert!(
        message.contains(&readable.path().display().to_string()),
        "{message}"
    );
    assert!(!message.contains(TOKEN), "never shows the token: {message}");

    // The same file, private: the node starts and requires the token in it.
    let private = token_file(&format!("{TOKEN}\n"), 0o600);
    let config = NodeConfig {
        api_token_file: Some(private.path().to_owned()),
        ..common::config()
    };
    let node = server::start(config).await.expect("node starts");
    assert!(matches!(
        client(&node, None).await.count().await,
        Err(Error::Unauthenticated(_))
    ));
    client(&node, Some(TOKEN))
        .await
        .count()
        .await
        .expect("the token from the file");
    common::stop(node).await;
}

#[tokio::test]
async fn without_the_token_nothing_is_read_or_written() {
    let node = server::start_with(
        common::config(),
        NodeOptions {
            api_token: Some(token()),
            ..NodeOptions::default()
        },
    )
    .await
    .expect("node starts");
    let owner = client(&node, Some(TOKEN)).await;
    owner
        .put(NewTicket::new("TGT-1-auth", HOUR).principal("alice"))
        .await
        .expect("put with the token");
    owner
        .put(
            NewTicket::new("ST-1-auth", HOUR)
                .parent("TGT-1-auth")
                .max_uses(1),
        )
        .await
        .expect("put with the token");
    let before = owner.count().await.expect("count with the token");
    assert_eq!(before.total, 2);

    let wrong = "a-wrong-token-that-looks-just-as-real-as-the-right-one";
    let mut refused = 0u64;
    for token in [None, Some(wrong)] {
        let stranger = client(&node, token).await;
        let outcomes: Vec<(&str, Result<(), Error>)> = vec![
            (
                "put",
                stranger
                    .put(NewTicket::new("TGT-2-auth", HOUR))
                    .await
                    .map(drop),
            ),
            (
                "put over",
                stranger
                    .put(NewTicket::new("ST-1-auth", HOUR))
                    .await
                    .map(drop),
            ),
            ("get", stranger.get("TGT-1-auth").await.map(drop)),
            ("touch", stranger.touch("TGT-1-auth").await.map(drop)),
            ("consume", stranger.consume("ST-1-auth").await.map(drop)),
            (
                "update",
                stranger
                    .update(
                        "TGT-1-auth",
                        TicketUpdate {
                            payload: Some(bytes::Bytes::from_static(b"x")),
                            ..TicketUpdate::default()
                        },
                    )
                    .await
                    .map(drop),
            ),
            ("delete", stranger.delete("TGT-1-auth").await.map(drop)),
            ("delete_all", stranger.delete_all().await.map(drop)),
            ("delete_for", stranger.delete_for("alice").await.map(drop)),
            ("count", stranger.count().await.map(drop)),
            ("sessions", stranger.sessions_for("alice").await.map(drop)),
            ("members", stranger.members().await.map(drop)),
            ("list", stranger.list(ListFilter::default()).await.map(drop)),
        ];
        for (call, outcome) in outcomes {
            match outcome {
                Err(Error::Unauthenticated(message)) => {
                    assert!(
                        message.ends_with("missing or wrong API token"),
                        "{call}: {message}"
                    );
                    assert!(!message.contains(wrong), "{call} echoes the token");
                }
                other => panic!("{call} with token {token:?}: {other:?}"),
            }
            refused += 1;
        }
    }
    assert_eq!(node.api_rejections(), refused, "every refusal counted");

    // Nothing was written, touched, used or deleted.
    let after = owner.count().await.expect("count with the token");
    assert_eq!(after, before);
    assert!(owner.get("TGT-2-auth").await.unwrap_err().is_not_found());
    let tgt = owner.get("TGT-1-auth").await.expect("still there");
    assert_eq!(tgt.uses, 0, "not touched");
    assert!(tgt.payload.is_empty(), "not updated");
    let st = owner.consume("ST-1-auth").await.expect("still unused");
    assert_eq!(st.uses, 1);
    assert_eq!(owner.sessions_for("alice").await.unwrap().len(), 1);
    let listed = owner
        .list(ListFilter::default())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "the TGT; the ST is used up");
    assert_eq!(
        node.api_rejections(),
        refused,
        "the owner was never refused"
    );

    // The health service answers without a token.
    assert_eq!(common::health(&node).await, 1, "SERVING");
    common::stop(node).await;
}

#[tokio::test]
async fn reflection_stays_open_and_an_open_node_needs_no_token() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let node = server::start_with(
        common::config(),
        NodeOptions {
            api_token: Some(token()),
            ..NodeOptions::default()
        },
    )
    .await
    .expect("node starts");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.api_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    assert!(responses.message().await.expect("a response").is_some());
    assert_eq!(node.api_rejections(), 0);
    common::stop(node).await;

    // A single node without a token: open, as before (a token sent anyway is ignored).
    let (open, plain) = common::start().await;
    plain.count().await.expect("no token needed");
    client(&open, Some(TOKEN))
        .await
        .count()
        .await
        .expect("ignored");
    common::stop(open).await;
}
