//! `origin`: which container a process, cgroup or pod container is, asked
//! of the server (`TaggerGenerateContainerIDFromOriginInfo`), then that
//! container's tags (`TaggerFetchEntity`).

use std::io::Write as _;

use clap::{ArgGroup, Args};
use remote_tagger::client;
use remote_tagger::domain::EntityId;
use remote_tagger::origin::{ExternalData, LocalData, OriginInfo};
use serde_json::json;

use super::client_commands::quiet_on_broken_pipe;
use super::terminal::escape;
use super::{CliResult, RequestArgs};

/// The origin to resolve: any of these (the server tries them in the
/// Datadog Agent's order: container ID, PID, inode, pod and container name).
#[derive(Debug, Args)]
#[command(after_help = "\
Give at least one of --pid, --inode, --container-id or --pod-uid with --container-name. \
The server tries them in the Datadog Agent's order (container ID, PID, inode, pod UID and \
container name) and answers the first container found; only a `serve --source host` server \
looks them up (on its --host-root).

Prints the container ID on the first line, then its tags one a line (--json: one object). \
Exits 1 with one line on stderr when the server knows no container for the origin.

Examples:
  remote-tagger origin --pid $$
  remote-tagger origin --inode \"$(stat -c %i /sys/fs/cgroup/system.slice/docker-ID.scope)\"
  remote-tagger origin --pod-uid 7c9e6679-7425-40de-944b-e07fc1f90ae7 --container-name app")]
#[command(group(
    ArgGroup::new("origin")
        .required(true)
        .multiple(true)
        .args(["pid", "inode", "container_id", "pod_uid"])
))]
pub struct OriginArgs {
    /// A process ID, as the server's host sees it (e.g. `--pid $$`).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The inode of a cgroup v2 directory (`stat -c %i /sys/fs/cgroup/...`).
    #[arg(long)]
    pub inode: Option<u64>,
    /// A container ID: the server answers it as it is.
    #[arg(long)]
    pub container_id: Option<String>,
    /// External data: the pod's UID (with --container-name).
    #[arg(long, requires = "container_name")]
    pub pod_uid: Option<String>,
    /// External data: the container's name in the pod spec (with --pod-uid).
    #[arg(long, requires = "pod_uid")]
    pub container_name: Option<String>,
    /// External data: the container is one of the pod's init containers.
    #[arg(long, requires = "pod_uid")]
    pub init: bool,
    #[command(flatten)]
    pub request: RequestArgs,
    /// Print `{"container_id": ..., "tags": [...]}`.
    #[arg(long, env = "REMOTE_TAGGER_JSON")]
    pub json: bool,
}

impl OriginArgs {
    fn origin(&self) -> OriginInfo {
        OriginInfo {
            local: LocalData {
                process_id: self.pid,
                container_id: self.container_id.clone(),
                cgroup_inode: self.inode,
                pod_uid: None,
            },
            external: ExternalData {
                init: self.init,
                container_name: self.container_name.clone(),
                pod_uid: self.pod_uid.clone(),
            },
        }
    }
}

/// Prints the container ID on a line, then its tags one a line; no
/// container found is an error.
pub async fn origin(args: OriginArgs) -> CliResult {
    let config = args.request.client_config()?;
    let found = client::container_id_from_origin(&config, &args.origin())
        .await
        .map_err(super::request_error)?;
    let Some(container_id) = found else {
        return Err(format!(
            "{} knows no container for this origin: the process runs in none, or the server is not `serve --source host` on its host",
            config.target
        ));
    };
    let entity = EntityId::new("container_id", &container_id).map_err(|e| {
        format!(
            "the server answered container ID {:?}, which names no entity: {e}",
            escape(&container_id)
        )
    })?;
    let tags = client::fetch_entity(&config, &entity, args.request.cardinality)
        .await
        .map_err(super::request_error)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(
            out,
            "{}",
            json!({ "container_id": container_id, "tags": tags })
        )
    } else {
        std::iter::once(&container_id)
            .chain(&tags)
            .try_for_each(|line| writeln!(out, "{}", escape(line)))
    };
    quiet_on_broken_pipe(written).map_err(|e| format!("cannot write: {e}"))
}
