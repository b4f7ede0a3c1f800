//! `registry watch [SERVICE]`: follow the registered instances with the
//! library's [`Watcher`], printing one line per change until SIGINT/SIGTERM.
//! A stderr note marks the moments etcd becomes unreachable and reachable again.

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use registry::config::ETCD_CALL_TIMEOUT;
use registry::{EtcdArgs, Instance, Key, Keys, Store, Update, Watcher};
use serde::Serialize;
use tracing::{info, warn};

use crate::exit::{Failure, OK, Outcome};
use crate::{etcd, out};
use registry::stop::StopSignals;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only instances of this service.
    #[arg(value_parser = crate::service_name)]
    pub service: Option<String>,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = WatchFormat::Text)]
    pub output: WatchFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchFormat {
    /// `reset <n> instance(s)` (then one indented line each), `put ...`, `delete ...`.
    Text,
    /// One JSON object per line with a `type` of reset, put or delete.
    Json,
}

pub async fn run(args: WatchArgs, etcd_args: EtcdArgs) -> Outcome {
    let mut signals = StopSignals::install()
        .map_err(|e| Failure::Runtime(anyhow!("cannot install signal handlers: {e}")))?;
    let keys = etcd_args.prefix.clone();
    let prefix = match &args.service {
        Some(service) => keys.service_instances(service),
        None => keys.instances(),
    };
    let mut client = etcd::connect(&etcd_args).await?;
    // Fail at once, with advice, if etcd is not there when we start; after
    // that the watcher rides out outages and we only note them.
    etcd::check(&mut client, &etcd_args).await?;
    let watcher = Watcher::<Instance>::start(&Store::etcd(client, keys.clone()), prefix);
    if !watcher.wait_synced(ETCD_CALL_TIMEOUT).await {
        return Err(etcd::unreachable(
            &etcd_args,
            format!("the first list did not succeed within {ETCD_CALL_TIMEOUT:?}"),
        ));
    }
    // Subscribed after the first list, so the first update is the real set.
    let mut updates = watcher.subscribe();
    let mut snapshots = watcher.snapshots();
    let mut connected = snapshots.borrow_and_update().connected;

    loop {
        tokio::select! {
            signal = signals.recv() => {
                info!(signal, "stopping");
                return Ok(OK);
            }
            update = updates.next() => {
                let Some(update) = update else {
                    return Err(Failure::Runtime(anyhow!("the registry watcher stopped")));
                };
                let lines = match args.output {
                    WatchFormat::Text => text_lines(&keys, &update),
                    WatchFormat::Json => vec![json_line(&keys, &update)],
                };
                match out::write_lines(lines) {
                    Ok(()) => {}
                    Err(e) if out::reader_gone(&e) => return Ok(OK),
                    Err(e) => return Err(Failure::Runtime(anyhow::Error::new(e).context("cannot write to stdout"))),
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Err(Failure::Runtime(anyhow!("the registry watcher stopped")));
                }
                let now = snapshots.borrow_and_update().connected;
                if now != connected {
                    connected = now;
                    if now {
                        info!(etcd = %etcd_args.endpoints.join(","), "etcd reachable again; a reset follows");
                    } else {
                        warn!(etcd = %etcd_args.endpoints.join(","), "etcd unreachable; still watching, changes resume when it is back");
                    }
                }
            }
        }
    }
}

/// `service/id` of an instance key, or the key itself if it is not one.
fn instance_name(keys: &Keys, key: &str) -> String {
    match keys.parse(key) {
        Ok(Key::Instance { service, id }) => format!("{service}/{id}"),
        _ => key.to_owned(),
    }
}

fn describe(instance: &Instance) -> String {
    format!(
        "{}/{} {} {}",
        instance.service, instance.id, instance.addr, instance.state
    )
}

fn text_lines(keys: &Keys, update: &Update<Instance>) -> Vec<String> {
    match update {
        Update::Reset(all) => std::iter::once(format!("reset {} instance(s)", all.len()))
            .chain(all.values().map(|i| format!("  {}", describe(i))))
            .collect(),
        Update::Put(_, instance) => vec![format!("put {}", describe(instance))],
        Update::Delete(key) => vec![format!("delete {}", instance_name(keys, key))],
    }
}

/// One line of `--output json`; `type` comes first so lines read well in a terminal.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JsonLine<'a> {
    Reset {
        instances: Vec<&'a Instance>,
    },
    Put {
        instance: &'a Instance,
    },
    Delete {
        service: &'a str,
        id: &'a str,
    },
    /// A delete of a key that is not an instance key (the watcher only
    /// reports keys it decoded, so this is a fallback that should not happen).
    #[serde(rename = "delete")]
    DeleteKey {
        key: &'a str,
    },
}

fn json_line(keys: &Keys, update: &Update<Instance>) -> String {
    let parsed;
    let line = match update {
        Update::Reset(all) => JsonLine::Reset {
            instances: all.values().collect(),
        },
        Update::Put(_, instance) => JsonLine::Put { instance },
        Update::Delete(key) => {
            parsed = keys.parse(key);
            match &parsed {
                Ok(Key::Instance { service, id }) => JsonLine::Delete { service, id },
                _ => JsonLine::DeleteKey { key },
            }
        }
    };
    serde_json::to_string(&line).expect("instances and strings serialize")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use registry::InstanceState;

    fn instance(service: &str, id: &str, port: u16) -> Instance {
        let mut i = Instance::new(service, format!("127.0.0.1:{port}"));
        i.id = id.into();
        i
    }

    #[test]
    fn text_lines_per_update() {
        let keys = Keys::default();
        let a = instance("app", "a1", 8081);
        let mut b = instance("app", "b2", 8082);
        b.state = InstanceState::Ready;
        let all = BTreeMap::from([
            ("/shoal/instances/app/a1".to_owned(), a.clone()),
            ("/shoal/instances/app/b2".to_owned(), b),
        ]);
        assert_eq!(
            text_lines(&keys, &Update::Reset(Arc::new(all))),
            [
                "reset 2 instance(s)",
                "  app/a1 127.0.0.1:8081 starting",
                "  app/b2 127.0.0.1:8082 ready"
            ]
        );
        assert_eq!(
            text_lines(&keys, &Update::Put("/shoal/instances/app/a1".into(), a)),
            ["put app/a1 127.0.0.1:8081 starting"]
        );
        assert_eq!(
            text_lines(&keys, &Update::Delete("/shoal/instances/app/a1".into())),
            ["delete app/a1"]
        );
    }

    #[test]
    fn json_lines_per_update() {
        let keys = Keys::default();
        let a = instance("app", "a1", 8081);
        let reset: serde_json::Value = serde_json::from_str(&json_line(
            &keys,
            &Update::Reset(Arc::new(BTreeMap::from([(
                "/shoal/instances/app/a1".to_owned(),
                a.clone(),
            )]))),
        ))
        .unwrap();
        assert_eq!(reset["type"], "reset");
        assert_eq!(reset["instances"][0]["id"], "a1");
        let put: serde_json::Value = serde_json::from_str(&json_line(
            &keys,
            &Update::Put("/shoal/instances/app/a1".into(), a),
        ))
        .unwrap();
        assert_eq!(put["type"], "put");
        assert_eq!(put["instance"]["addr"], "127.0.0.1:8081");
        assert_eq!(
            json_line(&keys, &Update::Delete("/shoal/instances/app/a1".into())),
            r#"{"type":"delete","service":"app","id":"a1"}"#
        );
    }
}
