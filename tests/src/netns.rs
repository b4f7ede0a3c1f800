//! A network namespace joined to the host by a veth pair, so that a process
//! started inside it can be cut off from one address (etcd) while the host
//! (the gateway) still reaches it: `ip netns`, `ip link` and `iptables`,
//! which need root.
//!
//! Every namespace gets unique names and its own /30 in 10.200.0.0/13; the
//! namespace (and with it both ends of the veth pair) is deleted on drop,
//! also when a test panics.
//!
//! [`NetNs::create_or_skip`] follows the rule of the browser tests: without
//! the tools or the privileges a test is skipped with a note, except under
//! `CI=true`, where it fails saying why.

use std::net::Ipv4Addr;
use std::process::Command;

use rand::Rng;

/// A network namespace with a veth pair to the host.
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    host_if: String,
    /// The host's end of the pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's end of the pair.
    pub ns_ip: Ipv4Addr,
    /// `iptables` rules added inside the namespace, removed by [`NetNs::heal`].
    cuts: Vec<Vec<String>>,
}

/// Run `program args`; its stderr as the error when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Create a namespace, a veth pair with one end inside it, and address
    /// both ends; anything created is removed again if a step fails.
    pub fn create() -> Result<NetNs, String> {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (b, c, d) = {
            let mut rng = rand::rng();
            (
                rng.random_range(200..208u8),
                rng.random_range(0..=255u8),
                rng.random_range(0..64u8) * 4,
            )
        };
        let netns = NetNs {
            name: format!("shoal-{tag}"),
            // Interface names have at most 15 bytes.
            host_if: format!("sh{tag}h"),
            host_ip: Ipv4Addr::new(10, b, c, d + 1),
            ns_ip: Ipv4Addr::new(10, b, c, d + 2),
            cuts: Vec::new(),
        };
        run("ip", &["netns", "add", &netns.name])?;
        // From here on, dropping `netns` deletes what exists.
        let ns_if = format!("sh{tag}n");
        let host_cidr = format!("{}/30", netns.host_ip);
        let ns_cidr = format!("{}/30", netns.ns_ip);
        let name = netns.name.as_str();
        run(
            "ip",
            &[
                "link",
                "add",
                &netns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ],
        )?;
        run("ip", &["link", "set", &ns_if, "netns", name])?;
        run("ip", &["addr", "add", &host_cidr, "dev", &netns.host_if])?;
        run("ip", &["link", "set", &netns.host_if, "up"])?;
        for args in [
            vec!["addr", "add", &ns_cidr, "dev", &ns_if],
            vec!["link", "set", &ns_if, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", name, "ip"];
            full.extend(args);
            run("ip", &full)?;
        }
        // iptables must work inside it, or the namespace is no use for a cut.
        run("ip", &["netns", "exec", name, "iptables", "-S", "OUTPUT"])?;
        Ok(netns)
    }

    /// [`NetNs::create`], or `None` with a note on stderr when that is not
    /// possible here (no root, no `ip`/`iptables`), for the caller to skip;
    /// under `CI=true` it panics instead, naming `what` and the reason.
    pub fn create_or_skip(what: &str) -> Option<NetNs> {
        match NetNs::create() {
            Ok(netns) => Some(netns),
            Err(e) => crate::skip_unless_ci(&format!(
                "{what} needs a network namespace (root, `apt-get install iproute2 iptables`): {e}"
            )),
        }
    }

    /// The command prefix that runs a program inside the namespace:
    /// `ip netns exec NAME`, as (program, arguments).
    pub fn exec_prefix(&self) -> (String, Vec<String>) {
        (
            "ip".to_owned(),
            vec!["netns".into(), "exec".into(), self.name.clone()],
        )
    }

    /// Drop every TCP packet between the namespace and `ip:port`, both ways
    /// (connections hang rather than being refused, as behind a dead link;
    /// dropping only what the namespace sends would still let a stream
    /// from `ip:port`, such as an etcd watch, deliver what it pushes).
    pub fn cut_tcp_to(&mut self, ip: Ipv4Addr, port: u16) -> Result<(), String> {
        let (ip, port) = (ip.to_string(), port.to_string());
        for rule in [
            [
                "OUTPUT", "-d", &ip, "-p", "tcp", "--dport", &port, "-j", "DROP",
            ],
            [
                "INPUT", "-s", &ip, "-p", "tcp", "--sport", &port, "-j", "DROP",
            ],
        ] {
            let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
            self.iptables("-I", &rule)?;
            self.cuts.push(rule);
        }
        Ok(())
    }

    /// Remove every cut made by [`NetNs::cut_tcp_to`].
    pub fn heal(&mut self) -> Result<(), String> {
        while let Some(rule) = self.cuts.pop() {
            self.iptables("-D", &rule)?;
        }
        Ok(())
    }

    fn iptables(&self, op: &str, rule: &[String]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.name, "iptables", op];
        args.extend(rule.iter().map(String::as_str));
        run("ip", &args)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair;
        // the host end is deleted too in case it never moved in.
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
