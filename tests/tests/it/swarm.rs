//! The `swarm` driver end to end, on a single-node Docker Swarm on this
//! machine's engine (initialised by the test when the engine is in no
//! swarm, and left at the end, also on failure: see
//! `shoal_tests::docker::SwarmGuard`). Needs the images
//! `docker/build-images.sh` builds (`shoal/app-server:dev` for the
//! instances, `shoal/shoal:dev` for the gateway, `shoal/etcd:dev`); without
//! an engine it skips, under `CI=true` it fails saying how to fix it.
//!
//! The world: an attachable overlay network of the test's own; etcd as a
//! container on it (published on loopback for the test and the
//! controller); a gateway as a container of `shoal/shoal:dev` on it (proxy
//! and admin published on loopback; the admin address advertised is the
//! loopback one, which the controller on the host reads); `autoscaler run
//! --driver swarm` as a process on the host, creating one Swarm service per
//! instance on the overlay network. One test, in order (the swarm is the
//! engine's, so its scenarios share it rather than take turns):
//!
//! 0. a controller given a bridge network, or a missing image, exits at
//!    once saying what to change;
//! 1. the policy's minimum, 1 instance, ready behind the gateway, which
//!    connects to the task's own overlay IP;
//! 2. scale-out under load (6 clients of `/work` against a target of 2 in
//!    flight): the time from the controller's decision to the new instance
//!    serving through the gateway is measured; no request fails;
//! 3. scale-in by a pin to 1 under steady traffic: the extra instances are
//!    retired (a `retire` event each: drained first), their services
//!    removed, and 0 requests fail;
//! 4. at 2, `docker kill` of one instance's task container: Swarm starts a
//!    new task of the same service, the same instance id registers again on
//!    a new lease and serves; the controller starts no instance for it;
//! 5. the controller killed (SIGKILL) and started again: it adopts the
//!    services by label (none started or removed while it leads), and
//!    scales the adopted ones in;
//! 6. SIGTERM with `--stop-on-exit` removes every service.
//!
//! Figures are printed with `measured:`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSpecModeEnum, HostConfig, NetworkCreateRequest, PortBinding,
    TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListServicesOptionsBuilder,
};
use chrono::{DateTime, Utc};
use registry::Keys;
use shoal_tests::autoscaler::autoscaler_cli_at;
use shoal_tests::docker::{
    Leftovers, SwarmGuard, TEST_LABEL, engine_or_skip, published_port, require_images, run_id,
    start_container,
};
use shoal_tests::gateway::AdminApi;
use shoal_tests::wait::holds_for;
use shoal_tests::{
    Autoscaler, Load, free_port, http_client, run_to_exit, wait_for, wait_until_async,
};

use crate::autoscaler::events_under;

const APP_IMAGE: &str = "shoal/app-server:dev";
const SHOAL_IMAGE: &str = "shoal/shoal:dev";
const ETCD_IMAGE: &str = "shoal/etcd:dev";
const SERVICE: &str = "app";

/// What the scenarios share.
struct World {
    docker: Docker,
    prefix: String,
    keys: Keys,
    /// `http://127.0.0.1:{port}`: etcd, for the test and the controller.
    etcd: String,
    client: etcd_client::Client,
    /// `http://127.0.0.1:{port}`: the gateway's proxy.
    gateway: String,
    admin: AdminApi,
    http: reqwest::Client,
    /// The controller's flags.
    controller: Vec<String>,
}

/// One instance's Swarm service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InstanceService {
    swarm_id: String,
    created: Option<DateTime<Utc>>,
}

impl World {
    /// The instances' Swarm services of the test's prefix: instance id → service.
    async fn services(&self) -> BTreeMap<String, InstanceService> {
        let filters = HashMap::from([(
            "label",
            vec![
                "shoal.managed=true".to_owned(),
                format!("shoal.prefix={}", self.prefix),
            ],
        )]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let services = self
            .docker
            .list_services(Some(options))
            .await
            .unwrap_or_else(|e| panic!("docker service ls: {e}"));
        services
            .into_iter()
            .filter_map(|s| {
                let id = s.spec.as_ref()?.labels.as_ref()?.get("shoal.id")?.clone();
                let created = s
                    .created_at
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                Some((
                    id,
                    InstanceService {
                        swarm_id: s.id?,
                        created,
                    },
                ))
            })
            .collect()
    }

    /// Ids of the instances the gateway routes to; `None` if it does not answer.
    async fn routable(&self) -> Option<BTreeSet<String>> {
        let ids = self.admin.ready_ids(&self.http, SERVICE).await?;
        Some(ids.into_iter().collect())
    }

    /// `n` instance services, and exactly their instances routable.
    async fn at_size(&self, n: usize) -> bool {
        let services = self.services().await;
        services.len() == n
            && self
                .routable()
                .await
                .is_some_and(|ids| ids == services.into_keys().collect())
    }

    async fn wait_size(&self, n: usize, secs: u64, what: &str) -> Duration {
        wait_until_async(Duration::from_secs(secs), what, || self.at_size(n))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{e}; see `docker service ls --filter label=shoal.prefix={}`",
                    self.prefix
                )
            })
    }

    /// `autoscaler ARGS...` against the test's etcd and prefix; must succeed.
    async fn cli(&self, args: &[&str]) {
        let mut all = vec!["--prefix", &self.prefix];
        all.extend_from_slice(args);
        let output = autoscaler_cli_at(&self.etcd, &all).await;
        assert!(
            output.status.success(),
            "autoscaler {all:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The running containers of instance `id` (its current task's).
    async fn running_containers(&self, id: &str) -> Vec<String> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("shoal.prefix={}", self.prefix),
                format!("shoal.id={id}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .unwrap_or_else(|e| panic!("docker ps: {e}"))
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// Instance `id`'s registry entry, as JSON, and its lease.
    async fn entry(&self, id: &str) -> Option<(i64, serde_json::Value)> {
        let mut client = self.client.clone();
        let resp = client
            .get(self.keys.instance(SERVICE, id), None)
            .await
            .ok()?;
        let kv = resp.kvs().first()?;
        Some((kv.lease(), serde_json::from_slice(kv.value()).ok()?))
    }

    /// Instance `id`'s registry entry: its lease and whether it is ready.
    async fn registration(&self, id: &str) -> Option<(i64, bool)> {
        let (lease, entry) = self.entry(id).await?;
        Some((lease, entry["state"] == "ready"))
    }

    /// The id of the controller leading the election, if any.
    async fn leader(&self) -> Option<String> {
        let mut client = self.client.clone();
        let options = etcd_client::GetOptions::new().with_prefix().with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
        );
        let resp = client
            .get(format!("{}/", self.keys.leader()), Some(options))
            .await
            .ok()?;
        let kv = resp.kvs().first()?;
        Some(String::from_utf8_lossy(kv.value()).into_owned())
    }

    fn start_controller(&self, id: &str) -> Autoscaler {
        let mut args = self.controller.clone();
        args.extend(["--id".to_owned(), id.to_owned()]);
        Autoscaler::start_with_args(&args)
    }
}

/// The remote IPv4 addresses of the established TCP connections to `port`
/// in process `pid`'s network namespace (`/proc/{pid}/net/tcp`).
fn connected_to(pid: i64, port: u16) -> Vec<Ipv4Addr> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/net/tcp: {e}"));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st (01: established).
            let (remote, state) = (fields.get(2)?, fields.get(3)?);
            let (ip, remote_port) = remote.split_once(':')?;
            (*state == "01" && u16::from_str_radix(remote_port, 16).ok()? == port).then_some(())?;
            // The kernel prints the address as a host-order number.
            let ip = u32::from_str_radix(ip, 16).ok()?;
            Some(Ipv4Addr::from(ip.to_le_bytes()))
        })
        .collect()
}

/// An `Instant` as wall-clock time.
fn wall(at: Instant) -> DateTime<Utc> {
    let ago = Instant::now().saturating_duration_since(at);
    Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
}

fn published(port: u16) -> Option<Vec<PortBinding>> {
    Some(vec![PortBinding {
        host_ip: Some("127.0.0.1".into()),
        host_port: Some(if port == 0 {
            String::new()
        } else {
            port.to_string()
        }),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_driver_scales_out_retires_drain_first_restarts_killed_tasks_and_adopts() {
    let Some(docker) = engine_or_skip("the swarm driver test").await else {
        return;
    };
    require_images(&docker, &[APP_IMAGE, SHOAL_IMAGE, ETCD_IMAGE]).await;
    let swarm = SwarmGuard::acquire(&docker).await;
    let run = run_id();
    let prefix = format!("/shoal-swarm-{run}");
    // Dropped before the swarm guard: services, containers, network.
    let leftovers = Leftovers {
        docker: docker.clone(),
        labels: vec![
            format!("{TEST_LABEL}={run}"),
            format!("shoal.prefix={prefix}"),
        ],
    };
    let labels = HashMap::from([(TEST_LABEL.to_owned(), run.clone())]);

    // An attachable overlay network: Swarm services and plain containers
    // (etcd, the gateway) side by side.
    let network = format!("shoal-swarm-{run}");
    docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("docker network create --driver overlay {network}: {e}"));

    let etcd_name = format!("shoal-swarm-etcd-{run}");
    let etcd_id = start_container(
        &docker,
        &etcd_name,
        ContainerCreateBody {
            image: Some(ETCD_IMAGE.into()),
            cmd: Some(vec![
                "--listen-client-urls".into(),
                "http://0.0.0.0:2379".into(),
                "--advertise-client-urls".into(),
                format!("http://{etcd_name}:2379"),
            ]),
            labels: Some(labels.clone()),
            exposed_ports: Some(vec!["2379/tcp".into()]),
            host_config: Some(HostConfig {
                network_mode: Some(network.clone()),
                port_bindings: Some(HashMap::from([("2379/tcp".into(), published(0))])),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let etcd = format!(
        "http://127.0.0.1:{}",
        published_port(&docker, &etcd_id, "2379/tcp").await
    );
    let client = wait_for(Duration::from_secs(30), "etcd to answer", || {
        let etcd = etcd.clone();
        async move {
            let mut client = etcd_client::Client::connect([etcd], None).await.ok()?;
            client.get("probe", None).await.ok()?;
            Some(client)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let (proxy_port, admin_port) = (free_port(), free_port());
    let instance_etcd = format!("http://{etcd_name}:2379");
    let gateway_id = start_container(
        &docker,
        &format!("shoal-swarm-gateway-{run}"),
        ContainerCreateBody {
            image: Some(SHOAL_IMAGE.into()),
            entrypoint: Some(vec!["gateway".into()]),
            env: Some(vec![
                format!("SHOAL_ETCD={instance_etcd}"),
                format!("SHOAL_PREFIX={prefix}"),
                "SHOAL_LISTEN=0.0.0.0:8080".into(),
                "SHOAL_ADMIN_LISTEN=0.0.0.0:9090".into(),
                // The controller runs on the host.
                format!("SHOAL_ADMIN_ADVERTISE=127.0.0.1:{admin_port}"),
                format!("SHOAL_ADMIN_TOKEN=swarm-test-token-{run}"),
            ]),
            labels: Some(labels.clone()),
            exposed_ports: Some(vec!["8080/tcp".into(), "9090/tcp".into()]),
            host_config: Some(HostConfig {
                network_mode: Some(network.clone()),
                port_bindings: Some(HashMap::from([
                    ("8080/tcp".into(), published(proxy_port)),
                    ("9090/tcp".into(), published(admin_port)),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let keys = Keys::new(&prefix).expect("a valid prefix");
    let w = World {
        docker: docker.clone(),
        prefix: prefix.clone(),
        keys: keys.clone(),
        etcd: etcd.clone(),
        client,
        gateway: format!("http://127.0.0.1:{proxy_port}"),
        admin: AdminApi::at(&format!("127.0.0.1:{admin_port}")),
        http: http_client(Duration::from_secs(30)),
        controller: [
            "--etcd",
            &etcd,
            "--prefix",
            &prefix,
            "run",
            "--driver",
            "swarm",
            "--network",
            &network,
            "--instance-etcd",
            &instance_etcd,
            "--image",
            APP_IMAGE,
            "--name-prefix",
            &format!("shoal-{run}"),
            "--interval",
            "500ms",
            "--stop-on-exit",
        ]
        .map(str::to_owned)
        .to_vec(),
    };
    w.cli(&[
        "policy", "set", SERVICE, "--min", "1", "--max", "3", "--metric", "inflight", "--target",
        "2",
    ])
    .await;

    // 0. A misconfigured controller stops at once, saying what to change:
    // a bridge network, a missing image.
    for (flags, says) in [
        (["--network", "bridge"], "overlay network"),
        (
            ["--image", "shoal/no-such-image:dev"],
            "build it with docker/build-images.sh",
        ),
    ] {
        let mut args = w.controller.clone();
        let at = args.iter().position(|a| a == flags[0]).expect("the flag") + 1;
        args[at] = flags[1].to_owned();
        let out = run_to_exit("autoscaler", &args, Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{flags:?}: {:?} {stderr}",
            out.status
        );
    }

    // 1. The minimum: one instance, a Swarm service, routed by the gateway.
    let mut controller = w.start_controller("swarm-test-1");
    let took = w
        .wait_size(1, 120, "one instance ready behind the gateway")
        .await;
    println!(
        "measured: swarm: first instance ready behind the gateway {:.1} s after the controller started",
        took.as_secs_f64()
    );
    let first = w.services().await;
    let (first_id, first_service) = first.iter().next().expect("one service");
    let inspected = docker
        .inspect_service(&first_service.swarm_id, None)
        .await
        .expect("docker service inspect");
    let spec = inspected.spec.expect("a spec");
    assert_eq!(
        spec.endpoint_spec.as_ref().and_then(|e| e.mode),
        Some(EndpointSpecModeEnum::DNSRR),
        "its name resolves to the task's own overlay IP, not to a virtual IP"
    );
    assert!(
        inspected
            .endpoint
            .and_then(|e| e.virtual_ips)
            .unwrap_or_default()
            .is_empty(),
        "no virtual IP"
    );
    let restart = spec
        .task_template
        .as_ref()
        .and_then(|t| t.restart_policy.as_ref())
        .and_then(|r| r.condition);
    assert_eq!(
        restart,
        Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
        "Swarm restarts a failed task"
    );
    assert_eq!(
        spec.mode
            .and_then(|m| m.replicated)
            .and_then(|r| r.replicas),
        Some(1),
        "one replica per instance"
    );
    let labels = spec.labels.unwrap_or_default();
    assert_eq!(
        labels.get("shoal.service").map(String::as_str),
        Some(SERVICE)
    );
    assert_eq!(labels.get("shoal.id"), Some(first_id));
    let (_, entry) = w.entry(first_id).await.expect("registered");
    let name = spec.name.expect("a name");
    assert_eq!(
        entry["addr"],
        format!("{name}:8080"),
        "registers its service name, which the overlay's DNS answers with the task's IP"
    );
    // The gateway reaches the task at the task's own overlay IP (no virtual
    // IP in between): its pooled connections to port 8080, read from its
    // network namespace, go to that address.
    let task = w
        .running_containers(first_id)
        .await
        .into_iter()
        .next()
        .expect("the task's container");
    let task_ip: Ipv4Addr = docker
        .inspect_container(&task, None)
        .await
        .ok()
        .and_then(|c| {
            c.network_settings?
                .networks?
                .get(&network)?
                .ip_address
                .clone()
        })
        .and_then(|ip| ip.parse().ok())
        .expect("the task's IP on the overlay network");
    let gateway_pid = docker
        .inspect_container(&gateway_id, None)
        .await
        .ok()
        .and_then(|c| c.state?.pid)
        .expect("the gateway's pid");
    wait_until_async(
        Duration::from_secs(10),
        "the gateway connected to the task's overlay IP",
        || async {
            let answered = w.http.get(format!("{}/", w.gateway)).send().await;
            answered.is_ok_and(|r| r.status() == 200)
                && connected_to(gateway_pid, 8080).contains(&task_ip)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the gateway's connections to :8080 go to {:?}",
            connected_to(gateway_pid, 8080)
        )
    });

    // 2. Scale-out under load.
    let before = w.services().await;
    let load_started = Instant::now();
    let since = Utc::now();
    let load = Load::start(
        &w.http,
        &format!("{}/work?iterations=2000000", w.gateway),
        6,
    );
    let new_id = wait_for(
        Duration::from_secs(120),
        "a new instance serving under load",
        || {
            let (w, before, load) = (&w, &before, &load);
            async move {
                let now = w.services().await;
                let new: Vec<String> = now
                    .keys()
                    .filter(|id| !before.contains_key(*id))
                    .cloned()
                    .collect();
                new.into_iter()
                    .find(|id| load.last_served(id).is_some_and(|t| t > load_started))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let served_at = load
        .first_served()
        .into_iter()
        .find(|(id, _)| *id == new_id)
        .map(|(_, at)| wall(at))
        .expect("first served");
    let events = events_under(&w.client, &keys, SERVICE).await;
    let decision = events
        .iter()
        .map(|(_, e)| e)
        .find(|e| e.kind == "decision" && e.at >= since && e.desired > e.current)
        .unwrap_or_else(|| panic!("no scale-out decision after the load started: {events:?}"));
    let created = w.services().await[&new_id].created;
    let to_serving = (served_at - decision.at).to_std().unwrap_or_default();
    let to_created = created
        .map(|c| (c - decision.at).to_std().unwrap_or_default())
        .unwrap_or_default();
    let grown = w.services().await.len();
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "scale-out: {}",
        report.failure_summary()
    );
    println!(
        "measured: swarm scale-out: decision ({}) → Swarm service created {:.2} s → new instance serving through the gateway {:.2} s; {} instances; 0 of {} requests failed",
        decision.reason,
        to_created.as_secs_f64(),
        to_serving.as_secs_f64(),
        grown,
        report.served
    );
    w.wait_size(grown, 120, "every new instance ready behind the gateway")
        .await;

    // 3. Scale-in, drain-first, under steady traffic: 0 failed requests.
    let retiring: BTreeSet<String> = w.services().await.into_keys().collect();
    let light = Load::start(&w.http, &format!("{}/", w.gateway), 4);
    light
        .wait_more_served(50, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    w.cli(&["scale", SERVICE, "1"]).await;
    w.wait_size(1, 120, "back to one instance").await;
    let scale_in = t0.elapsed();
    light
        .wait_more_served(50, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = light.stop().await;
    let kept: BTreeSet<String> = w.services().await.into_keys().collect();
    let removed: Vec<&String> = retiring.difference(&kept).collect();
    let events = events_under(&w.client, &keys, SERVICE).await;
    for id in &removed {
        assert!(
            events
                .iter()
                .any(|(_, e)| e.kind == "retire" && e.instance.as_deref() == Some(id.as_str())),
            "{id} was removed without a retire event (drain first): {events:?}"
        );
    }
    assert!(
        report.failures.is_empty(),
        "scale-in: {}",
        report.failure_summary()
    );
    println!(
        "measured: swarm scale-in: {} → 1 instances, each retired (drained) then its service removed, in {:.1} s; {} of {} requests failed",
        retiring.len(),
        scale_in.as_secs_f64(),
        report.failures.len(),
        report.served
    );

    // 4. A killed task: Swarm restarts it, same instance id, new lease.
    w.cli(&["scale", SERVICE, "2"]).await;
    w.wait_size(2, 120, "two instances").await;
    let pair = w.services().await;
    let light = Load::start(&w.http, &format!("{}/", w.gateway), 4);
    let victim = pair.keys().next().expect("an instance").clone();
    let old_container = w
        .running_containers(&victim)
        .await
        .into_iter()
        .next()
        .expect("the victim's task container");
    let (old_lease, _) = w.registration(&victim).await.expect("registered");
    let kill = Instant::now();
    docker
        .kill_container(
            &old_container,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal("KILL")
                    .build(),
            ),
        )
        .await
        .expect("docker kill");
    wait_until_async(Duration::from_secs(60), "a new task container", || async {
        w.running_containers(&victim)
            .await
            .iter()
            .any(|c| *c != old_container)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until_async(
        Duration::from_secs(60),
        "the instance registered again on a new lease, ready",
        || async {
            w.registration(&victim)
                .await
                .is_some_and(|(lease, ready)| lease != old_lease && ready)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let registered_again = Instant::now();
    light
        .wait_served_by(&victim, registered_again, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let back = kill.elapsed();
    let report = light.stop().await;
    assert_eq!(
        w.services().await,
        pair,
        "Swarm restarted the task in the same service; the controller started nothing"
    );
    println!(
        "measured: swarm killed task: docker kill → the same instance serving again {:.2} s (registered again {:.2} s); {} of {} requests failed around the kill",
        back.as_secs_f64(),
        (registered_again - kill).as_secs_f64(),
        report.failures.len(),
        report.served
    );

    // 5. The controller killed and started again: it adopts the services.
    controller.proc.kill9().await;
    let mut controller = w.start_controller("swarm-test-2");
    let took = wait_until_async(
        Duration::from_secs(60),
        "the new controller to lead",
        || async { w.leader().await.as_deref() == Some("swarm-test-2") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Nothing marks "a tick that changed nothing": watch that for ten of
    // its 500 ms ticks.
    holds_for(
        Duration::from_secs(5),
        "the adopted services unchanged",
        || async { w.services().await == pair },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    w.cli(&["scale", SERVICE, "1"]).await;
    w.wait_size(1, 120, "the adopting controller scaling in")
        .await;
    let left: BTreeSet<String> = w.services().await.into_keys().collect();
    assert!(
        left.is_subset(&pair.keys().cloned().collect()),
        "an adopted instance kept, none started"
    );
    println!(
        "measured: swarm adoption: a restarted controller led {:.1} s after the kill, started and removed nothing for 5 s, then retired an adopted instance",
        took.as_secs_f64()
    );

    // 6. --stop-on-exit: every service removed.
    let status = controller.stop(Duration::from_secs(90)).await;
    assert!(status.success(), "the controller exits 0: {status:?}");
    assert!(w.services().await.is_empty(), "every service removed");

    drop(w);
    drop(leftovers);
    assert!(
        docker.inspect_network(&network, None).await.is_err(),
        "the test's network removed"
    );
    let owned = swarm.owned();
    drop(swarm);
    if owned {
        let state = docker
            .info()
            .await
            .ok()
            .and_then(|i| i.swarm)
            .and_then(|s| s.local_node_state);
        assert_eq!(
            state,
            Some(bollard::models::LocalNodeState::INACTIVE),
            "the engine left as found"
        );
    }
}
