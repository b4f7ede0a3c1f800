//! The `registry` command line: `run` wrapping a foreign program, `watch`,
//! and the error a user sees when etcd is not there.

use std::time::Duration;

use nix::sys::signal::Signal;
use shoal_tests::binaries::logs_dir;
use shoal_tests::{AppServer, AppServerOptions, Etcd, Proc, bin_path};

use crate::{is_gone, is_ready, wait_instance};

#[derive(serde::Deserialize)]
struct Registered {
    id: String,
    addr: String,
}

/// SIGTERM to a `registry run`, its exit, and its instance gone from the
/// registry within half a second of it.
async fn stop_and_wait_deregistered(
    wrapper: &mut Proc,
    client: &etcd_client::Client,
    key: &str,
) -> std::process::ExitStatus {
    wrapper.signal(Signal::SIGTERM);
    let status = wrapper.wait_exit(Duration::from_secs(15)).await;
    wait_instance(
        client,
        key,
        Duration::from_millis(500),
        "deregistered",
        is_gone,
    )
    .await;
    status
}

/// `registry run` (through `launcher`, e.g. `nohup`, when given) of
/// `program` as service `py`, its port in `PORT` (and for `{port}`), a
/// 200 ms drain grace: the wrapper, what it registered and the instance's
/// key, once the program is ready.
async fn start_run(
    etcd: &Etcd,
    client: &etcd_client::Client,
    launcher: Option<&str>,
    program: &[&str],
) -> (Proc, Registered, String) {
    let endpoint = etcd.endpoint();
    let head = [
        "--etcd",
        &endpoint,
        "run",
        "--service",
        "py",
        "--port-env",
        "PORT",
        "--lease-ttl",
        "3s",
        "--drain-grace",
        "200ms",
        "--",
    ];
    let mut args: Vec<String> = head.iter().chain(program).map(|s| s.to_string()).collect();
    let (label, command) = match launcher {
        Some(launcher) => {
            args.insert(0, bin_path("registry").display().to_string());
            ("launched-registry-run", std::path::PathBuf::from(launcher))
        }
        None => ("registry-run", bin_path("registry")),
    };
    let wrapper = Proc::spawn(label, &command, &args, &[], &logs_dir());
    let registered: Registered = wrapper
        .wait_event("registered", Duration::from_secs(20))
        .await;
    let key = registry::Keys::default().instance("py", &registered.id);
    wait_instance(
        client,
        &key,
        Duration::from_secs(10),
        "the program ready",
        is_ready,
    )
    .await;
    (wrapper, registered, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_registers_a_python_http_server_and_deregisters_it_on_sigterm() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let python = [
        "python3",
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
    ];
    let (mut wrapper, registered, key) = start_run(&etcd, &client, None, &python).await;
    let resp = reqwest::get(format!("http://{}/", registered.addr))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "python's http.server answers through the registered address"
    );

    let status = stop_and_wait_deregistered(&mut wrapper, &client, &key).await;
    // python3 -m http.server dies of the forwarded SIGTERM; the wrapper reports it the shell way.
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "{status:?}; stderr:\n{}",
        wrapper.stderr()
    );
}

/// [`start_run`] of a python HTTP server that writes its pid to
/// `{dir}/pid`: the wrapper, the instance's key and the program's pid.
async fn run_python_writing_its_pid(
    etcd: &Etcd,
    client: &etcd_client::Client,
    dir: &std::path::Path,
    launcher: Option<&str>,
) -> (Proc, String, i32) {
    let program = format!(
        "echo $$ > {}/pid; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        dir.display()
    );
    let (wrapper, _, key) = start_run(etcd, client, launcher, &["sh", "-c", &program]).await;
    let pid = std::fs::read_to_string(dir.join("pid"))
        .expect("the program wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    (wrapper, key, pid)
}

/// The terminal a `registry run` runs in goes away (SIGHUP to its process
/// group, which the program, in a group of its own, does not get): the
/// wrapper stops its program and deregisters it, as on SIGTERM, instead of
/// dying at once and leaving the program running unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_its_program_and_deregisters_it_on_sighup() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut wrapper, key, program) =
        run_python_writing_its_pid(&etcd, &client, dir.path(), None).await;
    let masks_before = signal_masks(wrapper.pid());
    wrapper.signal(Signal::SIGHUP);
    let stopped = shoal_tests::wait_until(Duration::from_secs(15), "the wrapper to exit", || {
        wrapper.has_exited()
    })
    .await;
    if let Err(e) = stopped {
        // Why a SIGHUP was not acted on: ignored, blocked or never caught.
        panic!(
            "{e}; its signal masks before it: {masks_before}; now: {}; stderr:\n{}",
            signal_masks(wrapper.pid()),
            wrapper.stderr()
        );
    }
    let status = wrapper.wait_exit(Duration::from_secs(1)).await;
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the program ended by the SIGTERM the wrapper sent it: {status:?}; stderr:\n{}",
        wrapper.stderr()
    );
    assert!(
        wrapper.stderr().contains("SIGHUP"),
        "the wrapper names the signal:\n{}",
        wrapper.stderr()
    );
    wait_instance(
        &client,
        &key,
        Duration::from_secs(2),
        "deregistered",
        is_gone,
    )
    .await;
    assert!(
        !std::path::Path::new(&format!("/proc/{program}")).exists(),
        "the program ({program}) is not left running"
    );
}

/// The `Sig*` lines of process `pid`'s status (pending, blocked, ignored,
/// caught), for a failure message.
fn signal_masks(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("Sig") || l.starts_with("ShdPnd"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|e| format!("(cannot read: {e})"))
}

/// Under `nohup` SIGHUP stays ignored: `registry run` installs no handler
/// over it (its signal masks say so), and SIGTERM still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_under_nohup_leaves_sighup_ignored() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut wrapper, key, _) =
        run_python_writing_its_pid(&etcd, &client, dir.path(), Some("nohup")).await;
    let masks = std::fs::read_to_string(format!("/proc/{}/status", wrapper.pid())).unwrap();
    let bit0 = |name: &str| {
        let mask = masks
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{masks}"));
        u64::from_str_radix(mask.trim(), 16).unwrap() & 1 == 1
    };
    assert!(
        bit0("SigIgn:") && !bit0("SigCgt:"),
        "SIGHUP ignored, not caught:\n{masks}"
    );
    let status = stop_and_wait_deregistered(&mut wrapper, &client, &key).await;
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_attach_registers_a_program_it_did_not_start_and_leaves_it_running() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let port = shoal_tests::free_port().to_string();
    let mut server = Proc::spawn(
        "http-server",
        std::path::Path::new("python3"),
        &["-m", "http.server", &port, "--bind", "127.0.0.1"].map(String::from),
        &[],
        &logs_dir(),
    );
    let args: Vec<String> = [
        "--etcd",
        &etcd.endpoint(),
        "run",
        "--attach",
        "--service",
        "py",
        "--id",
        "attached-1",
        "--port",
        &port,
        "--health-path",
        "/",
        "--drain-grace",
        "200ms",
    ]
    .map(String::from)
    .to_vec();
    let mut wrapper = Proc::spawn(
        "registry-run",
        &bin_path("registry"),
        &args,
        &[],
        &logs_dir(),
    );
    let key = registry::Keys::default().instance("py", "attached-1");
    wait_instance(
        &client,
        &key,
        Duration::from_secs(20),
        "the attached server ready",
        is_ready,
    )
    .await;

    let status = stop_and_wait_deregistered(&mut wrapper, &client, &key).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", wrapper.stderr());
    assert!(
        !server.has_exited(),
        "the program it did not start is left running"
    );
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.signal(Signal::SIGTERM);

    // --attach without --port, or with a command too, is a usage error.
    let out = tokio::process::Command::new(bin_path("registry"))
        .args(["run", "--attach", "--service", "py", "--", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A Python HTTP server whose `/healthz` answers 503 while `{dir}/sick` exists.
const TOGGLED_HEALTH: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
sick = os.path.join(sys.argv[2], "sick")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists(sick) else 200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_while_running_takes_a_failing_program_out_of_routing_and_back() {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let args: Vec<String> = [
        "--etcd",
        &etcd.endpoint(),
        "run",
        "--service",
        "py",
        "--id",
        "toggled",
        "--port-env",
        "PORT",
        "--health-path",
        "/healthz",
        "--health-while-running",
        "--",
        "sh",
        "-c",
        &format!("exec python3 -c '{TOGGLED_HEALTH}' \"$PORT\" {dir_arg}"),
    ]
    .map(String::from)
    .to_vec();
    let mut wrapper = Proc::spawn(
        "registry-run",
        &bin_path("registry"),
        &args,
        &[],
        &logs_dir(),
    );
    let key = registry::Keys::default().instance("py", "toggled");
    let is_starting = |i: Option<&registry::Instance>| {
        i.is_some_and(|i| i.state == registry::InstanceState::Starting)
    };
    wait_instance(&client, &key, Duration::from_secs(20), "ready", is_ready).await;
    std::fs::write(dir.path().join("sick"), "").unwrap();
    // Three failed probes a second apart.
    wait_instance(
        &client,
        &key,
        Duration::from_secs(10),
        "out of routing while sick",
        is_starting,
    )
    .await;
    std::fs::remove_file(dir.path().join("sick")).unwrap();
    wait_instance(
        &client,
        &key,
        Duration::from_secs(5),
        "back in routing",
        is_ready,
    )
    .await;
    wrapper.signal(Signal::SIGTERM);
    wrapper.wait_exit(Duration::from_secs(15)).await;
    let log = wrapper.stderr();
    assert!(
        log.contains("out of routing until it passes") && log.contains("back in routing"),
        "both changes are logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_change() {
    let etcd = Etcd::start().await;
    let args = vec![
        "--etcd".to_owned(),
        etcd.endpoint(),
        "watch".to_owned(),
        "app".to_owned(),
    ];
    let watch = Proc::spawn(
        "registry-watch",
        &bin_path("registry"),
        &args,
        &[],
        &logs_dir(),
    );
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            l.starts_with("reset 0").then_some(())
        })
        .await;

    let mut server = AppServer::start(&etcd, AppServerOptions::default()).await;
    let name = format!("app/{}", server.id);
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l.starts_with("put ") && l.contains(&name) && l.ends_with("ready")).then_some(())
        })
        .await;
    server.proc.signal(Signal::SIGTERM);
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l.starts_with("put ") && l.contains(&name) && l.ends_with("draining")).then_some(())
        })
        .await;
    watch
        .wait_stdout(Duration::from_secs(5), |l| {
            (l == format!("delete {name}")).then_some(())
        })
        .await;
    server.proc.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_against_a_dead_etcd_says_what_to_do() {
    let port = shoal_tests::free_port();
    let out = tokio::process::Command::new(bin_path("registry"))
        .args(["--etcd", &format!("http://127.0.0.1:{port}"), "list"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach etcd at http://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--etcd"),
        "the message says how to fix it: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_set_get_delete_drive_a_real_gateway() {
    use shoal_tests::binaries::registry_cli;
    use shoal_tests::{AppServerOptions, Platform};

    use crate::gateway::{http, wait_routed};

    let platform = Platform::builder()
        .app_servers_with(1, AppServerOptions::for_service("other"))
        .gateway(&[])
        .start()
        .await;
    let (etcd, apps, gateway) = (&platform.etcd, &platform.app_servers, platform.gateway());
    let route = r#"{"path_prefix":"/other","service":"other","strip_prefix":true}"#;
    let set = registry_cli(etcd, &["route", "set", "other", route]).await;
    assert!(set.status.success(), "{set:?}");
    let printed: serde_json::Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(printed["route"]["service"], "other", "{printed}");

    // The gateway follows it: /other goes to the other service.
    wait_routed(
        &http(),
        gateway,
        "/other/",
        &[apps[0].id.as_str()],
        Duration::from_secs(5),
    )
    .await;

    let table = registry_cli(etcd, &["route", "get"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "HOST", "PREFIX", "SERVICE", "POLICY"],
            vec!["other", "*", "/other", "other", "least-request"]
        ],
        "{table}"
    );

    // A route that does not validate is refused before anything is written.
    let bad = registry_cli(
        etcd,
        &[
            "route",
            "set",
            "hashed",
            r#"{"service":"app","policy":"consistent-hash"}"#,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hash_key"), "{stderr}");
    let missing = registry_cli(etcd, &["route", "get", "hashed"]).await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("registry route set hashed"), "{stderr}");

    let deleted = registry_cli(etcd, &["route", "delete", "other"]).await;
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout).trim(),
        "deleted the route other"
    );
    let json = registry_cli(etcd, &["route", "get", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]));
}
