//! `--healthcheck`: a binary probes its own health endpoint and exits 0 or 1,
//! so that container images need no `curl` (Docker and Compose healthchecks
//! run `app-server --healthcheck`, `gateway --healthcheck`).
//!
//! The probe is one HTTP/1.1 `GET` over a plain TCP connection, bounded by
//! [`TIMEOUT`]; only the status line is read. An address bound to every
//! interface (`0.0.0.0:8080`) is probed on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole probe (connect, request, status line) must take less than this.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The address to probe for a listener bound to `listen`.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET http://{addr}{path}`: the response's status code.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: shoal-healthcheck\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 64];
        while !head.contains(&b'\n') && head.len() < 1024 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read the response: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        parse_status(&head)
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

fn parse_status(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP response: {:?}", line.trim_end())),
    }
}

/// Probe `path` on the listener bound to `listen`, print one line saying
/// what happened, and return the exit code: success for a 2xx answer.
pub fn run(listen: SocketAddr, path: &str) -> ExitCode {
    let addr = local_addr(listen);
    let url = format!("http://{addr}{path}");
    if addr.port() == 0 {
        eprintln!("unhealthy: cannot probe port 0; give the listen address with its port");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime to probe {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe(addr, path)) {
        Ok(code) if (200..300).contains(&code) => {
            println!("healthy: {url} answered {code}");
            ExitCode::SUCCESS
        }
        Ok(code) => {
            eprintln!("unhealthy: {url} answered {code}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        assert_eq!(
            local_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            local_addr("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            local_addr("10.0.0.7:80".parse().unwrap()),
            "10.0.0.7:80".parse().unwrap()
        );
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service"), Ok(503));
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"").is_err());
    }

    async fn serve_once(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            conn.write_all(response.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn probes_read_the_status() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(probe(ok, "/readyz").await, Ok(200));
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(down, "/readyz").await, Ok(503));
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(closed, "/readyz").await.unwrap_err();
        assert!(err.starts_with("cannot connect"), "{err}");
    }
}
