//! Our wire mirror of origin detection against the Datadog Agent's
//! definitions: the messages of `pkg/proto/datadog/model/v1/model.proto`
//! and the method of `pkg/proto/datadog/api/v1/api.proto`, transcribed
//! below from the Agent's generated `pkg/proto/pbgo/core/model.pb.go` (its
//! struct tags and raw descriptor; github.com/connorh-lgtm/datadog-agent,
//! a fork of DataDog/datadog-agent, commit
//! 4281055514015e42957fb14259dd3d62a1cc84b4) and from `api.proto`
//! (DataDog/datadog-agent commit 5ffe044243de1cc8dd083c5ccf90b747e8c60b2a).
//! The descriptors compiled from `proto/` must say the same, and what our
//! types encode must carry those numbers and wire types.

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use remote_tagger::origin::{ExternalData, LocalData, OriginInfo};
use remote_tagger::proto::FILE_DESCRIPTOR_SET;
use remote_tagger::proto::model::GenerateContainerIdFromOriginInfoRequest;

const REQUEST: &str = ".datadog.model.v1.GenerateContainerIDFromOriginInfoRequest";

/// One field as the Agent defines it: name, number, type, message type
/// (for messages), and whether it is proto3 `optional`.
#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    number: i32,
    kind: Type,
    message: Option<String>,
    optional: bool,
}

fn field(name: &str, number: i32, kind: Type, message: Option<String>, optional: bool) -> Field {
    Field {
        name: name.to_owned(),
        number,
        kind,
        message,
        optional,
    }
}

/// The Agent's messages, field by field.
fn agent_messages() -> Vec<(String, Vec<Field>)> {
    let local = format!("{REQUEST}.LocalData");
    let external = format!("{REQUEST}.ExternalData");
    vec![
        (
            REQUEST.to_owned(),
            vec![
                field("localData", 1, Type::Message, Some(local.clone()), true),
                field(
                    "externalData",
                    2,
                    Type::Message,
                    Some(external.clone()),
                    true,
                ),
            ],
        ),
        (
            local,
            vec![
                field("processID", 1, Type::Uint32, None, true),
                field("containerID", 2, Type::String, None, true),
                field("inode", 3, Type::Uint64, None, true),
                field("podUID", 4, Type::String, None, true),
            ],
        ),
        (
            external,
            vec![
                field("init", 1, Type::Bool, None, true),
                field("containerName", 2, Type::String, None, true),
                field("podUID", 3, Type::String, None, true),
            ],
        ),
        (
            ".datadog.model.v1.GenerateContainerIDFromOriginInfoResponse".to_owned(),
            vec![field("containerID", 1, Type::String, None, false)],
        ),
    ]
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the build's descriptor set decodes")
}

/// Every message of the set by full name, nested ones included.
fn messages(set: &FileDescriptorSet) -> Vec<(String, DescriptorProto)> {
    fn walk(scope: &str, message: &DescriptorProto, into: &mut Vec<(String, DescriptorProto)>) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            walk(&name, nested, into);
        }
        into.push((name, message.clone()));
    }
    let mut all = Vec::new();
    for file in &set.file {
        for message in &file.message_type {
            walk(&format!(".{}", file.package()), message, &mut all);
        }
    }
    all
}

#[test]
fn the_messages_have_the_agents_numbers_types_and_optional_markers() {
    let ours = messages(&descriptors());
    for (name, fields) in agent_messages() {
        let (_, message) = ours
            .iter()
            .find(|(full, _)| *full == name)
            .unwrap_or_else(|| panic!("{name} is not in proto/"));
        let found: Vec<Field> = message
            .field
            .iter()
            .map(|wire| {
                assert_eq!(wire.label(), Label::Optional, "{name}.{}", wire.name());
                // A proto3 `optional` field is in a synthetic oneof of its own.
                if wire.proto3_optional() {
                    let oneof = &message.oneof_decl[wire.oneof_index() as usize];
                    assert_eq!(oneof.name(), format!("_{}", wire.name()));
                }
                field(
                    wire.name(),
                    wire.number(),
                    wire.r#type(),
                    wire.type_name.clone(),
                    wire.proto3_optional(),
                )
            })
            .collect();
        assert_eq!(found, fields, "{name}");
    }
}

#[test]
fn agent_secure_has_the_origin_method_between_stream_and_fetch() {
    let set = descriptors();
    let service = set
        .file
        .iter()
        .filter(|file| file.package() == "datadog.api.v1")
        .flat_map(|file| &file.service)
        .find(|service| service.name() == "AgentSecure")
        .expect("AgentSecure in proto/");
    let methods: Vec<(&str, &str, &str, bool)> = service
        .method
        .iter()
        .map(|m| {
            (
                m.name(),
                m.input_type(),
                m.output_type(),
                m.server_streaming(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            (
                "TaggerStreamEntities",
                ".datadog.model.v1.StreamTagsRequest",
                ".datadog.model.v1.StreamTagsResponse",
                true
            ),
            (
                "TaggerGenerateContainerIDFromOriginInfo",
                REQUEST,
                ".datadog.model.v1.GenerateContainerIDFromOriginInfoResponse",
                false
            ),
            (
                "TaggerFetchEntity",
                ".datadog.model.v1.FetchEntityRequest",
                ".datadog.model.v1.FetchEntityResponse",
                false
            ),
        ]
    );
}

/// The fields of one encoded message, in order: (number, wire type, payload
/// bytes for length-delimited fields, value for varints).
fn wire_fields(mut bytes: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().expect("a complete varint");
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
        }
        panic!("a varint longer than 10 bytes");
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let (number, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => fields.push((number, 0, Vec::new(), varint(&mut bytes))),
            2 => {
                let len = varint(&mut bytes) as usize;
                let (payload, rest) = bytes.split_at(len);
                fields.push((number, 2, payload.to_vec(), 0));
                bytes = rest;
            }
            other => panic!("wire type {other} in an origin message"),
        }
    }
    fields
}

/// What the Agent's Go server needs: every field present, zero values
/// included (it dereferences each one), with the Agent's numbers.
#[test]
fn a_request_of_ours_carries_every_field_the_agents_server_dereferences() {
    let origin = OriginInfo {
        local: LocalData {
            process_id: Some(4242),
            container_id: None,
            cgroup_inode: Some(1 << 40),
            pod_uid: None,
        },
        external: ExternalData {
            init: false,
            container_name: Some("app".into()),
            pod_uid: Some("uid".into()),
        },
    };
    let top = wire_fields(&origin.to_proto().encode_to_vec());
    assert_eq!(
        top.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        [(1, 2), (2, 2)]
    );
    let local = wire_fields(&top[0].2);
    assert_eq!(
        local,
        [
            (1, 0, Vec::new(), 4242),
            (2, 2, Vec::new(), 0),
            (3, 0, Vec::new(), 1 << 40),
            (4, 2, Vec::new(), 0),
        ]
    );
    let external = wire_fields(&top[1].2);
    assert_eq!(
        external,
        [
            (1, 0, Vec::new(), 0),
            (2, 2, b"app".to_vec(), 0),
            (3, 2, b"uid".to_vec(), 0),
        ]
    );
}

/// A PID sent as a negative int32 (ten varint bytes) by a client that got
/// the type wrong decodes without error, as a PID no process has.
#[test]
fn a_negative_pid_on_the_wire_decodes_as_no_process() {
    let local = [
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    let mut request = vec![0x0a, local.len() as u8];
    request.extend_from_slice(&local);
    let decoded = GenerateContainerIdFromOriginInfoRequest::decode(request.as_slice())
        .expect("prost decodes a 64-bit varint into a uint32 field");
    assert_eq!(
        OriginInfo::from_proto(&decoded).local.process_id,
        Some(u32::MAX)
    );
}
