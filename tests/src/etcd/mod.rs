//! A real etcd server for one test: its own temp data dir and free loopback
//! ports. It can be stopped and started again on the same port with its data
//! ([`Etcd::restart`]), or replaced by an empty one ([`Etcd::wipe`]).
//!
//! [`Etcd::start_secure`] starts one that serves clients over TLS with client
//! certificates required (`--client-cert-auth`) and/or with authentication
//! enabled (users `root` and `shoal`, the latter with a role that may read
//! and write the default prefix); [`Etcd::client_flags`] are the flags our
//! binaries need to reach it. A TLS etcd also serves `/health` on a plain
//! loopback metrics port, which is what start-up waits on.
//!
//! [`Etcd::start_also_on`] starts one that also listens on a second address
//! (the host end of a [`crate::netns::NetNs`]), for processes in a network
//! namespace.
//!
//! [`Etcd::start_cluster`] starts a cluster of plain members instead, whose
//! [`Etcd::endpoint`] is the comma list our binaries take (`--etcd a,b,c`);
//! [`cluster`] has what only a cluster has (its leader, one member killed,
//! started again or cut off). Stopping, starting again, wiping and
//! signalling act on every member.
//!
//! The binary is `etcd` from PATH (Debian's `etcd-server`) or `SHOAL_ETCD_BIN`.

mod cluster;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Client;
use nix::sys::signal::Signal;
use registry::EtcdArgs;
use tempfile::TempDir;

use crate::binaries::logs_dir;
use crate::pki::Pki;
use crate::process::Proc;
use crate::wait::wait_until_async;

/// The user our binaries log in as when auth is enabled.
pub const SHOAL_USER: &str = "shoal";
/// Its password.
pub const SHOAL_PASSWORD: &str = "shoal-test-password";
/// The root user's password (auth cannot be enabled without a root user).
pub const ROOT_PASSWORD: &str = "root-test-password";

/// What [`Etcd::start_secure`] turns on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Security {
    /// Serve clients over TLS and require a client certificate signed by the test CA.
    pub tls: bool,
    /// Enable etcd authentication with users `root` and [`SHOAL_USER`].
    pub auth: bool,
}

/// One etcd server: one member, or a cluster of them.
pub struct Etcd {
    dir: TempDir,
    members: Vec<Member>,
    /// Tells this cluster's members from another test's on recycled ports.
    token: String,
    generation: u32,
    security: Security,
    pki: Option<Pki>,
    also_on: Option<Ipv4Addr>,
}

/// One etcd process and its ports.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    /// The user a cluster member runs as when the harness is root: its own,
    /// so that a cut can match its packets ([`cluster`]).
    uid: Option<u32>,
    proc: Option<Proc>,
    /// The firewall rules that cut it off, removed by a heal.
    cut: Vec<cluster::Rule>,
}

impl Member {
    fn new(name: String, uid: Option<u32>) -> Member {
        Member {
            name,
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            metrics_port: crate::free_port(),
            uid,
            proc: None,
            cut: Vec::new(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

fn etcd_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SHOAL_ETCD_BIN") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = PathBuf::from(dir).join("etcd");
        if candidate.is_file() {
            return candidate;
        }
    }
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if PathBuf::from(candidate).is_file() {
            return candidate.into();
        }
    }
    panic!(
        "etcd not found on PATH; install it with `apt-get install etcd-server` or set SHOAL_ETCD_BIN"
    );
}

impl Etcd {
    /// Start a fresh etcd and wait until it answers.
    pub async fn start() -> Etcd {
        Etcd::start_listening(None).await
    }

    /// Start a fresh etcd that also serves clients on `ip` (same port), and
    /// wait until it answers; [`Etcd::endpoint_on`] is its URL there.
    pub async fn start_also_on(ip: Ipv4Addr) -> Etcd {
        Etcd::start_listening(Some(ip)).await
    }

    async fn start_listening(also_on: Option<Ipv4Addr>) -> Etcd {
        crate::init_logging();
        let mut last_error = String::new();
        // Free ports are found by binding and releasing them; another process may
        // take one in between, so a failed start is retried on new ports.
        for _ in 0..3 {
            let mut etcd = Etcd::unstarted(Security::default(), 1);
            etcd.also_on = also_on;
            match etcd.launch().await {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    /// `size` members, not started; a single one is named `shoal-test`.
    fn unstarted(security: Security, size: usize) -> Etcd {
        let members = if size == 1 {
            vec![Member::new("shoal-test".to_owned(), None)]
        } else {
            (0..size)
                .map(|i| Member::new(format!("shoal-test-{i}"), cluster::member_uid()))
                .collect()
        };
        Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            members,
            token: uuid::Uuid::new_v4().simple().to_string(),
            generation: 0,
            security,
            pki: security.tls.then(Pki::generate),
            also_on: None,
        }
    }

    /// Start an etcd with TLS and/or authentication (see [`Security`]), and
    /// wait until it answers; with auth, users and roles are set up and
    /// authentication is enabled before this returns.
    pub async fn start_secure(security: Security) -> Etcd {
        crate::init_logging();
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut etcd = Etcd::unstarted(security, 1);
            match etcd.launch().await {
                Ok(()) => {
                    if security.auth {
                        etcd.enable_auth().await;
                    }
                    return etcd;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    /// The certificates of a TLS etcd.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// The client URL, or a cluster's client URLs as a comma list (what
    /// `--etcd` takes).
    pub fn endpoint(&self) -> String {
        self.endpoints().join(",")
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.member_endpoint(i))
            .collect()
    }

    /// Member `i`'s client URL.
    pub fn member_endpoint(&self, i: usize) -> String {
        let scheme = if self.security.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Its client URL on `ip` (given to [`Etcd::start_also_on`]).
    pub fn endpoint_on(&self, ip: Ipv4Addr) -> String {
        format!("http://{ip}:{}", self.port())
    }

    /// The client port of a single etcd (the same on every address it
    /// listens on).
    pub fn port(&self) -> u16 {
        assert_eq!(self.members.len(), 1, "a cluster has one port per member");
        self.members[0].client_port
    }

    /// Arguments for this etcd, with the shoal user and the client
    /// certificate when it needs them.
    pub fn args(&self) -> EtcdArgs {
        let mut args = EtcdArgs::for_endpoint(self.member_endpoint(0));
        args.endpoints = self.endpoints();
        if let Some(pki) = &self.pki {
            args.etcd_ca = Some(pki.ca.clone());
            args.etcd_cert = Some(pki.client.cert.clone());
            args.etcd_key = Some(pki.client.key.clone());
        }
        if self.security.auth {
            args.etcd_user = Some(SHOAL_USER.to_owned());
            args.etcd_password = Some(SHOAL_PASSWORD.to_owned());
        }
        args
    }

    /// The flags our binaries need besides `--etcd` to reach this etcd:
    /// `--etcd-ca/--etcd-cert/--etcd-key` and `--etcd-user/--etcd-password`
    /// as it requires (none for a plain one).
    pub fn client_flags(&self) -> Vec<String> {
        let args = self.args();
        let mut flags = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                flags.push(flag.to_owned());
                flags.push(value);
            }
        };
        let path = |p: Option<PathBuf>| p.map(|p| p.to_string_lossy().into_owned());
        push("--etcd-ca", path(args.etcd_ca));
        push("--etcd-cert", path(args.etcd_cert));
        push("--etcd-key", path(args.etcd_key));
        push("--etcd-user", args.etcd_user);
        push("--etcd-password", args.etcd_password);
        flags
    }

    /// Users `root` and `shoal`, a role `shoal` that may read and write the
    /// default prefix, then `auth enable`.
    async fn enable_auth(&self) {
        use etcd_client::Permission;
        let mut args = self.args();
        args.etcd_user = None;
        args.etcd_password = None;
        let mut client = args.connect().await.expect("etcd client for auth set-up");
        let prefix = registry::Keys::default().root();
        client
            .user_add("root", ROOT_PASSWORD, None)
            .await
            .expect("add user root");
        client
            .user_grant_role("root", "root")
            .await
            .expect("grant root the root role");
        client.role_add(SHOAL_USER).await.expect("add role shoal");
        client
            .role_grant_permission(SHOAL_USER, Permission::read_write(prefix).with_prefix())
            .await
            .expect("grant the shoal role the prefix");
        client
            .user_add(SHOAL_USER, SHOAL_PASSWORD, None)
            .await
            .expect("add user shoal");
        client
            .user_grant_role(SHOAL_USER, SHOAL_USER)
            .await
            .expect("grant the shoal user its role");
        client.auth_enable().await.expect("enable auth");
    }

    pub async fn client(&self) -> Client {
        self.args().connect().await.expect("etcd client")
    }

    /// Member `i`'s data directory (a fresh one after a wipe), created
    /// and owned by the member's user.
    fn data_dir(&self, i: usize) -> Result<PathBuf, String> {
        let member = &self.members[i];
        let dir = self
            .dir
            .path()
            .join(format!("data-{}-{}", self.generation, member.name));
        if let Some(uid) = member.uid {
            cluster::own_dir(self.dir.path(), &dir, uid)?;
        }
        Ok(dir)
    }

    /// Start every member that is not running, then wait until each
    /// answers `/health` (which needs a quorum: a cluster's members are all
    /// spawned before any is waited for).
    async fn launch(&mut self) -> Result<(), String> {
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let initial_cluster = initial_cluster.join(",");
        let mut spawned = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].proc.is_some() {
                continue;
            }
            let args = self.member_args(i, &initial_cluster)?;
            let member = &self.members[i];
            let proc = match member.uid {
                Some(uid) => Proc::spawn_as("etcd", &etcd_binary(), &args, &logs_dir(), uid),
                None => Proc::spawn("etcd", &etcd_binary(), &args, &[], &logs_dir()),
            };
            self.members[i].proc = Some(proc);
            spawned.push(i);
        }
        for &i in &spawned {
            if let Err(e) = self.wait_healthy(i).await {
                for &j in &spawned {
                    if let Some(mut proc) = self.members[j].proc.take() {
                        proc.kill9().await;
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The command line of member `i`.
    fn member_args(&self, i: usize, initial_cluster: &str) -> Result<Vec<String>, String> {
        let member = &self.members[i];
        let peer = member.peer_url();
        let client = self.member_endpoint(i);
        let listen = match self.also_on {
            Some(ip) => format!("{client},{}", self.endpoint_on(ip)),
            None => client.clone(),
        };
        let mut args: Vec<String> = [
            "--name",
            &member.name,
            "--data-dir",
            &self.data_dir(i)?.to_string_lossy(),
            "--listen-client-urls",
            &listen,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-token",
            &self.token,
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(pki) = &self.pki {
            for (flag, value) in [
                ("--cert-file", &pki.server.cert),
                ("--key-file", &pki.server.key),
                ("--trusted-ca-file", &pki.ca),
            ] {
                args.push(flag.to_owned());
                args.push(value.to_string_lossy().into_owned());
            }
            args.push("--client-cert-auth".to_owned());
            args.push("--listen-metrics-urls".to_owned());
            args.push(self.health_base(i));
        }
        Ok(args)
    }

    /// Where member `i` serves `/health`: a TLS etcd's is read on a plain
    /// metrics port.
    fn health_base(&self, i: usize) -> String {
        match self.pki {
            Some(_) => format!("http://127.0.0.1:{}", self.members[i].metrics_port),
            None => self.member_endpoint(i),
        }
    }

    /// Wait until member `i` says it is healthy (it has a leader and can
    /// serve a linearizable read).
    async fn wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let health = format!("{}/health", self.health_base(i));
        let http = reqwest::Client::new();
        let up = wait_until_async(Duration::from_secs(15), "etcd /health", || {
            let http = http.clone();
            let health = health.clone();
            async move {
                match http
                    .get(&health)
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                {
                    Ok(resp) => resp.text().await.is_ok_and(|t| t.contains("\"true\"")),
                    Err(_) => false,
                }
            }
        })
        .await;
        up.map(|_| ()).map_err(|e| {
            let proc = self.members[i].proc.as_mut().expect("just spawned");
            let exited = proc.has_exited();
            let log = proc.stderr();
            format!("{e} (member {i}, exited: {exited}); log:\n{log}")
        })
    }

    /// Kill etcd, every member (SIGKILL: as abrupt as a crash).
    pub async fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i).await;
        }
    }

    /// Start etcd again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Start a stopped etcd (every stopped member) again on the same
    /// ports with its data, and wait until each answers.
    pub async fn start_again(&mut self) {
        assert!(
            self.members.iter().any(|m| m.proc.is_none()),
            "etcd is still running"
        );
        if let Err(e) = self.launch().await {
            panic!("etcd did not start again on {}: {e}", self.endpoint());
        }
    }

    /// Replace etcd by an empty one on the same ports: every key and lease is lost.
    pub async fn wipe(&mut self) {
        self.stop().await;
        self.generation += 1;
        self.start_again().await;
    }

    /// The running members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|member| member.proc.as_ref().map(Proc::pid))
            .collect()
    }

    /// Freeze or thaw the server, every member (SIGSTOP / SIGCONT).
    pub fn signal(&self, signal: Signal) {
        for member in &self.members {
            member
                .proc
                .as_ref()
                .expect("etcd is running")
                .signal(signal);
        }
    }
}
