//! How `registry run` decides the wrapped program is up: a TCP connect to its
//! port, or, with `--health-path`, an HTTP GET that answers 2xx or 3xx.

use std::fmt;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

/// Longest a single probe may take; a probe is retried every 50 ms anyway.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One way of asking "are you up?".
pub enum Probe {
    Tcp {
        addr: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Probe {
    /// A probe of `addr` (`host:port`), over HTTP at `health_path` if given.
    pub fn new(addr: String, health_path: Option<&str>) -> reqwest::Result<Self> {
        let Some(path) = health_path else {
            return Ok(Probe::Tcp { addr });
        };
        let client = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            // A 3xx counts as an answer; following it could probe another server.
            .redirect(reqwest::redirect::Policy::none())
            // Proxy settings in the environment must not reroute a local probe.
            .no_proxy()
            .build()?;
        Ok(Probe::Http {
            client,
            url: format!("http://{addr}{path}"),
        })
    }

    /// True if the program answered as a ready one would.
    pub async fn is_ready(&self) -> bool {
        match self {
            Probe::Tcp { addr } => {
                match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr.as_str())).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        debug!(addr, error = %e, "not ready yet");
                        false
                    }
                    Err(_) => {
                        debug!(addr, "not ready yet: connect timed out");
                        false
                    }
                }
            }
            Probe::Http { client, url } => match client.get(url).send().await {
                Ok(response) => {
                    let status = response.status();
                    let ready = status.is_success() || status.is_redirection();
                    if !ready {
                        debug!(url, %status, "not ready yet");
                    }
                    ready
                }
                Err(e) => {
                    debug!(url, error = %e, "not ready yet");
                    false
                }
            },
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp { addr } => write!(f, "a TCP connect to {addr}"),
            Probe::Http { url, .. } => write!(f, "GET {url} answering 2xx/3xx"),
        }
    }
}
