//! The flags of `autoscaler run` that configure the `docker` and `swarm` drivers
//! (flattened into `RunConfig`), each with a `SHOAL_*` env var, and how they
//! become a [`DockerConfig`].
//!
//! The instances' etcd endpoint is a flag of its own (`--instance-etcd`)
//! because a container often reaches etcd by another name than the
//! controller does: a controller on the host talks to `127.0.0.1:2379`,
//! while its containers need `http://etcd:2379` on the Docker network. By
//! default the instances get the controller's own `--etcd`, which is right
//! when the controller itself runs as a container on that network (as in
//! `compose.yaml`); a loopback endpoint is refused, since inside a container
//! it is the container's own loopback.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use registry::EtcdArgs;

use super::containers::{Advertise, DEFAULT_IMAGE, DockerConfig};

/// Flags of the docker driver.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Docker and Swarm drivers (--driver docker|swarm)")]
pub struct DockerArgs {
    /// Image the instances run (its entrypoint must be app-server, or set
    /// --instance-entrypoint); `docker/build-images.sh` builds the default.
    #[arg(long, env = "SHOAL_DOCKER_IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,

    /// Overrides the image's entrypoint, split on whitespace, e.g.
    /// `app-server` for the all-binaries image `shoal/shoal`.
    #[arg(long, env = "SHOAL_DOCKER_ENTRYPOINT", value_name = "COMMAND")]
    pub instance_entrypoint: Option<String>,

    /// User-defined Docker network the containers join (`bridge` only with
    /// `--advertise host-port`); with `--driver swarm`, an overlay network.
    #[arg(long, env = "SHOAL_DOCKER_NETWORK", default_value = "shoal")]
    pub network: String,

    /// Address the instances register: `container-name` (`{name}:8080`, for
    /// gateways on the same network) or `host-port` (a port published on
    /// 127.0.0.1, for gateways on the host; not with `--driver swarm`).
    #[arg(long, env = "SHOAL_DOCKER_ADVERTISE", value_enum, default_value_t = Advertise::ContainerName)]
    pub advertise: Advertise,

    /// etcd endpoint(s), comma-separated, as the containers reach them
    /// [default: the controller's own --etcd].
    #[arg(long, env = "SHOAL_INSTANCE_ETCD", value_name = "URL")]
    pub instance_etcd: Option<String>,

    /// Extra environment variable for every instance container, as
    /// KEY=VALUE; repeatable (comma-separated in the env var).
    #[arg(
        long = "instance-env",
        env = "SHOAL_INSTANCE_ENV",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_env
    )]
    pub instance_env: Vec<(String, String)>,

    /// First part of the container names (`{prefix}-{service}-{id[..8]}`).
    #[arg(long, env = "SHOAL_DOCKER_NAME_PREFIX", default_value = "shoal")]
    pub name_prefix: String,

    /// Image of the registrar beside each managed instance of a service
    /// whose spec runs a stock image (`registry run --attach`; it must have
    /// `registry` on its PATH).
    #[arg(long, env = "SHOAL_REGISTRAR_IMAGE", default_value = super::containers::DEFAULT_REGISTRAR_IMAGE)]
    pub registrar_image: String,

    /// Give the containers a Docker healthcheck (`app-server --healthcheck`,
    /// so the image needs app-server on its PATH); `docker ps` then shows
    /// whether each instance is ready.
    #[arg(long, env = "SHOAL_DOCKER_HEALTHCHECK")]
    pub instance_healthcheck: bool,
}

impl DockerArgs {
    /// The driver's configuration. `etcd` is the controller's own
    /// connection (its prefix, and the default instance endpoint);
    /// `lease_ttl` is the instances' lease TTL.
    pub fn config(&self, etcd: &EtcdArgs, lease_ttl: Duration) -> anyhow::Result<DockerConfig> {
        let etcd_url = match &self.instance_etcd {
            Some(url) => url.clone(),
            None => {
                if let Some(local) = etcd.endpoints.iter().find(|e| is_loopback(e)) {
                    bail!(
                        "the instances would use the controller's etcd endpoint {local}, but inside a \
                         container that is the container's own loopback: pass --instance-etcd with an \
                         address the containers can reach (e.g. http://etcd:2379 on the Docker network)"
                    );
                }
                etcd.endpoints.join(",")
            }
        };
        let entrypoint = match &self.instance_entrypoint {
            Some(e) => {
                let argv: Vec<String> = e.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    bail!("--instance-entrypoint is empty; give a program, e.g. app-server");
                }
                Some(argv)
            }
            None => None,
        };
        let mut env = self.instance_env.clone();
        // Instances log in to etcd as the controller does, with the same TLS
        // files, mounted read-only at the same path.
        env.extend(etcd.credentials_env());
        let mut read_only_files = Vec::new();
        for (flag, file) in [
            ("--etcd-ca", &etcd.etcd_ca),
            ("--etcd-cert", &etcd.etcd_cert),
            ("--etcd-key", &etcd.etcd_key),
        ] {
            let Some(file) = file else { continue };
            let absolute = std::path::absolute(file)
                .ok()
                .filter(|f| f.is_file())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{flag} {}: not a readable file here, so it cannot be mounted into the \
                         instance containers; give the absolute path of a file that exists on \
                         the Docker host",
                        file.display()
                    )
                })?;
            read_only_files.push(absolute);
        }
        Ok(DockerConfig {
            image: self.image.clone(),
            entrypoint,
            network: Some(self.network.clone()),
            advertise: self.advertise,
            etcd_url,
            prefix: etcd.prefix.prefix().to_owned(),
            lease_ttl,
            env,
            read_only_files,
            args: Vec::new(),
            labels: Vec::new(),
            name_prefix: self.name_prefix.clone(),
            healthcheck: self.instance_healthcheck,
            registrar_image: self.registrar_image.clone(),
        })
    }
}

fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("`{s}` is not KEY=VALUE; use e.g. RUST_LOG=debug")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        docker: DockerArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<DockerConfig> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?;
        cli.docker.config(&cli.etcd, Duration::from_secs(3))
    }

    #[test]
    fn flags_become_the_driver_configuration() {
        let c = config(&[
            "--etcd",
            "http://127.0.0.1:2379",
            "--prefix",
            "/p",
            "--instance-etcd",
            "http://etcd:2379",
            "--image",
            "shoal/shoal:dev",
            "--instance-entrypoint",
            "app-server",
            "--network",
            "net",
            "--advertise",
            "host-port",
            "--instance-env",
            "RUST_LOG=debug",
            "--instance-env",
            "A=b=c",
            "--instance-healthcheck",
        ])
        .unwrap();
        assert_eq!(c.etcd_url, "http://etcd:2379");
        assert_eq!(c.prefix, "/p");
        assert_eq!(c.image, "shoal/shoal:dev");
        assert_eq!(c.entrypoint, Some(vec!["app-server".to_owned()]));
        assert_eq!(c.network.as_deref(), Some("net"));
        assert_eq!(c.advertise, Advertise::HostPort);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert!(c.healthcheck);
        assert_eq!(
            c.env,
            [
                ("RUST_LOG".to_owned(), "debug".to_owned()),
                ("A".to_owned(), "b=c".to_owned())
            ]
        );
    }

    #[test]
    fn instances_default_to_the_controllers_etcd_unless_it_is_loopback() {
        let c = config(&["--etcd", "http://etcd:2379,http://etcd2:2379"]).unwrap();
        assert_eq!(c.etcd_url, "http://etcd:2379,http://etcd2:2379");
        assert_eq!(c.image, DEFAULT_IMAGE);
        assert_eq!(c.advertise, Advertise::ContainerName);
        for local in [
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
        ] {
            let err = config(&["--etcd", local]).unwrap_err().to_string();
            assert!(err.contains("--instance-etcd"), "{local}: {err}");
        }
    }

    #[test]
    fn bad_env_is_refused() {
        let err = config(&["--etcd", "http://etcd:2379", "--instance-env", "NOEQUALS"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not KEY=VALUE"), "{err}");
    }

    #[test]
    fn etcd_credentials_and_tls_files_reach_the_containers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let ca = ca.to_str().unwrap();
        let c = config(&[
            "--etcd",
            "https://etcd:2379",
            "--etcd-user",
            "shoal",
            "--etcd-password",
            "secret",
            "--etcd-ca",
            ca,
        ])
        .unwrap();
        assert_eq!(
            c.env,
            [
                ("SHOAL_ETCD_USER".to_owned(), "shoal".to_owned()),
                ("SHOAL_ETCD_PASSWORD".to_owned(), "secret".to_owned()),
                ("SHOAL_ETCD_CA".to_owned(), ca.to_owned()),
            ]
        );
        assert_eq!(c.read_only_files, [std::path::PathBuf::from(ca)]);
        let missing = dir.path().join("missing.pem");
        let err = config(&[
            "--etcd",
            "https://etcd:2379",
            "--etcd-ca",
            missing.to_str().unwrap(),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--etcd-ca") && err.contains("cannot be mounted"),
            "{err}"
        );
    }
}
