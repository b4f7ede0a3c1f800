//! What only an etcd cluster has: a leader, and members that fail one by
//! one: killed (SIGKILL) and started again with their data, or cut off from
//! everyone by the firewall and healed.
//!
//! A cut must isolate the member both ways. Dropping packets on its ports
//! alone would not: a member also dials the others' peer ports from
//! ephemeral ports, and raft traffic flows over those connections too. So
//! when the harness is root every member runs as its own user (a random
//! high uid), and a cut is four `iptables` rules on loopback: drop what
//! that user sends (`-m owner`), mark the connections it sends on and drop
//! what arrives on them (`CONNMARK`), and drop new connections to its
//! client and peer ports. Without root (or iptables) [`Etcd::cut_member`]
//! says so and the caller skips ([`crate::skip_unless_ci`]).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::Rng;

use super::{Etcd, Member, Security};
use crate::wait::wait_for;

/// One `iptables` rule: table, chain and match.
pub(super) type Rule = (&'static str, &'static str, Vec<String>);

/// A user of its own for a new cluster member, when the harness is root
/// (only root can start a process as another user).
pub(super) fn member_uid() -> Option<u32> {
    nix::unistd::geteuid()
        .is_root()
        .then(|| rand::rng().random_range(3_000_000_000..4_000_000_000u32))
}

/// Create `dir` (a member's data directory in `parent`) owned by `uid`,
/// and let that user reach it through `parent`.
pub(super) fn own_dir(parent: &Path, dir: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("open up the parent of", e))?;
    std::fs::create_dir_all(dir).map_err(|e| fail("create", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("chmod", e))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).map_err(|e| fail("chown", e))
}

/// Run `iptables -w ARGS`; its stderr as the error when it fails.
fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `iptables`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`iptables {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn apply(op: &str, (table, chain, rule): &Rule) -> Result<(), String> {
    let mut args = vec!["-t", table, op, chain];
    args.extend(rule.iter().map(String::as_str));
    iptables(&args)
}

impl Etcd {
    /// Start a cluster of `size` plain members on loopback (free client and
    /// peer ports, `--initial-cluster` naming them all) and wait until every
    /// member answers.
    pub async fn start_cluster(size: usize) -> Etcd {
        assert!(size >= 1, "a cluster has at least one member");
        crate::init_logging();
        let mut last_error = String::new();
        // Free ports may be taken between finding and binding them: retry.
        for _ in 0..3 {
            let mut etcd = Etcd::unstarted(Security::default(), size);
            match etcd.launch().await {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("an etcd cluster of {size} did not start: {last_error}");
    }

    /// How many members it has (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Kill member `i` (SIGKILL); [`Etcd::start_again`] starts it again
    /// with its data.
    pub async fn stop_member(&mut self, i: usize) {
        if let Some(mut proc) = self.members[i].proc.take() {
            proc.kill9().await;
        }
    }

    /// Whether member `i` is running.
    pub fn member_running(&self, i: usize) -> bool {
        self.members[i].proc.is_some()
    }

    /// A client that talks to member `i` alone.
    pub async fn member_client(&self, i: usize) -> etcd_client::Client {
        let mut args = self.args();
        args.endpoints = vec![self.member_endpoint(i)];
        args.connect().await.expect("etcd client for one member")
    }

    /// The member the running, reachable members name as their leader,
    /// waited for up to `timeout` (an election may be under way).
    pub async fn leader(&self, timeout: Duration) -> Result<usize, String> {
        wait_for(
            timeout,
            "a member every answering member names leader",
            || self.leader_now(),
        )
        .await
    }

    /// Ask every running member that is not cut off for its id and its
    /// leader's; the leader when they agree and it answered itself.
    async fn leader_now(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.proc.is_none() || !member.cut.is_empty() {
                continue;
            }
            let mut client = self.member_client(i).await;
            let status = tokio::time::timeout(Duration::from_millis(500), client.status()).await;
            if let Ok(Ok(status)) = status {
                let header = status.header()?;
                ids.push((i, header.member_id()));
                leaders.push(status.leader());
            }
        }
        let leader = *leaders.first()?;
        if leader == 0 || leaders.iter().any(|&l| l != leader) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i)
    }

    /// Cut member `i` off from the other members and from every client
    /// (see the module doc); an error says why it cannot be done here.
    pub fn cut_member(&mut self, i: usize) -> Result<(), String> {
        let member = &self.members[i];
        let Some(uid) = member.uid else {
            return Err(
                "cutting an etcd member off needs root (each member runs as its own user, \
                 matched by iptables -m owner); run the tests as root"
                    .to_owned(),
            );
        };
        let uid = uid.to_string();
        let ports = format!("{},{}", member.client_port, member.peer_port);
        let owned = |rule: &[&str]| rule.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rules: Vec<Rule> = vec![
            (
                "mangle",
                "OUTPUT",
                owned(&[
                    "-o",
                    "lo",
                    "-m",
                    "owner",
                    "--uid-owner",
                    &uid,
                    "-j",
                    "CONNMARK",
                    "--set-mark",
                    &uid,
                ]),
            ),
            (
                "filter",
                "OUTPUT",
                owned(&["-o", "lo", "-m", "owner", "--uid-owner", &uid, "-j", "DROP"]),
            ),
            (
                "filter",
                "INPUT",
                owned(&["-i", "lo", "-m", "connmark", "--mark", &uid, "-j", "DROP"]),
            ),
            (
                "filter",
                "INPUT",
                owned(&[
                    "-i",
                    "lo",
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "--dports",
                    &ports,
                    "-j",
                    "DROP",
                ]),
            ),
        ];
        for rule in rules {
            let applied = apply("-I", &rule);
            if let Err(e) = applied {
                self.heal_member(i)?;
                return Err(format!(
                    "{e} (cutting an etcd member off needs iptables with the owner, connmark \
                     and multiport matches: `apt-get install iptables`)"
                ));
            }
            self.members[i].cut.push(rule);
        }
        Ok(())
    }

    /// Remove member `i`'s cut.
    pub fn heal_member(&mut self, i: usize) -> Result<(), String> {
        while let Some(rule) = self.members[i].cut.pop() {
            apply("-D", &rule)?;
        }
        Ok(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        while let Some(rule) = self.cut.pop() {
            if let Err(e) = apply("-D", &rule) {
                eprintln!("could not remove an etcd member's cut: {e}");
            }
        }
    }
}
