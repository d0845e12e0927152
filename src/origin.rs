//! Origin detection's question: where a payload came from, as
//! `TaggerGenerateContainerIDFromOriginInfo` carries it (see
//! `shared/wire-spec.md`, section 1). The server answers with the container
//! the origin belongs to; [`crate::client::RemoteTagger::container_id_from_origin`]
//! (or [`crate::client::container_id_from_origin`]) asks.
//!
//! On the wire every field is proto3 `optional`, and the Datadog Agent's
//! handler dereferences each one without a check: a request that leaves one
//! out crashes it. Its Go client therefore sends every field, zero for what it
//! does not know, and its resolution treats zero values as unknown. So do we,
//! both ways: [`OriginInfo::to_proto`] sets every field, and
//! [`OriginInfo::from_proto`] reads a zero value (or an absent field) as
//! unknown.

use crate::proto::model::GenerateContainerIdFromOriginInfoRequest;
use crate::proto::model::generate_container_id_from_origin_info_request as wire;

/// Where a payload came from: what its sender knows of itself, and what the
/// Datadog admission controller told it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginInfo {
    /// What the sender knows (or its socket tells) of itself.
    pub local: LocalData,
    /// What the admission controller injected into the sender's pod.
    pub external: ExternalData,
}

/// The sender's own view of where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalData {
    /// Its process ID in the host's PID namespace.
    pub process_id: Option<u32>,
    /// Its container ID, when it knows it: the answer, as it is.
    pub container_id: Option<String>,
    /// The inode of its cgroup directory (cgroup v2).
    pub cgroup_inode: Option<u64>,
    /// Its pod's UID. Sent by clients; the Agent's resolution ignores it,
    /// and so does ours.
    pub pod_uid: Option<String>,
}

/// What the Datadog admission controller injected (`DD_EXTERNAL_ENV`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalData {
    /// Whether the container is one of its pod's init containers.
    pub init: bool,
    /// The container's name in the pod spec.
    pub container_name: Option<String>,
    /// The pod's UID.
    pub pod_uid: Option<String>,
}

impl OriginInfo {
    /// The origin of a request; absent fields and zero values are unknown.
    pub fn from_proto(request: &GenerateContainerIdFromOriginInfoRequest) -> Self {
        let local = request.local_data.clone().unwrap_or_default();
        let external = request.external_data.clone().unwrap_or_default();
        Self {
            local: LocalData {
                process_id: local.process_id.filter(|&pid| pid != 0),
                container_id: non_empty(local.container_id),
                cgroup_inode: local.inode.filter(|&inode| inode != 0),
                pod_uid: non_empty(local.pod_uid),
            },
            external: ExternalData {
                init: external.init.unwrap_or(false),
                container_name: non_empty(external.container_name),
                pod_uid: non_empty(external.pod_uid),
            },
        }
    }

    /// The request for this origin with every field set, zero for the
    /// unknown ones: what the Agent's Go client sends, and what the Agent's
    /// server needs (it dereferences every field).
    pub fn to_proto(&self) -> GenerateContainerIdFromOriginInfoRequest {
        let text = |value: &Option<String>| Some(value.clone().unwrap_or_default());
        GenerateContainerIdFromOriginInfoRequest {
            local_data: Some(wire::LocalData {
                process_id: Some(self.local.process_id.unwrap_or(0)),
                container_id: text(&self.local.container_id),
                inode: Some(self.local.cgroup_inode.unwrap_or(0)),
                pod_uid: text(&self.local.pod_uid),
            }),
            external_data: Some(wire::ExternalData {
                init: Some(self.external.init),
                container_name: text(&self.external.container_name),
                pod_uid: text(&self.external.pod_uid),
            }),
        }
    }
}

/// How a request was answered: the `result` label of
/// `tagger_server_origin_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginResult {
    /// The request named its container: answered as it is.
    ContainerId,
    /// Found through the process's cgroup file.
    Pid,
    /// Found through the cgroup filesystem.
    Inode,
    /// Found through the pod UID and container name.
    ExternalData,
    /// Looked up, found nothing: an empty answer.
    NotFound,
    /// Nothing to look up (every field empty or zero): an empty answer.
    Empty,
    /// The server's source cannot resolve origins: an empty answer.
    Unsupported,
}

impl OriginResult {
    /// Every result, in the order of their counters.
    pub const ALL: [Self; 7] = [
        Self::ContainerId,
        Self::Pid,
        Self::Inode,
        Self::ExternalData,
        Self::NotFound,
        Self::Empty,
        Self::Unsupported,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContainerId => "container_id",
            Self::Pid => "pid",
            Self::Inode => "inode",
            Self::ExternalData => "external_data",
            Self::NotFound => "not_found",
            Self::Empty => "empty",
            Self::Unsupported => "unsupported",
        }
    }

    /// Its position in [`Self::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_always_carries_every_field_and_zeros_read_back_as_unknown() {
        let request = OriginInfo::default().to_proto();
        let local = request.local_data.as_ref().unwrap();
        let external = request.external_data.as_ref().unwrap();
        assert_eq!(
            (local.process_id, local.inode, external.init),
            (Some(0), Some(0), Some(false))
        );
        assert_eq!(local.container_id.as_deref(), Some(""));
        assert_eq!(OriginInfo::from_proto(&request), OriginInfo::default());

        let origin = OriginInfo {
            local: LocalData {
                process_id: Some(42),
                container_id: Some("abc".into()),
                cgroup_inode: Some(7),
                pod_uid: Some("uid".into()),
            },
            external: ExternalData {
                init: true,
                container_name: Some("app".into()),
                pod_uid: Some("uid".into()),
            },
        };
        assert_eq!(OriginInfo::from_proto(&origin.to_proto()), origin);
        let nothing = GenerateContainerIdFromOriginInfoRequest::default();
        assert_eq!(OriginInfo::from_proto(&nothing), OriginInfo::default());
    }
}
