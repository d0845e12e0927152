//! Seeded synthetic workload: the entity store of a scaled-up Kubernetes node,
//! as a Datadog Agent tagger holds it, plus a churn of ADDED / MODIFIED /
//! DELETED events, for tests and benchmarks.
//!
//! Only [`SplitMix64`] drives the choices, so a seed reproduces the same store
//! and the same event stream forever, on every platform.
//!
//! The shape follows what the Agent's collectors emit: pods of a few
//! deployments ("apps") own 1-4 containers that share the pod's tags; low
//! cardinality tags come from small pools picked with a Zipf skew, so a few
//! values cover thousands of entities; high cardinality tags are unique per
//! entity.

use std::collections::{BTreeMap, VecDeque};

use crate::domain::{Entity, EntityEvent, EntityId};
use crate::rng::SplitMix64;

/// How big a workload to generate, and from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Store size after [`Workload::new`]; churn keeps the store around it.
    pub entities: usize,
    /// The same seed gives the same entities and changes.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            entities: 100_000,
            seed: 1,
        }
    }
}

const NAMESPACES: [&str; 20] = [
    "default",
    "kube-system",
    "monitoring",
    "payments",
    "checkout",
    "search",
    "catalog",
    "identity",
    "messaging",
    "data",
    "ml",
    "web",
    "mobile-backend",
    "platform",
    "logging",
    "ingress",
    "istio-system",
    "cert-manager",
    "batch",
    "staging-sandbox",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const QOS_CLASSES: [&str; 3] = ["Burstable", "BestEffort", "Guaranteed"];
/// App names are every `domain-role` pair: 100 services and deployments.
const APP_DOMAINS: [&str; 10] = [
    "payments",
    "checkout",
    "cart",
    "search",
    "catalog",
    "auth",
    "notifications",
    "inventory",
    "shipping",
    "billing",
];
const APP_ROLES: [&str; 10] = [
    "api",
    "worker",
    "web",
    "gateway",
    "scheduler",
    "consumer",
    "indexer",
    "cache",
    "sync",
    "admin",
];
/// Sidecars injected next to an app's main container: (container, image, tag).
const SIDECARS: [(&str, &str, &str); 5] = [
    ("istio-proxy", "docker.io/istio/proxyv2", "1.20.3"),
    ("fluent-bit", "cr.fluentbit.io/fluent/fluent-bit", "2.2.0"),
    (
        "cloud-sql-proxy",
        "gcr.io/cloud-sql-connectors/cloud-sql-proxy",
        "2.8.1",
    ),
    ("vault-agent", "docker.io/hashicorp/vault", "1.15.4"),
    (
        "otel-collector",
        "docker.io/otel/opentelemetry-collector-contrib",
        "0.91.0",
    ),
];
/// P(1..=4 containers in a pod): mean 2.75, so pods and containers come out
/// near 20 % and 55 % of the store.
const CONTAINERS_PER_POD_WEIGHTS: [f64; 4] = [0.10, 0.30, 0.35, 0.25];
const LANGUAGES: [&str; 6] = ["python", "java", "go", "node", "ruby", "dotnet"];
const TEAMS: [&str; 8] = [
    "core", "growth", "infra", "data", "mobile", "security", "sre", "web",
];
const CLUSTERS: [&str; 4] = ["prod-main", "prod-edge", "prod-batch", "prod-ml"];
const REGIONS: [&str; 4] = ["us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1"];
const ECS_CLUSTERS: [&str; 3] = ["legacy-web", "legacy-jobs", "legacy-api"];
/// Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
const K8S_ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of a pod name's random suffix, as Kubernetes makes it.
const POD_SUFFIX_LEN: u32 = 5;
/// How many distinct pod-name suffixes exist.
const POD_SUFFIX_SPACE: u64 = 27u64.pow(POD_SUFFIX_LEN);
/// Chars that hold any `u64` injectively in [`K8S_ALPHABET`] (27^14 > 2^64).
const UNIQUE_NAME_LEN: u32 = 14;
/// Zipf exponent of every popularity skew: rank k is drawn ∝ 1/k.
const ZIPF_EXPONENT: f64 = 1.0;
/// Share of churn events that modify an existing entity.
const MODIFY_SHARE: f64 = 0.5;
/// Share of the other events that add, below and at-or-above the target size:
/// 30/20 adds/deletes while under, 20/30 while over, so the size hovers at N.
const ADD_SHARE_BELOW_TARGET: f64 = 0.6;
const ADD_SHARE_AT_TARGET: f64 = 0.4;

/// What a new entity is; weights are percent of new entities (pods and their
/// containers come together, so they share one weight).
#[derive(Debug, Clone, Copy)]
enum NewEntityKind {
    PodOrContainer,
    Process,
    ImageMetadata,
    KubernetesMetadata,
    Deployment,
    EcsTask,
}

const NEW_ENTITY_MIX: [(NewEntityKind, f64); 6] = [
    (NewEntityKind::PodOrContainer, 75.0),
    (NewEntityKind::Process, 15.0),
    (NewEntityKind::ImageMetadata, 4.0),
    (NewEntityKind::KubernetesMetadata, 3.0),
    (NewEntityKind::Deployment, 2.0),
    (NewEntityKind::EcsTask, 1.0),
];

/// A discrete distribution over `0..len`, sampled in O(log len).
#[derive(Debug, Clone)]
struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    /// `weights` must be non-empty with a positive sum.
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let cumulative = weights
            .into_iter()
            .scan(0.0, |sum, weight| {
                *sum += weight;
                Some(*sum)
            })
            .collect();
        Self { cumulative }
    }

    /// Rank k (from 0) weighs 1/(k+1)^s: a few values take most draws.
    fn zipf(len: usize) -> Self {
        Self::new((1..=len).map(|rank| (rank as f64).powf(-ZIPF_EXPONENT)))
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let point = rng.next_f64() * total;
        let index = self.cumulative.partition_point(|&sum| sum <= point);
        index.min(self.cumulative.len().saturating_sub(1))
    }
}

/// One container of an app's pod template, its tags preformatted.
#[derive(Debug, Clone)]
struct ContainerSpec {
    name: String,
    /// `image_name`, `short_image`, `image_tag`: shared with the image's metadata.
    image_tags: Vec<String>,
    /// `docker_image`, `kube_container_name`, `container_name`.
    container_tags: Vec<String>,
}

impl ContainerSpec {
    fn new(name: &str, image: &str, tag: &str) -> Self {
        let short_image = image.rsplit('/').next().unwrap_or(image);
        Self {
            name: name.to_owned(),
            image_tags: vec![
                format!("image_name:{image}"),
                format!("short_image:{short_image}"),
                format!("image_tag:{tag}"),
            ],
            container_tags: vec![
                format!("docker_image:{image}:{tag}"),
                format!("kube_container_name:{name}"),
                format!("container_name:{name}"),
            ],
        }
    }
}

/// A Kubernetes deployment and the service it runs: the source of every
/// low cardinality tag its pods, containers and processes carry.
#[derive(Debug, Clone)]
struct App {
    name: String,
    namespace: &'static str,
    /// Its current ReplicaSet, `<app>-<pod-template-hash>`.
    replica_set: String,
    /// `kube_namespace`, `kube_cluster_name`, `kube_deployment` + [`Self::standard`].
    low: Vec<String>,
    /// The unified service tags `env`, `service`, `version`.
    standard: Vec<String>,
    qos: String,
    language: &'static str,
    containers: Vec<ContainerSpec>,
}

/// Everything fixed for the lifetime of a workload: the node, the apps and how
/// popular each is.
#[derive(Debug, Clone)]
struct Catalog {
    cluster_tag: String,
    region: &'static str,
    aws_account: u64,
    host_name: String,
    apps: Vec<App>,
    app_popularity: Weighted,
}

impl Catalog {
    fn new(rng: &mut SplitMix64) -> Self {
        let cluster = CLUSTERS[pick(rng, CLUSTERS.len())];
        let region = REGIONS[pick(rng, REGIONS.len())];
        let host_name = format!(
            "ip-10-{}-{}-{}.ec2.internal",
            rng.below(256),
            rng.below(256),
            rng.below(256)
        );
        let cluster_tag = format!("kube_cluster_name:{cluster}");
        let mut names: Vec<String> = APP_DOMAINS
            .iter()
            .flat_map(|domain| APP_ROLES.iter().map(move |role| format!("{domain}-{role}")))
            .collect();
        // Which app is the most popular depends on the seed.
        shuffle(rng, &mut names);
        let namespaces = Weighted::zipf(NAMESPACES.len());
        let envs = Weighted::zipf(ENVS.len());
        let qos_classes = Weighted::zipf(QOS_CLASSES.len());
        let languages = Weighted::zipf(LANGUAGES.len());
        let containers_per_pod = Weighted::new(CONTAINERS_PER_POD_WEIGHTS);
        let apps = names
            .into_iter()
            .map(|name| {
                let namespace = NAMESPACES[namespaces.sample(rng)];
                let env = ENVS[envs.sample(rng)];
                let version = format!("{}.{}.{}", rng.below(4), rng.below(20), rng.below(10));
                let standard = vec![
                    format!("env:{env}"),
                    format!("service:{name}"),
                    format!("version:{version}"),
                ];
                let mut low = vec![
                    format!("kube_namespace:{namespace}"),
                    cluster_tag.clone(),
                    format!("kube_deployment:{name}"),
                ];
                low.extend_from_slice(&standard);
                let mut sidecars: Vec<usize> = (0..SIDECARS.len()).collect();
                shuffle(rng, &mut sidecars);
                let sidecar_count = containers_per_pod.sample(rng);
                let main = ContainerSpec::new(&name, &format!("ghcr.io/acme/{name}"), &version);
                let containers = std::iter::once(main)
                    .chain(sidecars[..sidecar_count].iter().map(|&index| {
                        let (container, image, tag) = SIDECARS[index];
                        ContainerSpec::new(container, image, tag)
                    }))
                    .collect();
                App {
                    replica_set: format!("{name}-{}", k8s_chars(rng.next_u64(), 10)),
                    qos: format!("kube_qos:{}", QOS_CLASSES[qos_classes.sample(rng)]),
                    language: LANGUAGES[languages.sample(rng)],
                    name,
                    namespace,
                    low,
                    standard,
                    containers,
                }
            })
            .collect::<Vec<_>>();
        Self {
            cluster_tag,
            region,
            aws_account: 100_000_000_000 + rng.below(900_000_000_000),
            host_name,
            app_popularity: Weighted::zipf(apps.len()),
            apps,
        }
    }
}

/// A deterministic entity store and the churn that changes it.
#[derive(Debug, Clone)]
pub struct Workload {
    target_size: usize,
    rng: SplitMix64,
    catalog: Catalog,
    new_entity_mix: Weighted,
    /// Key of the bijection from [`Self::serial`] to unique id tokens.
    token_key: u64,
    /// Counts every unique id token ever issued, so none repeats.
    serial: u64,
    /// The next process id; pids only grow, so a deleted one never returns.
    next_pid: u64,
    pods_created: u64,
    /// Offset of the pod-name suffix permutation.
    pod_suffix_offset: u64,
    singletons_created: usize,
    /// Containers of created pods not started yet, each with its pod's id.
    pending_containers: VecDeque<(EntityId, Entity)>,
    store: BTreeMap<EntityId, Entity>,
    /// The ids churn may modify or delete (all but the host and the global
    /// entity), for an O(1) uniform pick and `swap_remove`.
    churnable: Vec<EntityId>,
}

impl Workload {
    /// Builds the initial store: `config.entities` entities, deterministically.
    pub fn new(config: WorkloadConfig) -> Self {
        let mut rng = SplitMix64::new(config.seed);
        let catalog = Catalog::new(&mut rng);
        let mut workload = Self {
            target_size: config.entities,
            token_key: rng.next_u64(),
            pod_suffix_offset: rng.below(POD_SUFFIX_SPACE),
            next_pid: 1_000 + rng.below(5_000),
            rng,
            catalog,
            new_entity_mix: Weighted::new(NEW_ENTITY_MIX.map(|(_, weight)| weight)),
            serial: 0,
            pods_created: 0,
            singletons_created: 0,
            pending_containers: VecDeque::new(),
            store: BTreeMap::new(),
            churnable: Vec::with_capacity(config.entities),
        };
        for _ in 0..config.entities {
            let entity = workload.create_entity();
            workload.insert(entity);
        }
        workload
    }

    /// The current store (after the churn so far).
    pub fn store(&self) -> &BTreeMap<EntityId, Entity> {
        &self.store
    }

    /// The current store as a Vec, in id order.
    pub fn snapshot(&self) -> Vec<Entity> {
        self.store.values().cloned().collect()
    }

    /// One churn event, already applied to [`Self::store`]: about half modify an
    /// entity; the rest add or delete, 60/40 towards whichever brings the store
    /// back to the configured size. So the size hovers at N and, over a long
    /// stream, adds and deletes balance (about 25/50/25).
    pub fn next_event(&mut self) -> EntityEvent {
        let roll = self.rng.next_f64();
        if self.churnable.is_empty() {
            return self.add();
        }
        if roll < MODIFY_SHARE {
            return self.modify();
        }
        let add_share = if self.store.len() < self.target_size {
            ADD_SHARE_BELOW_TARGET
        } else {
            ADD_SHARE_AT_TARGET
        };
        if self.rng.next_f64() < add_share {
            self.add()
        } else {
            self.delete()
        }
    }

    /// The next `n` changes (see [`next_event`](Self::next_event)).
    pub fn next_events(&mut self, n: usize) -> Vec<EntityEvent> {
        (0..n).map(|_| self.next_event()).collect()
    }

    fn add(&mut self) -> EntityEvent {
        let entity = self.create_entity();
        self.insert(entity.clone());
        EntityEvent::Added(entity)
    }

    /// Bumps the version (a rollout relabels it) or sets a team label (a pod
    /// label edited in place): either way the entity really changes.
    fn modify(&mut self) -> EntityEvent {
        let id = &self.churnable[pick(&mut self.rng, self.churnable.len())];
        let prefer_version_bump = self.rng.below(2) == 0;
        let team = TEAMS[pick(&mut self.rng, TEAMS.len())];
        let entity = self
            .store
            .get_mut(id)
            .expect("every churnable id is in the store");
        if !(prefer_version_bump && bump_version(entity)) {
            set_team_label(entity, team);
        }
        EntityEvent::Modified(entity.clone())
    }

    fn delete(&mut self) -> EntityEvent {
        let position = pick(&mut self.rng, self.churnable.len());
        let id = self.churnable.swap_remove(position);
        self.store.remove(&id);
        EntityEvent::Deleted(id)
    }

    fn insert(&mut self, entity: Entity) {
        let permanent = matches!(entity.id.prefix(), "host" | "internal");
        if !permanent {
            self.churnable.push(entity.id.clone());
        }
        self.store.insert(entity.id.clone(), entity);
    }

    /// The next new entity: first the host and the global entity, then a mix
    /// of kinds. Its id was never issued before.
    fn create_entity(&mut self) -> Entity {
        match self.singletons_created {
            0 => {
                self.singletons_created += 1;
                return self.host();
            }
            1 => {
                self.singletons_created += 1;
                return global_entity();
            }
            _ => {}
        }
        match NEW_ENTITY_MIX[self.new_entity_mix.sample(&mut self.rng)].0 {
            NewEntityKind::PodOrContainer => {
                self.next_pending_container().unwrap_or_else(|| self.pod())
            }
            NewEntityKind::Process => self.process(),
            NewEntityKind::ImageMetadata => self.image_metadata(),
            NewEntityKind::KubernetesMetadata => self.kubernetes_metadata(),
            NewEntityKind::Deployment => self.deployment(),
            NewEntityKind::EcsTask => self.ecs_task(),
        }
    }

    /// A container of a created pod, skipping those whose pod is gone.
    fn next_pending_container(&mut self) -> Option<Entity> {
        while let Some((pod_id, container)) = self.pending_containers.pop_front() {
            if self.store.contains_key(&pod_id) {
                return Some(container);
            }
        }
        None
    }

    fn host(&self) -> Entity {
        let region = self.catalog.region;
        let mut host = Entity::new(entity_id("host", &self.catalog.host_name));
        host.low = vec![
            self.catalog.cluster_tag.clone(),
            "kube_node_role:worker".to_owned(),
            format!("region:{region}"),
            format!("availability-zone:{region}a"),
            "instance-type:m6i.32xlarge".to_owned(),
        ];
        host
    }

    /// A pod of a popular app; its containers start later (queued), carrying
    /// the pod's tags as the Agent's kubelet collector does.
    fn pod(&mut self) -> Entity {
        let app_index = self.catalog.app_popularity.sample(&mut self.rng);
        let pod_uid = self.uuid();
        let container_ids: Vec<String> = (0..self.catalog.apps[app_index].containers.len())
            .map(|_| self.hex_uid())
            .collect();
        let pod_suffix = self.pod_suffix();
        let app = &self.catalog.apps[app_index];
        let pod_name = format!("{}-{pod_suffix}", app.replica_set);
        let orchestrator = vec![
            format!("pod_name:{pod_name}"),
            format!("kube_replica_set:{}", app.replica_set),
            format!("kube_ownerref_name:{}", app.replica_set),
        ];
        let mut pod = Entity::new(entity_id("kubernetes_pod_uid", &pod_uid));
        pod.low = app.low.clone();
        pod.low.push(app.qos.clone());
        pod.standard = app.standard.clone();
        pod.orchestrator = orchestrator;
        for (spec, container_id) in app.containers.iter().zip(container_ids) {
            let mut container = Entity::new(entity_id("container_id", &container_id));
            container.low = pod.low.clone();
            container.low.extend_from_slice(&spec.image_tags);
            container.low.extend_from_slice(&spec.container_tags);
            container.orchestrator = pod.orchestrator.clone();
            container.high = vec![
                format!("container_id:{container_id}"),
                format!("display_container_name:{}_{pod_name}", spec.name),
            ];
            container.standard = pod.standard.clone();
            self.pending_containers
                .push_back((pod.id.clone(), container));
        }
        pod.low.extend([
            "kube_ownerref_kind:replicaset".to_owned(),
            "pod_phase:running".to_owned(),
        ]);
        pod
    }

    /// A process of an app running on the host, tagged by service discovery.
    fn process(&mut self) -> Entity {
        let pid = self.next_pid;
        self.next_pid += 1 + self.rng.below(40);
        let app = &self.catalog.apps[self.catalog.app_popularity.sample(&mut self.rng)];
        let mut process = Entity::new(entity_id("process", &pid.to_string()));
        process.low = app.standard.clone();
        process.low.push(format!("language:{}", app.language));
        process.high = vec![format!("pid:{pid}")];
        process.standard = app.standard.clone();
        process
    }

    /// Metadata of one image digest of some app's container.
    fn image_metadata(&mut self) -> Entity {
        let digest = self.hex_uid();
        let app = &self.catalog.apps[self.catalog.app_popularity.sample(&mut self.rng)];
        let spec = &app.containers[pick(&mut self.rng, app.containers.len())];
        let mut image = Entity::new(entity_id(
            "container_image_metadata",
            &format!("sha256:{digest}"),
        ));
        image.low = spec.image_tags.clone();
        image
            .low
            .extend(["os_name:linux".to_owned(), "architecture:amd64".to_owned()]);
        image.high = vec![format!("image_id:sha256:{digest}")];
        image
    }

    /// A ReplicaSet's metadata from the cluster agent (`group/resource/ns/name`).
    fn kubernetes_metadata(&mut self) -> Entity {
        let suffix = self.unique_name();
        let app = &self.catalog.apps[self.catalog.app_popularity.sample(&mut self.rng)];
        let name = format!("{}-{suffix}", app.name);
        let uid = format!("apps/replicasets/{}/{name}", app.namespace);
        let mut metadata = Entity::new(entity_id("kubernetes_metadata", &uid));
        metadata.low = app.low.clone();
        metadata.orchestrator = vec![format!("kube_replica_set:{name}")];
        metadata
    }

    /// A deployment seen by language detection (`namespace/name`).
    fn deployment(&mut self) -> Entity {
        let suffix = self.unique_name();
        let app = &self.catalog.apps[self.catalog.app_popularity.sample(&mut self.rng)];
        let uid = format!("{}/{}-{suffix}", app.namespace, app.name);
        let mut deployment = Entity::new(entity_id("deployment", &uid));
        deployment.low = app.low.clone();
        deployment.standard = app.standard.clone();
        deployment
    }

    /// An ECS task (id = its ARN) of a legacy cluster next to Kubernetes.
    fn ecs_task(&mut self) -> Entity {
        let token = self.unique_token();
        let app = &self.catalog.apps[self.catalog.app_popularity.sample(&mut self.rng)];
        let ecs_cluster = ECS_CLUSTERS[pick(&mut self.rng, ECS_CLUSTERS.len())];
        let task_version = 1 + self.rng.below(20);
        let arn = format!(
            "arn:aws:ecs:{}:{}:task/{ecs_cluster}/{token:016x}{:016x}",
            self.catalog.region,
            self.catalog.aws_account,
            self.rng.next_u64()
        );
        let mut task = Entity::new(entity_id("ecs_task", &arn));
        task.low = vec![
            format!("ecs_cluster_name:{ecs_cluster}"),
            format!("task_family:{}", app.name),
            format!("task_version:{task_version}"),
        ];
        task.low.extend_from_slice(&app.standard);
        task.orchestrator = vec![format!("task_arn:{arn}")];
        task.standard = app.standard.clone();
        task
    }

    /// A `u64` never issued before by this workload: a keyed bijection of a
    /// counter (SplitMix64's output is a bijection of its state), so it looks
    /// random yet cannot repeat.
    fn unique_token(&mut self) -> u64 {
        let token = SplitMix64::new(self.token_key.wrapping_add(self.serial)).next_u64();
        self.serial += 1;
        token
    }

    /// 64 lowercase hex chars (a container id, an image digest), unique.
    fn hex_uid(&mut self) -> String {
        let token = self.unique_token();
        let (a, b, c) = (
            self.rng.next_u64(),
            self.rng.next_u64(),
            self.rng.next_u64(),
        );
        format!("{token:016x}{a:016x}{b:016x}{c:016x}")
    }

    /// A version-4 UUID whose 64 non-fixed leading bits are a unique token.
    fn uuid(&mut self) -> String {
        let token = self.unique_token();
        let random = self.rng.next_u64();
        let time_low = token >> 32;
        let time_mid = (token >> 16) & 0xffff;
        let time_high_and_version = 0x4000 | ((token >> 4) & 0x0fff);
        let clock_seq_and_variant = 0x8000 | ((token & 0xf) << 10) | (random & 0x3ff);
        let node = random >> 16;
        format!(
            "{time_low:08x}-{time_mid:04x}-{time_high_and_version:04x}-{clock_seq_and_variant:04x}-{node:012x}"
        )
    }

    /// A Kubernetes-looking name suffix, unique (14 chars hold any u64).
    fn unique_name(&mut self) -> String {
        let token = self.unique_token();
        k8s_chars(token, UNIQUE_NAME_LEN)
    }

    /// A pod name's 5-char suffix: an affine permutation of the pod counter
    /// (the stride is prime to 27^5), so no two of the first 27^5 pods clash
    /// and `display_container_name` stays unique.
    fn pod_suffix(&mut self) -> String {
        const STRIDE: u64 = 7_654_321;
        let ordinal = self.pods_created;
        self.pods_created += 1;
        let permuted =
            ((ordinal % POD_SUFFIX_SPACE) * STRIDE + self.pod_suffix_offset) % POD_SUFFIX_SPACE;
        k8s_chars(permuted, POD_SUFFIX_LEN)
    }
}

/// The entity holding the Agent's global tags (`DD_TAGS`).
fn global_entity() -> Entity {
    let mut global = Entity::new(entity_id("internal", "global-entity-id"));
    global.low = vec!["datacenter:dc1".to_owned(), "owner:platform".to_owned()];
    global
}

/// Builds an id from parts this module generates (valid prefix, non-empty uid).
fn entity_id(prefix: &str, uid: &str) -> EntityId {
    EntityId::new(prefix, uid).expect("generated ids have a valid prefix and a non-empty uid")
}

/// A uniform index in `0..len`; `len` must be non-zero.
fn pick(rng: &mut SplitMix64, len: usize) -> usize {
    rng.below(len as u64) as usize
}

/// Fisher-Yates.
fn shuffle<T>(rng: &mut SplitMix64, items: &mut [T]) {
    for last in (1..items.len()).rev() {
        items.swap(last, pick(rng, last + 1));
    }
}

/// `len` base-27 digits of `value` in [`K8S_ALPHABET`], least significant first.
fn k8s_chars(mut value: u64, len: u32) -> String {
    (0..len)
        .map(|_| {
            let digit = K8S_ALPHABET[(value % 27) as usize];
            value /= 27;
            char::from(digit)
        })
        .collect()
}

/// Increments the patch number of the `version:` tag (in low and standard);
/// false if the entity has no version.
fn bump_version(entity: &mut Entity) -> bool {
    let Some(old) = entity
        .low
        .iter()
        .find(|tag| tag.starts_with("version:"))
        .cloned()
    else {
        return false;
    };
    let (head, patch) = old.rsplit_once('.').unwrap_or((old.as_str(), ""));
    let next = patch.parse::<u64>().map_or(0, |patch| patch + 1);
    let new = format!("{head}.{next}");
    for tag in entity.low.iter_mut().chain(entity.standard.iter_mut()) {
        if *tag == old {
            tag.clone_from(&new);
        }
    }
    true
}

/// Sets the `team:` label to `team`, or to the next team if it already is.
fn set_team_label(entity: &mut Entity, team: &str) {
    let position = entity.low.iter().position(|tag| tag.starts_with("team:"));
    let current = position.map(|index| &entity.low[index]["team:".len()..]);
    let team = if current == Some(team) {
        let index = TEAMS.iter().position(|t| *t == team).unwrap_or(0);
        TEAMS[(index + 1) % TEAMS.len()]
    } else {
        team
    };
    let label = format!("team:{team}");
    match position {
        Some(index) => entity.low[index] = label,
        None => entity.low.push(label),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn workload(entities: usize, seed: u64) -> Workload {
        Workload::new(WorkloadConfig { entities, seed })
    }

    fn tag_key(tag: &str) -> &str {
        tag.split_once(':').map_or(tag, |(key, _)| key)
    }

    fn count_with_prefix(store: &BTreeMap<EntityId, Entity>, prefix: &str) -> usize {
        store.keys().filter(|id| id.prefix() == prefix).count()
    }

    #[test]
    fn same_seed_replays_the_same_store_and_events() {
        let (mut a, mut b) = (workload(3_000, 42), workload(3_000, 42));
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(a.next_events(2_000), b.next_events(2_000));
        assert_eq!(a.store(), b.store());
    }

    #[test]
    fn different_seeds_differ() {
        let (mut a, mut b) = (workload(3_000, 1), workload(3_000, 2));
        assert_ne!(a.snapshot(), b.snapshot());
        assert_ne!(a.next_events(100), b.next_events(100));
    }

    #[test]
    fn store_has_the_configured_size_and_valid_ids() {
        let workload = workload(10_000, 7);
        assert_eq!(workload.store().len(), 10_000);
        for (id, entity) in workload.store() {
            assert_eq!(&entity.id, id);
            assert_eq!(EntityId::parse(id.as_str()).as_ref(), Ok(id));
        }
        let snapshot = workload.snapshot();
        assert!(snapshot.windows(2).all(|pair| pair[0].id < pair[1].id));
    }

    #[test]
    fn prefix_mix_and_uid_shapes_look_like_a_kubernetes_node() {
        let workload = workload(10_000, 3);
        let store = workload.store();
        let share = |prefix| count_with_prefix(store, prefix) as f64 / store.len() as f64;
        assert!(
            (0.45..0.65).contains(&share("container_id")),
            "{}",
            share("container_id")
        );
        assert!((0.12..0.30).contains(&share("kubernetes_pod_uid")));
        assert!((0.12..0.18).contains(&share("process")));
        for prefix in [
            "container_image_metadata",
            "kubernetes_metadata",
            "deployment",
            "ecs_task",
        ] {
            assert!(
                (0.002..0.08).contains(&share(prefix)),
                "{prefix}: {}",
                share(prefix)
            );
        }
        assert_eq!(count_with_prefix(store, "host"), 1);
        assert_eq!(count_with_prefix(store, "internal"), 1);
        assert!(store.contains_key("internal://global-entity-id"));

        let is_hex = |text: &str| {
            text.len() == 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        for id in store.keys() {
            let uid = id.uid();
            match id.prefix() {
                "container_id" => assert!(is_hex(uid), "{id}"),
                "container_image_metadata" => {
                    assert!(uid.strip_prefix("sha256:").is_some_and(is_hex), "{id}")
                }
                "process" => assert!(uid.parse::<u32>().is_ok(), "{id}"),
                "kubernetes_pod_uid" => {
                    let groups: Vec<usize> = uid.split('-').map(str::len).collect();
                    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
                    assert_eq!(&uid[14..15], "4", "{id}");
                    assert!("89ab".contains(&uid[19..20]), "{id}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn tag_counts_per_kind_stay_in_range() {
        let workload = workload(10_000, 5);
        // (prefix, low, orchestrator, high, standard) ranges.
        type Range = std::ops::RangeInclusive<usize>;
        let expected: [(&str, Range, Range, Range, Range); 3] = [
            ("container_id", 12..=14, 3..=3, 2..=2, 3..=3),
            ("kubernetes_pod_uid", 8..=10, 3..=3, 0..=0, 3..=3),
            ("process", 3..=5, 0..=0, 1..=1, 3..=3),
        ];
        for entity in workload.store().values() {
            let Some((_, low, orchestrator, high, standard)) = expected
                .iter()
                .find(|(prefix, ..)| *prefix == entity.id.prefix())
            else {
                continue;
            };
            assert!(low.contains(&entity.low.len()), "{entity:?}");
            assert!(
                orchestrator.contains(&entity.orchestrator.len()),
                "{entity:?}"
            );
            assert!(high.contains(&entity.high.len()), "{entity:?}");
            assert!(standard.contains(&entity.standard.len()), "{entity:?}");
            for tag in &entity.standard {
                assert!(
                    ["env", "service", "version"].contains(&tag_key(tag)),
                    "{tag}"
                );
                assert!(entity.low.contains(tag), "standard tag {tag} not in low");
            }
        }
    }

    #[test]
    fn containers_share_their_pods_tags_and_pods_own_one_to_four() {
        let workload = workload(10_000, 11);
        let pod_name = |entity: &Entity| {
            entity
                .orchestrator
                .iter()
                .find(|tag| tag.starts_with("pod_name:"))
                .cloned()
        };
        let pods: HashMap<String, &Entity> = workload
            .store()
            .values()
            .filter(|entity| entity.id.prefix() == "kubernetes_pod_uid")
            .map(|pod| (pod_name(pod).expect("pods have a pod_name"), pod))
            .collect();
        let mut containers_per_pod: HashMap<&str, usize> = HashMap::new();
        for container in workload
            .store()
            .values()
            .filter(|e| e.id.prefix() == "container_id")
        {
            let name = pod_name(container).expect("containers have a pod_name");
            let (name, pod) = pods.get_key_value(&name).expect("a container's pod exists");
            assert_eq!(container.orchestrator, pod.orchestrator);
            assert_eq!(container.standard, pod.standard);
            let shared = pod.low.iter().filter(|tag| {
                !tag.starts_with("pod_phase:") && !tag.starts_with("kube_ownerref_kind:")
            });
            for tag in shared {
                assert!(
                    container.low.contains(tag),
                    "{tag} missing on {container:?}"
                );
            }
            *containers_per_pod.entry(name).or_default() += 1;
        }
        assert!(
            containers_per_pod
                .values()
                .all(|count| (1..=4).contains(count))
        );
        // Only the last pod built may still wait for its containers.
        assert!(pods.len() - containers_per_pod.len() <= 1);
        let mean =
            containers_per_pod.values().sum::<usize>() as f64 / containers_per_pod.len() as f64;
        assert!((2.0..3.5).contains(&mean), "{mean}");
    }

    #[test]
    fn low_tags_have_few_values_while_high_tags_are_unique() {
        let workload = workload(10_000, 13);
        let mut low_values: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut low_occurrences = 0;
        let mut high_owners: HashMap<&str, &EntityId> = HashMap::new();
        for entity in workload.store().values() {
            for tag in &entity.low {
                low_values.entry(tag_key(tag)).or_default().insert(tag);
                low_occurrences += 1;
            }
            for tag in &entity.high {
                if let Some(other) = high_owners.insert(tag, &entity.id) {
                    panic!("high tag {tag} on both {other} and {}", entity.id);
                }
            }
        }
        for (key, values) in &low_values {
            assert!(
                values.len() < 200,
                "{key} has {} distinct values",
                values.len()
            );
        }
        assert!(low_values["kube_namespace"].len() <= NAMESPACES.len());
        assert!(low_values["env"].len() <= ENVS.len());
        assert_eq!(low_values["kube_cluster_name"].len(), 1);
        let distinct: usize = low_values.values().map(HashSet::len).sum();
        // On average a low tag value is shared by more than 50 entities.
        assert!(
            distinct * 50 < low_occurrences,
            "{distinct} distinct of {low_occurrences}"
        );
        // Zipf skew: the most common service covers far more than 1/100 of them.
        let mut service_counts: HashMap<&str, usize> = HashMap::new();
        for tag in workload
            .store()
            .values()
            .flat_map(|e| &e.low)
            .filter(|t| t.starts_with("service:"))
        {
            *service_counts.entry(tag).or_default() += 1;
        }
        let total: usize = service_counts.values().sum();
        let top = service_counts.values().max().copied().unwrap_or(0);
        assert!(top * 10 > total, "top service {top} of {total}");
        // Each container carries two high tags of its own.
        assert!(high_owners.len() >= count_with_prefix(workload.store(), "container_id") * 2);
    }

    #[test]
    fn events_replayed_on_the_snapshot_rebuild_the_store() {
        let mut workload = workload(2_000, 17);
        let mut mirror: BTreeMap<EntityId, Entity> = workload
            .snapshot()
            .into_iter()
            .map(|entity| (entity.id.clone(), entity))
            .collect();
        let mut ever_seen: HashSet<EntityId> = mirror.keys().cloned().collect();
        let (mut added, mut modified, mut deleted) = (0, 0, 0);
        for event in workload.next_events(20_000) {
            match event {
                EntityEvent::Added(entity) => {
                    assert!(
                        ever_seen.insert(entity.id.clone()),
                        "id reused: {}",
                        entity.id
                    );
                    assert!(EntityId::parse(entity.id.as_str()).is_ok());
                    mirror.insert(entity.id.clone(), entity);
                    added += 1;
                }
                EntityEvent::Modified(entity) => {
                    let old = mirror.insert(entity.id.clone(), entity.clone());
                    assert!(old.is_some_and(|old| old != entity), "modified nothing");
                    modified += 1;
                }
                EntityEvent::Deleted(id) => {
                    assert!(mirror.remove(&id).is_some(), "deleted an unknown {id}");
                    assert!(!matches!(id.prefix(), "host" | "internal"));
                    deleted += 1;
                }
            }
        }
        assert_eq!(&mirror, workload.store());
        assert!((9_000..11_000).contains(&modified), "{modified}");
        assert!((4_000..6_500).contains(&added) && (4_000..6_500).contains(&deleted));
        let size = workload.store().len();
        assert!((1_800..=2_200).contains(&size), "store drifted to {size}");
    }

    #[test]
    fn empty_workload_adds_until_it_can_churn() {
        let mut workload = workload(0, 23);
        assert!(workload.store().is_empty());
        let events = workload.next_events(500);
        assert!(matches!(events[0], EntityEvent::Added(_)));
        assert!(matches!(events[1], EntityEvent::Added(_)));
        assert!(events.iter().any(|e| matches!(e, EntityEvent::Deleted(_))));
        assert!(events.iter().any(|e| matches!(e, EntityEvent::Modified(_))));
        assert_eq!(count_with_prefix(workload.store(), "host"), 1);
    }

    #[test]
    fn version_bump_increments_the_patch_everywhere() {
        let mut entity = Entity::new(EntityId::parse("process://1").unwrap());
        entity.low = vec!["env:prod".into(), "version:1.4.9".into()];
        entity.standard = vec!["version:1.4.9".into()];
        assert!(bump_version(&mut entity));
        assert_eq!(entity.low, ["env:prod", "version:1.4.10"]);
        assert_eq!(entity.standard, ["version:1.4.10"]);
        let mut unversioned = Entity::new(EntityId::parse("process://2").unwrap());
        assert!(!bump_version(&mut unversioned));
        set_team_label(&mut unversioned, "core");
        set_team_label(&mut unversioned, "core");
        assert_eq!(unversioned.low, ["team:growth"]);
    }
}
