//! The standard gRPC health service and server reflection beside the
//! tagger service: reachable without the token (the tagger RPCs are not),
//! SERVING while running, NOT_SERVING once the shutdown starts.

mod common;

use std::time::Duration;

use common::{TestServer, within};
use remote_tagger::proto::api::agent_secure_client::AgentSecureClient;
use remote_tagger::proto::model::FetchEntityRequest;
use remote_tagger::server::{HEALTH_SERVICE_NAMES, TlsMode};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TAGGER_SERVICE: &str = "datadog.api.v1.AgentSecure";

/// A plaintext server (the services are the same over TLS; plaintext lets
/// the stock tonic channel reach it) that shuts down quickly.
async fn plaintext_server() -> (TestServer, Channel) {
    let server = TestServer::start(|config| {
        config.tls = TlsMode::InsecurePlaintext;
        config.service.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, channel)
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::test]
async fn health_answers_serving_without_a_token_while_the_tagger_still_wants_one() {
    let (server, channel) = plaintext_server().await;
    assert_eq!(HEALTH_SERVICE_NAMES, ["", TAGGER_SERVICE]);
    let mut health = HealthClient::new(channel.clone());
    for service in HEALTH_SERVICE_NAMES {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let refused = AgentSecureClient::new(channel)
        .tagger_fetch_entity(FetchEntityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn health_turns_not_serving_when_the_shutdown_starts() {
    let (server, channel) = plaintext_server().await;
    let mut watch = HealthClient::new(channel)
        .watch(check(TAGGER_SERVICE))
        .await
        .unwrap()
        .into_inner();
    let first = within("the first health status", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(server.stop());
    let next = within("the shutdown's health status", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    within("the shutdown", stopping).await.unwrap();
}

#[tokio::test]
async fn reflection_lists_and_describes_the_tagger_service() {
    let (server, channel) = plaintext_server().await;
    let mut reflection = ServerReflectionClient::new(channel);
    const MODEL_FILE: &str = "datadog/model/v1/model.proto";
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(TAGGER_SERVICE.to_owned()),
        // What a tool asks next: the file the service's file imports.
        MessageRequest::FileByFilename(MODEL_FILE.to_owned()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut next_answer = async || answers.message().await.unwrap().unwrap().message_response;

    let Some(MessageResponse::ListServicesResponse(list)) = next_answer().await else {
        panic!("a service list");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [TAGGER_SERVICE, "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == expected), "{services:?}");
    }

    let service_file = single_file(next_answer().await);
    assert_eq!(service_file.name(), "datadog/api/v1/api.proto");
    assert_eq!(service_file.dependency, [MODEL_FILE]);
    assert_eq!(service_file.service[0].name(), "AgentSecure");
    let model_file = single_file(next_answer().await);
    assert_eq!(model_file.name(), MODEL_FILE);
    assert!(
        model_file
            .message_type
            .iter()
            .any(|message| message.name() == "StreamTagsResponse")
    );
    server.stop().await;
}

/// The one file descriptor of a reflection answer.
fn single_file(answer: Option<MessageResponse>) -> prost_types::FileDescriptorProto {
    use prost::Message;
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer else {
        panic!("a file descriptor, not {answer:?}");
    };
    assert_eq!(files.file_descriptor_proto.len(), 1);
    prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap()
}
