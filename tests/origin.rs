//! `TaggerGenerateContainerIDFromOriginInfo` end to end: our server on
//! fixture hosts (cgroup v1 and v2; Docker, containerd and CRI-O; kubepods
//! with the cgroupfs and systemd drivers; the kubelet's log links) and on
//! this machine, asked by the raw generated tonic client over a pinned
//! connection, as a Datadog Agent process would ask, and by our client.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use common::host_fixtures::fixture;
use common::{TestServer, client_config, within};
use remote_tagger::client::{self, ClientConfig, FetchError, RemoteTagger};
use remote_tagger::core::StatusCode;
use remote_tagger::origin::{ExternalData, LocalData, OriginInfo};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model::{
    self as pb, GenerateContainerIdFromOriginInfoRequest as Request,
    GenerateContainerIdFromOriginInfoResponse as Response,
    generate_container_id_from_origin_info_request::{
        ExternalData as WireExternal, LocalData as WireLocal,
    },
};
use remote_tagger::server::{OriginResult, Source, container_in_cgroup_file, scan_host};
use tonic::Code;
use tonic::transport::Channel;

const DOCKER_ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
const POD_CONTAINER_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const POD_UID: &str = "1d3f2a9c-5b7e-4c1a-9f0e-2b6d8a4c3e1f";
/// The CRI-O node: pod web-0 runs `app` and the init container `init-db`.
const CRIO_APP: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const CRIO_INIT: &str = "b0c1d2e3f405162738495a6b7c8d9e0fb0c1d2e3f405162738495a6b7c8d9e0f";
const CRIO_POD_UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const CRIO_POD_SLICE: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c9e6679_7425_40de_944b_e07fc1f90ae7.slice";

/// A server of the host source on `root`.
async fn host_server(root: &Path) -> TestServer {
    let root = root.to_owned();
    TestServer::start(move |config| {
        config.source = Source::Host {
            root,
            interval: Duration::from_secs(3600),
        }
    })
    .await
}

/// The raw generated client over a connection pinned to the server's
/// certificate, as Datadog's clients connect.
async fn raw_client(server: &TestServer) -> AgentSecureClient<Channel> {
    AgentSecureClient::new(
        common::datadog_client::pinned_channel(server.addr, &server.cert_path()).await,
    )
}

/// A request as the Agent's Go client builds it: every field set, zero
/// for what it does not know.
fn go_request(pid: u32, inode: u64, pod_uid: &str, container_name: &str, init: bool) -> Request {
    Request {
        local_data: Some(WireLocal {
            process_id: Some(pid),
            container_id: Some(String::new()),
            inode: Some(inode),
            pod_uid: Some(String::new()),
        }),
        external_data: Some(WireExternal {
            init: Some(init),
            container_name: Some(container_name.to_owned()),
            pod_uid: Some(pod_uid.to_owned()),
        }),
    }
}

/// `message` with the server's token.
fn authorized<T>(server: &TestServer, message: T) -> tonic::Request<T> {
    let mut call = tonic::Request::new(message);
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.token()).parse().unwrap(),
    );
    call
}

/// The server's answer to `request`, which must be OK.
async fn ask(
    server: &TestServer,
    client: &mut AgentSecureClient<Channel>,
    request: Request,
) -> String {
    within(
        "an origin answer",
        client.tagger_generate_container_id_from_origin_info(authorized(server, request.clone())),
    )
    .await
    .unwrap_or_else(|status| panic!("{request:?} answered {status:?}"))
    .into_inner()
    .container_id
}

/// The origin requests the server answered, by result, of the results it
/// answered any with.
fn answered(server: &TestServer) -> Vec<(&'static str, u64)> {
    let stats = server.store.stats();
    OriginResult::ALL
        .into_iter()
        .map(|result| (result.as_str(), stats.origin_requests.get(result)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[tokio::test]
async fn pids_resolve_through_their_cgroup_files_on_v1_v2_and_cri_o_hosts() {
    let hosts = [
        (
            "host-cgroup-v1",
            // Docker; kubepods with the cgroupfs driver; init; a kernel
            // thread at the root; a process that vanished (no cgroup file).
            &[
                (100, DOCKER_ID),
                (200, POD_CONTAINER_ID),
                (1, ""),
                (2, ""),
                (300, ""),
            ][..],
        ),
        (
            "host-cgroup-v2",
            // Docker's systemd scope; containerd under kubepods' systemd
            // driver (pause and app); the root cgroup; a file with a
            // malformed line.
            &[
                (50, DOCKER_ID),
                (60, POD_CONTAINER_ID),
                (61, POD_CONTAINER_ID),
                (70, ""),
                (80, ""),
            ],
        ),
        (
            "host-kubelet-crio",
            // CRI-O's app and init containers; conmon beside them, in none.
            &[(40, CRIO_APP), (41, CRIO_INIT), (42, ""), (1, "")],
        ),
    ];
    for (host, pids) in hosts {
        let server = host_server(&fixture(host)).await;
        let mut client = raw_client(&server).await;
        for &(pid, expected) in pids {
            let answer = ask(&server, &mut client, go_request(pid, 0, "", "", false)).await;
            assert_eq!(answer, expected, "{host}: pid {pid}");
        }
        // No such process, the largest PID a client can send.
        for pid in [999_999, u32::MAX] {
            assert_eq!(
                ask(&server, &mut client, go_request(pid, 0, "", "", false)).await,
                ""
            );
        }
        server.stop().await;
    }
}

/// The inode of `path`'s directory, as a client reads its own cgroup's.
fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

#[tokio::test]
async fn cgroup_inodes_resolve_through_the_cgroup_filesystem() {
    let uid_underscored = POD_UID.replace('-', "_");
    let hosts: [(&str, Vec<(String, &str)>); 3] = [
        (
            "host-cgroup-v1",
            // Each v1 hierarchy has its own directory (and inode) per cgroup.
            vec![
                (format!("memory/docker/{DOCKER_ID}"), DOCKER_ID),
                (format!("cpu,cpuacct/docker/{DOCKER_ID}"), DOCKER_ID),
                (
                    format!("memory/kubepods/burstable/pod{POD_UID}/{POD_CONTAINER_ID}"),
                    POD_CONTAINER_ID,
                ),
                ("memory/init.scope".to_owned(), ""),
                (format!("memory/kubepods/burstable/pod{POD_UID}"), ""),
            ],
        ),
        (
            "host-cgroup-v2",
            vec![
                (format!("system.slice/docker-{DOCKER_ID}.scope"), DOCKER_ID),
                (
                    format!(
                        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_underscored}.slice/cri-containerd-{POD_CONTAINER_ID}.scope"
                    ),
                    POD_CONTAINER_ID,
                ),
                ("system.slice/docker.service".to_owned(), ""),
                ("init.scope".to_owned(), ""),
                ("".to_owned(), ""),
            ],
        ),
        (
            "host-kubelet-crio",
            vec![
                (format!("{CRIO_POD_SLICE}/crio-{CRIO_APP}.scope"), CRIO_APP),
                // A cgroup nested in the container's is the container's.
                (
                    format!("{CRIO_POD_SLICE}/crio-{CRIO_APP}.scope/container"),
                    CRIO_APP,
                ),
                (
                    format!("{CRIO_POD_SLICE}/crio-{CRIO_INIT}.scope"),
                    CRIO_INIT,
                ),
                (format!("{CRIO_POD_SLICE}/crio-conmon-{CRIO_APP}.scope"), ""),
            ],
        ),
    ];
    for (host, cgroups) in hosts {
        let root = fixture(host);
        let server = host_server(&root).await;
        let mut client = raw_client(&server).await;
        for (path, expected) in &cgroups {
            let dir = root.join("sys/fs/cgroup").join(path);
            let answer = ask(
                &server,
                &mut client,
                go_request(0, inode(&dir), "", "", false),
            )
            .await;
            assert_eq!(answer, *expected, "{host}: {path}");
        }
        // An inode no directory of the tree has (the fixture's files have
        // others), and the largest a client can send.
        let file = root.join("etc/passwd");
        for missing in [inode(&file), u64::MAX] {
            assert_eq!(
                ask(&server, &mut client, go_request(0, missing, "", "", false)).await,
                ""
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn pod_uid_and_container_name_resolve_through_the_stores_pod_and_containers() {
    let root = fixture("host-kubelet-crio");
    // The host source names the containers from the kubelet's links.
    let (entities, _) = scan_host(&root);
    let app = entities
        .iter()
        .find(|e| e.id.as_str() == format!("container_id://{CRIO_APP}"))
        .expect("the app container");
    assert_eq!(app.low, ["runtime:cri-o", "kube_container_name:app"]);
    assert_eq!(app.orchestrator, [format!("pod_uid:{CRIO_POD_UID}")]);
    // The link of a container that runs no process names no entity.
    assert!(!entities.iter().any(|e| e.id.uid().starts_with("c0ffee")));

    let server = host_server(&root).await;
    let mut client = raw_client(&server).await;
    let cases = [
        (CRIO_POD_UID, "app", false, CRIO_APP),
        (CRIO_POD_UID, "init-db", true, CRIO_INIT),
        // Names are unique across a pod's init and other containers: the
        // flag is not needed to tell them apart.
        (CRIO_POD_UID, "init-db", false, CRIO_INIT),
        (CRIO_POD_UID, "sidecar", false, ""),
        (POD_UID, "app", false, ""),
        ("", "app", false, ""),
        (CRIO_POD_UID, "", false, ""),
    ];
    for (pod, name, init, expected) in cases {
        let answer = ask(&server, &mut client, go_request(0, 0, pod, name, init)).await;
        assert_eq!(
            answer, expected,
            "pod {pod:?} container {name:?} init {init}"
        );
    }
    // The Agent's order: the PID first, the external data only if it finds nothing.
    let both = go_request(41, 0, CRIO_POD_UID, "app", false);
    assert_eq!(ask(&server, &mut client, both).await, CRIO_INIT);
    let pid_unknown = go_request(999, 0, CRIO_POD_UID, "app", false);
    assert_eq!(ask(&server, &mut client, pid_unknown).await, CRIO_APP);
    assert_eq!(
        answered(&server),
        [
            ("pid", 1),
            ("external_data", 4),
            ("not_found", 2),
            ("empty", 2)
        ]
    );
    server.stop().await;
}

/// Requests a Go client would never send (fields left out, only some set)
/// get the best answer or an empty one, never an error.
#[tokio::test]
async fn partial_requests_get_the_best_answer_or_an_empty_one() {
    let server = host_server(&fixture("host-cgroup-v2")).await;
    let mut client = raw_client(&server).await;
    let local = |local: WireLocal| Request {
        local_data: Some(local),
        external_data: None,
    };
    let cases = [
        (Request::default(), ""),
        (local(WireLocal::default()), ""),
        (
            local(WireLocal {
                process_id: Some(50),
                ..WireLocal::default()
            }),
            DOCKER_ID,
        ),
        (
            local(WireLocal {
                container_id: Some("named-by-the-client".into()),
                process_id: Some(60),
                ..WireLocal::default()
            }),
            "named-by-the-client",
        ),
        (
            Request {
                local_data: None,
                external_data: Some(WireExternal {
                    init: Some(true),
                    ..WireExternal::default()
                }),
            },
            "",
        ),
        (
            Request {
                local_data: None,
                external_data: Some(WireExternal {
                    pod_uid: Some(POD_UID.into()),
                    ..WireExternal::default()
                }),
            },
            "",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(
            ask(&server, &mut client, request.clone()).await,
            expected,
            "{request:?}"
        );
    }
    // Without the token: refused, as every other method.
    let status = client
        .tagger_generate_container_id_from_origin_info(go_request(50, 0, "", "", false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(server.store.stats().auth_failures, 1);
    server.stop().await;
}

/// The origin method called with another message's bytes, as a client
/// with the wrong definition would.
async fn call_with<M: prost::Message + Default + Send + Sync + 'static>(
    server: &TestServer,
    message: M,
) -> Result<String, tonic::Status> {
    let channel = common::datadog_client::pinned_channel(server.addr, &server.cert_path()).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    within("the channel", grpc.ready()).await.unwrap();
    let codec = tonic_prost::ProstCodec::<M, Response>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/datadog.api.v1.AgentSecure/TaggerGenerateContainerIDFromOriginInfo",
    );
    let response = within(
        "an origin answer",
        grpc.unary(authorized(server, message), path, codec),
    )
    .await?;
    Ok(response.into_inner().container_id)
}

/// Bytes that do not decode as the request (a field of the wrong wire
/// type) are refused by gRPC's decoder with INTERNAL, as grpc-go refuses
/// them, before any handler; fields the request does not define are
/// skipped. Either way the server goes on answering.
#[tokio::test]
async fn malformed_requests_are_refused_by_the_decoder_and_unknown_fields_skipped() {
    let server = host_server(&fixture("host-cgroup-v2")).await;
    // Field 1 holds an EntityId where LocalData's processID is a varint.
    let wrong_type = pb::FetchEntityRequest {
        id: Some(pb::EntityId {
            prefix: "container_id".into(),
            uid: DOCKER_ID.into(),
        }),
        cardinality: 0,
    };
    let status = call_with(&server, wrong_type).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // Field 2 as a varint where ExternalData is a message.
    let varint_for_message = pb::FetchEntityRequest {
        id: None,
        cardinality: pb::TagCardinality::High as i32,
    };
    let status = call_with(&server, varint_for_message).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // Only field 5, which the request does not have: an empty request.
    let unknown_field = pb::StreamTagsRequest {
        streaming_id: "not an origin".into(),
        ..pb::StreamTagsRequest::default()
    };
    assert_eq!(call_with(&server, unknown_field).await.unwrap(), "");
    let mut client = raw_client(&server).await;
    assert_eq!(
        ask(&server, &mut client, go_request(50, 0, "", "", false)).await,
        DOCKER_ID
    );
    assert_eq!(answered(&server), [("pid", 1), ("empty", 1)]);
    server.stop().await;
}

/// On this machine: the test's own process resolves to what its
/// `/proc/self/cgroup` says through the host source's parser (outside any
/// container, no container; still compared).
#[tokio::test]
async fn on_this_machine_a_pid_resolves_as_its_proc_cgroup_file_says() {
    let server = host_server(Path::new("/")).await;
    let mut client = raw_client(&server).await;
    let pid = std::process::id();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let expected = container_in_cgroup_file(&own).unwrap_or_default();
    assert_eq!(
        ask(&server, &mut client, go_request(pid, 0, "", "", false)).await,
        expected
    );
    let init = std::fs::read_to_string("/proc/1/cgroup").unwrap();
    let expected_init = container_in_cgroup_file(&init).unwrap_or_default();
    assert_eq!(
        ask(&server, &mut client, go_request(1, 0, "", "", false)).await,
        expected_init
    );
    let by_pid_or_none: u64 = answered(&server)
        .iter()
        .filter(|(result, _)| ["pid", "not_found"].contains(result))
        .map(|(_, count)| count)
        .sum();
    assert_eq!(by_pid_or_none, 2);
    server.stop().await;
}

/// Sources that know no host answer what the request names, and nothing else.
#[tokio::test]
async fn sources_without_a_host_answer_only_a_named_container() {
    let server = TestServer::start(|_| {}).await;
    let mut client = raw_client(&server).await;
    let pid = go_request(std::process::id(), 0, "", "", false);
    assert_eq!(ask(&server, &mut client, pid).await, "");
    let mut named = go_request(std::process::id(), 0, "", "", false);
    named.local_data.as_mut().unwrap().container_id = Some("abc".into());
    assert_eq!(ask(&server, &mut client, named).await, "abc");
    assert_eq!(answered(&server), [("container_id", 1), ("unsupported", 1)]);
    server.stop().await;
}

fn pid_origin(pid: u32) -> OriginInfo {
    OriginInfo {
        local: LocalData {
            process_id: Some(pid),
            ..LocalData::default()
        },
        external: ExternalData::default(),
    }
}

/// Our client's function, against our server: the container, or none.
#[tokio::test]
async fn our_client_asks_with_every_field_and_gets_the_container() {
    let server = host_server(&fixture("host-cgroup-v1")).await;
    let config = client_config(&server, &server.addr.to_string());
    let found = within(
        "an answer",
        client::container_id_from_origin(&config, &pid_origin(100)),
    )
    .await;
    assert_eq!(found, Ok(Some(DOCKER_ID.to_owned())));
    let none = within(
        "an answer",
        client::container_id_from_origin(&config, &pid_origin(1)),
    )
    .await;
    assert_eq!(none, Ok(None));
    server.stop().await;
}

/// A running tagger asks over its own transport, with its token: the
/// container, or a typed error when the server refuses the token.
#[tokio::test]
async fn a_running_tagger_asks_its_server_and_a_refusal_is_typed() {
    let server = host_server(&fixture("host-cgroup-v2")).await;
    let config = client_config(&server, &server.addr.to_string());
    let tagger = RemoteTagger::start(config.clone()).unwrap();
    let found = within(
        "an answer",
        tagger.container_id_from_origin(&pid_origin(60)),
    )
    .await;
    assert_eq!(found, Ok(Some(POD_CONTAINER_ID.to_owned())));
    let none = within(
        "an answer",
        tagger.container_id_from_origin(&pid_origin(70)),
    )
    .await;
    assert_eq!(none, Ok(None));
    tagger.stop().await;

    let wrong_token = server.dir.path().join("wrong_token");
    std::fs::write(&wrong_token, "f".repeat(64)).unwrap();
    let refused_config = ClientConfig {
        auth_token_file: wrong_token,
        ..config
    };
    let refused = RemoteTagger::start(refused_config).unwrap();
    let error = within(
        "a refusal",
        refused.container_id_from_origin(&pid_origin(60)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &error,
            FetchError::Server {
                code: StatusCode::Unauthenticated,
                ..
            }
        ),
        "{error:?}"
    );
    refused.stop().await;
    server.stop().await;
}
