//! The compose check: `compose.yaml` on this machine's Docker engine, end
//! to end, with the images `docker/build-images.sh` builds offline
//! (`scripts/test` builds them first; a missing image fails with the
//! command). The project gets a name, registry prefix, network and host
//! ports of its own ([`project`]), so it never touches another stack on
//! the same engine. Then, in order:
//!
//! 1. up: etcd, two gateways and autoscaler come up; the autoscaler
//!    creates the two app servers; both are ready behind the gateway, and
//!    the second gateway (`gateway-b`) routes to the same two;
//! 2. traffic: requests through the gateway all answer 200, spread over
//!    both; a key-value PUT and GET through the `kv` route the `routes`
//!    one-shot wrote;
//! 3. scale-out: 16 clients of CPU-bound `/work`: the autoscaler adds
//!    containers (Docker API) that turn ready behind the gateway;
//! 4. scale-in: `autoscaler scale app 2` (an exec in the autoscaler's
//!    container): the extra ones drain and are removed;
//! 5. kill: `docker kill` of an app server: replaced by a new, ready and
//!    healthy one;
//! 6. disconnect: `docker network disconnect` of an app server: the gateway
//!    drops it, the autoscaler replaces it and removes it;
//! 7. adopt: the autoscaler is killed (SIGKILL) and started again: it adopts
//!    the running app servers (none started or stopped) and scales them to 3;
//!    7b. declared: a service spec, policy and route for `web` through the
//!    admin API (with the token): the autoscaler runs two containers of the
//!    stock `shoal/node-hello:dev` image, each registered by a registrar
//!    container beside it, and `/web/` answers through the gateway;
//! 8. down: `docker compose down` leaves no container of the project, none
//!    labelled `shoal.managed=true` with our prefix, and no network.
//!
//! Every request of the check must answer 200, except the one or two in
//! flight to the app server the moment it is cut off in step 6: with no
//! reset they wait for the gateway's response timeout and are not retried;
//! those are counted apart. The engine is driven through its API
//! ([`engine`], bollard); the compose CLI only brings the project up and
//! down. On a failure the project's logs are printed and everything is
//! removed. Without a Docker engine or compose the check is skipped, except
//! under `CI=true`, where that is a failure saying how to fix it.
//!
//! Its own test binary, so that `cargo test` runs it alone, and nextest
//! gives it every test thread (`.config/nextest.toml`): its timings are
//! not shared with other end-to-end tests.

mod engine;
mod project;
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use shoal_tests::gateway::AdminApi;
use shoal_tests::wait::{holds_for, wait_for, wait_until_async};

use engine::Engine;
use project::{ComposeCli, Project};
use traffic::{Codes, Traffic, burst};

/// What the check carries from step to step.
struct Check {
    project: Project,
    http: reqwest::Client,
    admin: AdminApi,
    /// Every request of the check but the partition's.
    codes: Codes,
    steps: usize,
    started: Instant,
}

impl Check {
    fn engine(&self) -> &Engine {
        &self.project.engine
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.project.gateway)
    }

    fn log(&self, what: &str) {
        println!("[{:4}s] {what}", self.started.elapsed().as_secs());
    }

    /// Ids of the instances the gateway would route to (listed ready, not
    /// ejected); `None` if its admin API does not answer.
    async fn routable(&self) -> Option<BTreeSet<String>> {
        let ids = self.admin.ready_ids(&self.http, "app").await?;
        Some(ids.into_iter().collect())
    }

    /// The cluster is at `n`: `n` running managed containers, and exactly
    /// those instances routable in the gateway.
    async fn at_size(&self, n: usize) -> bool {
        let managed = self.engine().managed().await;
        managed.len() == n
            && self
                .routable()
                .await
                .is_some_and(|ids| ids == managed.into_values().collect())
    }

    /// Wait up to `secs` for `cond`; how long it took. Panics naming `what`.
    async fn wait<F, Fut>(&self, secs: u64, what: &str, cond: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until_async(Duration::from_secs(secs), what, cond)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `autoscaler scale app N`, run in the autoscaler's container.
    async fn scale(&self, n: usize) {
        let container = self.engine().service_container("autoscaler").await;
        let n = n.to_string();
        let (code, output) = self
            .engine()
            .exec(&container, &["autoscaler", "scale", "app", &n])
            .await;
        assert_eq!(code, Some(0), "autoscaler scale app {n}: {output}");
    }

    /// Every request so far answered 200: the step passed.
    fn step_done(&mut self, what: &str) {
        assert_eq!(
            self.codes.failed(),
            0,
            "{} of {} requests did not answer 200: {}",
            self.codes.failed(),
            self.codes.total(),
            self.codes.summary()
        );
        self.steps += 1;
        self.log(&format!("step {} ok: {what}", self.steps));
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "compose check: FAILED at step {} — {} failed requests, {} s",
                self.steps + 1,
                self.codes.failed(),
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// A running app server: (container id, instance id).
fn first(managed: &BTreeMap<String, String>) -> (String, String) {
    managed
        .iter()
        .next()
        .map(|(c, i)| (c.clone(), i.clone()))
        .expect("an app server is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_up_traffic_scaling_replacement_adoption_and_down() {
    let started = Instant::now();
    let Some(docker) = engine::connect_or_skip().await else {
        return;
    };
    let Some(cli) = ComposeCli::find_or_skip() else {
        return;
    };
    engine::require_images(&docker).await;
    let project = Project::new(cli, docker);
    let mut c = Check {
        admin: AdminApi::at(&project.admin_addr),
        project,
        http: shoal_tests::http_client(Duration::from_secs(10)),
        codes: Codes::default(),
        steps: 0,
        started,
    };
    c.log(&c.project.describe());

    // 1 up
    let t0 = Instant::now();
    c.project.must(&["up", "-d", "--no-build"]);
    c.wait(90, "two app servers ready behind the gateway", || {
        c.at_size(2)
    })
    .await;
    c.step_done(&format!(
        "up: 2 app servers created by the autoscaler, ready behind the gateway ({} s)",
        t0.elapsed().as_secs()
    ));

    // 1b the second gateway, on the same registry, routes to the same two.
    let routed = c.routable().await.expect("the gateway's admin API answers");
    let admin_b = AdminApi::at(&c.project.admin_b_addr);
    let gateway_b = format!("{}/", c.project.gateway_b);
    c.wait(30, "gateway-b to route to the same app servers", || {
        let (c, admin_b, gateway_b, routed) = (&c, &admin_b, &gateway_b, &routed);
        async move {
            let listed = admin_b.ready_ids(&c.http, "app").await;
            let answered = c.http.get(gateway_b).send().await;
            listed.is_some_and(|ids| ids.into_iter().collect::<BTreeSet<_>>() == *routed)
                && answered.is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    c.step_done("gateway-b: the second gateway routes to the same app servers and answers 200");

    // 2 traffic. Least-request concentrates sequential traffic on the
    // fastest instance, but requests that overlap spread over both (the
    // admin API counts each one's).
    burst(&c.http, &c.url("/work?iterations=300000"), 200, 8, &c.codes).await;
    let service = c
        .admin
        .service(&c.http, "app")
        .await
        .expect("the gateway's admin API answers");
    let served = service["instances"].as_array().map_or(0, |all| {
        all.iter()
            .filter(|i| i["requests_total"].as_u64().unwrap_or(0) > 0)
            .count()
    });
    assert!(
        served >= 2,
        "requests went to {served} instance(s), not both"
    );
    c.step_done(&format!(
        "traffic: 200 requests, all 200, over {served} instances"
    ));

    // 2b the key-value store through the route the `routes` one-shot wrote.
    let put = c
        .http
        .put(c.url("/kv/compose-check"))
        .body("compose")
        .send()
        .await
        .map(|r| r.status().as_u16());
    let got = match c.http.get(c.url("/kv/compose-check")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(
        matches!(put, Ok(201)) && got == "compose",
        "PUT /kv/compose-check answered {put:?}, then GET answered `{got}`; see: docker compose logs routes"
    );
    c.step_done("kv: PUT then GET /kv/compose-check through the gateway's kv route");

    // 3 scale-out under load: 16 clients keep CPU-bound /work requests
    // in flight, 8 per instance; the autoscaler reads the gateway's stats
    // over the compose network and, against a target of 4, adds
    // containers. In flight is what it reads, not how long each request
    // takes: 10M iterations are 0.18-0.22 s alone in the debug images CI
    // builds on a slow 2-core VM (30M took 0.43-0.56 s there, and 16 of
    // them at once, with containers starting, outlasted the clients'
    // 10 s timeout).
    let before = c.engine().managed().await;
    let t0 = Instant::now();
    let load = Traffic::start(
        &c.http,
        &c.url("/work?iterations=10000000"),
        16,
        Duration::ZERO,
        &c.codes,
    );
    c.wait(
        60,
        "the autoscaler to add app servers under load",
        || async { c.engine().managed().await.len() >= 4 },
    )
    .await;
    load.stop().await;
    let out_s = t0.elapsed().as_secs();
    let grown = c.engine().managed().await;
    let new = grown.keys().filter(|k| !before.contains_key(*k)).count();
    assert!(new >= 2, "scale-out created {new} containers");
    let grown = grown.len();
    c.wait(60, "the new app servers to be ready", || c.at_size(grown))
        .await;
    c.step_done(&format!(
        "scale-out: load (16 clients) → 2 → {grown} containers created through the Docker API in {out_s} s, all ready"
    ));

    // 4 scale-in, by hand (and under light traffic: draining loses
    // nothing): `autoscaler scale app 2` pins the service at 2, which keeps
    // the next steps' counts steady.
    let light = Traffic::light(&c.http, &c.url("/"), &c.codes);
    let t0 = Instant::now();
    c.scale(2).await;
    c.wait(60, "back to two app servers", || c.at_size(2)).await;
    light.stop().await;
    c.step_done(&format!(
        "scale-in: autoscaler scale app 2: {grown} → 2, drained and removed in {} s",
        t0.elapsed().as_secs()
    ));

    // 5 kill
    let light = Traffic::light(&c.http, &c.url("/"), &c.codes);
    let before = c.engine().managed().await;
    let (victim, victim_id) = first(&before);
    let t0 = Instant::now();
    c.engine().kill(&victim).await;
    let (replacement, replacement_id) = wait_for(
        Duration::from_secs(60),
        "a replacement container",
        || async {
            let now = c.engine().managed().await;
            now.into_iter().find(|(k, _)| !before.contains_key(k))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    c.wait(60, "the replacement to be ready", || async {
        c.routable()
            .await
            .is_some_and(|ids| ids.contains(&replacement_id))
    })
    .await;
    let kill_s = t0.elapsed().as_secs_f64();
    c.wait(
        30,
        "the killed container to be removed and the gateway at two",
        || c.at_size(2),
    )
    .await;
    let routable = c.routable().await.expect("the gateway's admin API answers");
    assert!(
        !routable.contains(&victim_id),
        "the killed instance is still routable"
    );
    c.wait(30, "the replacement's Docker healthcheck", || {
        c.engine().is_healthy(&replacement)
    })
    .await;
    light.stop().await;
    c.step_done(&format!(
        "kill: docker kill → ready replacement in {kill_s:.1} s (Docker health: healthy)"
    ));

    // 6 disconnect. A request already sent to the instance when it is cut
    // off gets no answer (no reset either) and is not retried: it waits for
    // the gateway's response timeout. Those few are counted apart ("cut
    // off"); any other failure fails the check.
    let cut = Codes::default();
    let light = Traffic::light(&c.http, &c.url("/"), &cut);
    let (victim, victim_id) = first(&c.engine().managed().await);
    let t0 = Instant::now();
    c.engine().disconnect(&victim).await;
    let eject = c
        .wait(
            30,
            "the gateway to stop routing to the cut-off app server",
            || async {
                c.routable()
                    .await
                    .is_some_and(|ids| !ids.contains(&victim_id))
            },
        )
        .await;
    c.wait(
        90,
        "the cut-off app server to be stopped and removed",
        || async { !c.engine().exists(&victim).await },
    )
    .await;
    c.wait(60, "two app servers again", || c.at_size(2)).await;
    light.stop().await;
    let cut_off = cut.failed();
    assert!(
        cut.only(&[200, 0, 504]),
        "requests failed during the partition: {}",
        cut.summary()
    );
    assert!(
        cut_off <= 4,
        "{cut_off} requests cut off by the partition (more than were in flight to it): {}",
        cut.summary()
    );
    c.codes.add_ok(&cut);
    burst(&c.http, &c.url("/"), 100, 4, &c.codes).await;
    c.step_done(&format!(
        "disconnect: out of the gateway in {:.1} s, replaced and removed in {} s ({cut_off} requests in flight to it cut off)",
        eject.as_secs_f64(),
        t0.elapsed().as_secs()
    ));

    // 7 adopt: a controller that dies without stopping anything (SIGKILL)
    // and comes back adopts the containers by label.
    let before: BTreeSet<String> = c.engine().managed().await.into_keys().collect();
    let autoscaler = c.engine().service_container("autoscaler").await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    c.engine().kill(&autoscaler).await;
    c.engine().start(&autoscaler).await;
    c.wait(30, "the restarted autoscaler to lead", || async {
        c.engine()
            .logs(&autoscaler, since, "all")
            .await
            .contains("leading:")
    })
    .await;
    // No event marks "the new leader has decided to keep them": the claim
    // is that over a few of its ticks (1 s each) it neither starts nor
    // stops anything, so that is watched for 3 s. (Adoption by label is
    // the docker driver's, tested in autoscaler/tests/docker.rs.)
    let kept = holds_for(Duration::from_secs(3), "the same app servers", || async {
        c.engine()
            .managed()
            .await
            .into_keys()
            .collect::<BTreeSet<_>>()
            == before
    })
    .await;
    if let Err(e) = kept {
        panic!("the restarted autoscaler changed the app servers instead of adopting them: {e}");
    }
    c.scale(3).await;
    c.wait(60, "three app servers after adoption", || c.at_size(3))
        .await;
    let after: BTreeSet<String> = c.engine().managed().await.into_keys().collect();
    assert!(
        before.is_subset(&after),
        "adopted app servers were replaced"
    );
    c.step_done("adopt: the restarted autoscaler kept the 2 app servers and scaled them to 3");

    // 7b a declared service beside app: a stock Node.js image (no Shoal
    // inside) that the autoscaler runs from its spec and that a registrar
    // container registers, written through the admin API with the token.
    let t0 = Instant::now();
    let token = c.project.admin_token().to_owned();
    for (path, body) in [
        (
            "/api/v1/services/web/spec",
            serde_json::json!({"docker": {"image": "shoal/node-hello:dev", "container_port": 8080}, "readiness": {"path": "/healthz"}}),
        ),
        (
            "/api/v1/policies/web",
            serde_json::json!({"min": 2, "max": 2, "metric": "inflight", "target": 4}),
        ),
        (
            "/api/v1/routes/web",
            serde_json::json!({"path_prefix": "/web/", "service": "web", "strip_prefix": true}),
        ),
    ] {
        let answer = c
            .http
            .put(c.admin.url(path))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("the admin API answers");
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        assert!(status.is_success(), "PUT {path}: {status} {text}");
    }
    c.wait(90, "two web instances ready behind the gateway", || async {
        c.admin
            .ready_ids(&c.http, "web")
            .await
            .is_some_and(|ids| ids.len() == 2)
    })
    .await;
    burst(&c.http, &c.url("/web/"), 100, 4, &c.codes).await;
    let hello = c
        .http
        .get(c.url("/web/"))
        .send()
        .await
        .expect("the gateway answers");
    let hello = hello.text().await.unwrap_or_default();
    assert!(
        hello.starts_with("Hello from node process"),
        "GET /web/: {hello}"
    );
    c.step_done(&format!(
        "declared: a stock Node.js image spec'd through the admin API → 2 instances, registered by their registrars, serving /web/ in {} s",
        t0.elapsed().as_secs()
    ));

    // 8 down, with clients still sending: the gateways stop first, so a
    // request is answered by an app server or not at all (the gateway has
    // closed); none is held for an app server already stopped and answered
    // 503, as when the autoscaler stopped first.
    let during_down = Codes::default();
    let clients = Traffic::start(
        &c.http,
        &c.url("/"),
        4,
        Duration::from_millis(20),
        &during_down,
    );
    let t0 = Instant::now();
    // The clients run on the other worker thread meanwhile.
    tokio::task::block_in_place(|| c.project.must(&["down", "--timeout", "45"]));
    let down_s = t0.elapsed().as_secs_f64();
    clients.stop().await;
    assert!(
        during_down.only(&[200, 0]) && during_down.count(200) > 0,
        "requests during down: {} (want 200 from an app server, or no answer from a stopped gateway)",
        during_down.summary()
    );
    let left = c.engine().project_containers().await;
    assert!(left.is_empty(), "containers of the project left: {left:?}");
    let left = c.engine().managed_any_state().await;
    assert!(
        left.is_empty(),
        "app-server containers left: {left:?} (fallback: docker rm -f $(docker ps -aq --filter label=shoal.managed=true))"
    );
    assert!(
        !c.engine().network_exists().await,
        "network {} left",
        c.engine().network
    );
    c.step_done(&format!(
        "down: nothing left (no container, no network) in {down_s:.1} s; requests meanwhile: {}",
        during_down.summary()
    ));

    c.project.passed();
    println!(
        "compose check: ok — {} steps, {} failed of {} requests (+{cut_off} cut off by the partition), docker kill → ready replacement {kill_s:.1} s, {} s",
        c.steps,
        c.codes.failed(),
        c.codes.total(),
        c.started.elapsed().as_secs()
    );
}
