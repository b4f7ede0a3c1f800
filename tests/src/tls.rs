//! A TLS client for the gateway's `--tls-listen`, on tokio-rustls and
//! hyper's client connections (the tests' reqwest is built without TLS):
//! connect with a chosen SNI name, ALPN list and TLS versions, see which
//! certificate and protocol the gateway chose, and send requests over
//! HTTP/1.1 or HTTP/2 on that one connection (so a test can keep it open
//! across a certificate reload).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// TLS 1.2 and 1.3.
pub const BOTH_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// One TLS connection to the gateway, and what its handshake chose.
pub struct TlsConn {
    /// The protocol ALPN settled on (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    pub version: ProtocolVersion,
    /// The certificate the gateway presented (the end-entity one).
    pub served: CertificateDer<'static>,
    sender: Sender,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// An answer: status, headers, body.
pub type Answer = (StatusCode, HeaderMap, Bytes);

impl TlsConn {
    /// Connect to `addr`, sending SNI `server_name`, offering `alpn`, with
    /// `versions`, trusting the CA in the PEM file `ca`. HTTP/2 when ALPN
    /// chose `h2`, else HTTP/1.1.
    pub async fn connect(
        addr: &str,
        server_name: &str,
        alpn: &[&str],
        versions: &[&'static SupportedProtocolVersion],
        ca: &Path,
    ) -> anyhow::Result<TlsConn> {
        let mut roots = RootCertStore::empty();
        roots
            .add(cert_der(ca))
            .context("the test CA is a valid trust anchor")?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(server_name.to_owned())?;
        let tcp = TcpStream::connect(addr).await?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} as {server_name}"))?;
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session
            .protocol_version()
            .ok_or_else(|| anyhow!("no protocol version after the handshake"))?;
        let served = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| anyhow!("the gateway presented no certificate"))?
            .clone()
            .into_owned();
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            alpn,
            version,
            served,
            sender,
        })
    }

    /// `GET https://{host}{path}` on this connection.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Answer> {
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                let request = Request::get(path)
                    .header(http::header::HOST, host)
                    .body(Empty::new())?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                let request = Request::get(format!("https://{host}{path}")).body(Empty::new())?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

/// The first certificate in the PEM file at `path`.
pub fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("a certificate in {}: {e}", path.display()))
}
