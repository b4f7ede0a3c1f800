//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the
//! instance has answered 101 and the client has received it, bytes are
//! copied both ways until either side closes.
//!
//! Tunnels are not requests: they are not counted in flight, have no idle
//! timeout, and are not waited for when the gateway drains (they end when
//! the process exits).

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, debug_span};

/// Join the client's and the instance's upgraded connections in a task.
pub fn spawn_tunnel(client: OnUpgrade, instance: OnUpgrade, instance_id: &str, service: &str) {
    let span = debug_span!("tunnel", instance = instance_id, service);
    tokio::spawn(
        async move {
            let (client, instance) = match tokio::try_join!(client, instance) {
                Ok(both) => both,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete; no tunnel");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut instance = TokioIo::new(instance);
            match tokio::io::copy_bidirectional(&mut client, &mut instance).await {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(e) => debug!(error = %e, "tunnel ended with an error"),
            }
        }
        .instrument(span),
    );
}
