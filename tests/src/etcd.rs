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
//! The binary is `etcd` from PATH (Debian's `etcd-server`) or `SHOAL_ETCD_BIN`.

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

pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    generation: u32,
    proc: Option<Proc>,
    security: Security,
    pki: Option<Pki>,
    metrics_port: u16,
    also_on: Option<Ipv4Addr>,
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
            let mut etcd = Etcd::unstarted(Security::default());
            etcd.also_on = also_on;
            match etcd.launch().await {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn unstarted(security: Security) -> Etcd {
        Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            generation: 0,
            proc: None,
            security,
            pki: security.tls.then(Pki::generate),
            metrics_port: crate::free_port(),
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
            let mut etcd = Etcd::unstarted(security);
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

    pub fn endpoint(&self) -> String {
        let scheme = if self.security.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Its client URL on `ip` (given to [`Etcd::start_also_on`]).
    pub fn endpoint_on(&self, ip: Ipv4Addr) -> String {
        format!("http://{ip}:{}", self.client_port)
    }

    /// The client port (the same on every address it listens on).
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Arguments for this etcd, with the shoal user and the client
    /// certificate when it needs them.
    pub fn args(&self) -> EtcdArgs {
        let mut args = EtcdArgs::for_endpoint(self.endpoint());
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

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join(format!("data-{}", self.generation))
    }

    async fn launch(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let listen = match self.also_on {
            Some(ip) => format!("{client},{}", self.endpoint_on(ip)),
            None => client.clone(),
        };
        let mut args: Vec<String> = [
            "--name",
            "shoal-test",
            "--data-dir",
            &self.data_dir().to_string_lossy(),
            "--listen-client-urls",
            &listen,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("shoal-test={peer}"),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A TLS etcd's /health is read on a plain metrics port.
        let mut health = format!("{client}/health");
        if let Some(pki) = &self.pki {
            let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
            health = format!("{metrics}/health");
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
            args.push(metrics);
        }
        let mut proc = Proc::spawn("etcd", &etcd_binary(), &args, &[], &logs_dir());
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
        match up {
            Ok(_) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(e) => {
                let exited = proc.has_exited();
                let log = proc.stderr();
                Err(format!("{e} (exited: {exited}); log:\n{log}"))
            }
        }
    }

    /// Kill etcd (SIGKILL: as abrupt as a crash).
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9().await;
        }
    }

    /// Start etcd again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Start a stopped etcd again on the same ports with its data.
    pub async fn start_again(&mut self) {
        assert!(self.proc.is_none(), "etcd is still running");
        if let Err(e) = self.launch().await {
            panic!("etcd did not start again on port {}: {e}", self.client_port);
        }
    }

    /// Replace etcd by an empty one on the same ports: every key and lease is lost.
    pub async fn wipe(&mut self) {
        self.stop().await;
        self.generation += 1;
        self.start_again().await;
    }

    /// Freeze or thaw the server (SIGSTOP / SIGCONT).
    pub fn signal(&self, signal: Signal) {
        self.proc.as_ref().expect("etcd is running").signal(signal);
    }
}
