//! The compose project under test: `compose.yaml` + `tests/compose/offline.yaml`
//! (which changes only where the images come from) with a unique project
//! name, registry prefix, network and host ports, so that it never touches
//! another stack on the same engine; brought up and down with the compose
//! CLI (`docker compose`, or `docker-compose`). Dropped before the check
//! passed, it prints what compose and the app servers say, and removes
//! everything the project made.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::engine::{Engine, unavailable};

/// The compose CLI found on this machine.
pub struct ComposeCli {
    program: &'static str,
    args: &'static [&'static str],
}

impl ComposeCli {
    /// `docker compose`, else `docker-compose`; `None` (after a note, or a
    /// failure under `CI=true`) when neither works.
    pub fn find_or_skip() -> Option<ComposeCli> {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if works("docker", &["compose"]) {
            return Some(ComposeCli {
                program: "docker",
                args: &["compose"],
            });
        }
        if works("docker-compose", &[]) {
            return Some(ComposeCli {
                program: "docker-compose",
                args: &[],
            });
        }
        unavailable(
            "neither `docker compose` nor `docker-compose` is installed",
            "install the compose plugin or docker-compose",
        );
        None
    }

    pub fn name(&self) -> String {
        [self.program]
            .iter()
            .chain(self.args)
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A compose project with names of its own.
pub struct Project {
    cli: ComposeCli,
    pub engine: Engine,
    /// `http://127.0.0.1:{port}`, the gateway's proxy listener.
    pub gateway: String,
    /// `127.0.0.1:{port}`, the gateway's admin listener.
    pub admin_addr: String,
    /// `http://127.0.0.1:{port}`, the second gateway's proxy listener.
    pub gateway_b: String,
    /// `127.0.0.1:{port}`, the second gateway's admin listener.
    pub admin_b_addr: String,
    env: Vec<(&'static str, String)>,
    passed: bool,
}

/// The repository's root, where compose.yaml is.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

impl Project {
    /// Names, prefix, network and ports of its own for this run.
    pub fn new(cli: ComposeCli, docker: bollard::Docker) -> Project {
        let run = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            std::process::id()
        );
        let name = format!("shoal-check-{run}");
        let prefix = format!("/shoal-check-{run}");
        let (gateway_port, admin_port) = (shoal_tests::free_port(), shoal_tests::free_port());
        let (gateway_b_port, admin_b_port) = (shoal_tests::free_port(), shoal_tests::free_port());
        let env = vec![
            ("SHOAL_PREFIX", prefix.clone()),
            ("SHOAL_NETWORK", name.clone()),
            ("SHOAL_GATEWAY_PORT", gateway_port.to_string()),
            ("SHOAL_ADMIN_PORT", admin_port.to_string()),
            ("SHOAL_GATEWAY_B_PORT", gateway_b_port.to_string()),
            ("SHOAL_ADMIN_B_PORT", admin_b_port.to_string()),
            // 16 characters at least.
            ("SHOAL_ADMIN_TOKEN", format!("compose-check-token-{run}")),
        ];
        Project {
            cli,
            engine: Engine {
                docker,
                prefix,
                project: name.clone(),
                network: name,
            },
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            admin_addr: format!("127.0.0.1:{admin_port}"),
            gateway_b: format!("http://127.0.0.1:{gateway_b_port}"),
            admin_b_addr: format!("127.0.0.1:{admin_b_port}"),
            env,
            passed: false,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "project {}, prefix {}, gateway {}, admin {}, gateway-b {}, {}",
            self.engine.project,
            self.engine.prefix,
            self.gateway,
            self.admin_addr,
            self.gateway_b,
            self.cli.name()
        )
    }

    /// `{compose} -p NAME -f compose.yaml -f tests/compose/offline.yaml ARGS`.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.cli.program);
        command
            .args(self.cli.args)
            .args(["-p", &self.engine.project])
            .args(["-f", "compose.yaml", "-f", "tests/compose/offline.yaml"])
            .args(args)
            .current_dir(repo_root());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Run compose with `args` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", self.cli.name()))
    }

    /// Run compose with `args`; panic with its output if it fails, else print
    /// it indented.
    pub fn must(&self, args: &[&str]) {
        let output = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{} {args:?} failed ({}):\n{text}",
            self.cli.name(),
            output.status
        );
        for line in text.lines() {
            println!("  {line}");
        }
    }

    /// The check passed: nothing to print or clean up on drop.
    /// The admin token the gateway runs with (for admin API writes).
    pub fn admin_token(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| *k == "SHOAL_ADMIN_TOKEN")
            .map(|(_, v)| v.as_str())
            .expect("the project sets an admin token")
    }

    pub fn passed(&mut self) {
        self.passed = true;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        let show = |what: &str, args: &[&str]| {
            let output = self.run(args);
            eprintln!(
                "---- {what}\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        show("compose ps", &["ps"]);
        show(
            "compose logs (last 60 lines per service)",
            &["logs", "--no-color", "--tail", "60"],
        );
        let engine = self.engine.clone();
        let describe = on_a_thread(async move { engine.describe_app_servers().await });
        eprint!("{}", describe.unwrap_or_default());
        let down = self.run(&["down", "--remove-orphans", "--timeout", "20"]);
        if !down.status.success() {
            eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&down.stderr)
            );
        }
        let engine = self.engine.clone();
        if on_a_thread(async move { engine.remove_leftovers().await }).is_err() {
            eprintln!(
                "compose check: the teardown panicked; check `docker ps -a --filter label=shoal.prefix={}`",
                self.engine.prefix
            );
        }
    }
}

/// Run `work` to completion on a thread and runtime of its own: the
/// engine's client is async, and a test being torn down (perhaps
/// panicking) has no runtime to lend.
fn on_a_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the teardown")
            .block_on(work)
    })
    .join()
}
