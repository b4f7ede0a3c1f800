//! Keeps a client of several etcd endpoints off the members that do not
//! answer.
//!
//! etcd-client balances calls over its endpoints by power of two choices on
//! pending requests, and a member that is cut off (packets dropped, not
//! refused) keeps its HTTP/2 connection until a keep-alive ping goes
//! unanswered (10 s + 5 s). Calls sent there hang until their deadline, and
//! since a long-lived stream (a watch, a keep-alive) on a healthy member
//! counts as pending, the member that hangs every call looks the least
//! loaded and is picked again and again. So every client built with more
//! than one endpoint gets a task that asks each member for its status every
//! [`PERIOD`] on a client of its own, and takes a member that does not
//! answer within [`CHECK_TIMEOUT`], or answers without a leader, out of the
//! shared client's balance (`remove_endpoint`), putting it back once it
//! answers with a leader. When no member passes (quorum lost, everything
//! down) the set is left as it is: there is nowhere better to send calls.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tracing::{info, warn};

/// How often every member is asked.
pub const PERIOD: Duration = Duration::from_millis(500);
/// How long a member may take to say its status.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// Start the task for `client`, built from `endpoints` with `options`;
/// nothing for a single endpoint. It runs as long as the runtime does.
pub fn guard(client: &Client, endpoints: &[String], options: &ConnectOptions) {
    if endpoints.len() < 2 {
        return;
    }
    let members = endpoints
        .iter()
        .map(|e| (e.clone(), options.clone(), None))
        .collect();
    tokio::spawn(watch_members(client.clone(), members));
}

/// One member: its endpoint, the options to reach it, and its own client
/// once one could be built.
type Member = (String, ConnectOptions, Option<Client>);

async fn watch_members(client: Client, mut members: Vec<Member>) {
    let mut removed: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(PERIOD).await;
        let checks = members
            .iter_mut()
            .map(|(endpoint, options, own)| async move {
                (endpoint.clone(), answers(endpoint, options, own).await)
            });
        let results = futures::future::join_all(checks).await;
        if results.iter().all(|(_, ok)| !ok) {
            continue;
        }
        for (endpoint, ok) in results {
            if !ok && !removed.contains(&endpoint) {
                match client.remove_endpoint(&endpoint).await {
                    Ok(()) => {
                        warn!(%endpoint, "etcd member does not answer with a leader; calls go to the others");
                        removed.insert(endpoint);
                    }
                    Err(e) => {
                        warn!(%endpoint, error = %e, "cannot take an etcd member out of the balance")
                    }
                }
            } else if ok && removed.contains(&endpoint) {
                match client.add_endpoint(&endpoint).await {
                    Ok(()) => {
                        info!(%endpoint, "etcd member answers again; back in the balance");
                        removed.remove(&endpoint);
                    }
                    Err(e) => {
                        warn!(%endpoint, error = %e, "cannot put an etcd member back in the balance")
                    }
                }
            }
        }
    }
}

/// Whether the member at `endpoint` says within [`CHECK_TIMEOUT`] that it
/// has a leader; its client is built on first use (lazily, or, with a user,
/// by authenticating, which fails while it is down).
async fn answers(endpoint: &str, options: &ConnectOptions, own: &mut Option<Client>) -> bool {
    if own.is_none() {
        let connect = Client::connect([endpoint], Some(options.clone()));
        match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
            Ok(Ok(member)) => *own = Some(member),
            _ => return false,
        }
    }
    let Some(member) = own.as_mut() else {
        return false;
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, member.status()).await,
        Ok(Ok(status)) if status.leader() != 0
    )
}
