//! `autoscaler events SERVICE [--limit N] [--follow]`: the newest scaling
//! events of a service, oldest first, one line each; with `--follow`, new
//! ones as the controller writes them (a [`Watcher`] on the service's event
//! prefix) until SIGINT/SIGTERM.
//!
//! Event keys are zero-padded sequence numbers, so key order is event order:
//! following prints every event whose key is past the last one printed, which
//! also covers the events written between the first read and the watch.

use anyhow::anyhow;
use clap::Args;
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};
use registry::config::ETCD_CALL_TIMEOUT;
use registry::model::ScalingEvent;
use registry::stop::StopSignals;
use registry::{EtcdArgs, Update, Watcher};
use tracing::info;

use super::{Outcome, OutputFormat, service_name};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// `--etcd`, `--prefix`, ...: parsed at the top level (before or after the
    /// subcommand) and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    /// The service whose events to show.
    #[arg(value_parser = service_name)]
    pub service: String,
    /// How many of the newest events to show first.
    #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Keep printing new events until SIGINT/SIGTERM.
    #[arg(long, short)]
    pub follow: bool,
    /// Output format: `table` is one line per event, `json` one JSON object per line.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

pub async fn run(args: EventsArgs) -> Outcome {
    let etcd_args = &args.etcd;
    let keys = etcd_args.prefix.clone();
    let prefix = keys.service_events(&args.service);
    // Installed first, so a signal during the first read is not the default (death).
    let mut signals = if args.follow {
        Some(
            StopSignals::install()
                .map_err(|e| Failure::Runtime(anyhow!("cannot install signal handlers: {e}")))?,
        )
    } else {
        None
    };
    let store = etcd::store(etcd_args).await?;
    let mut events = store
        .events(&args.service, args.limit)
        .await
        .map_err(|e| etcd::store_failure(etcd_args, e))?;
    events.reverse();
    if events.is_empty() && !args.follow {
        eprintln!("no events under {prefix}");
    }
    let mut last_key = events.last().map(|(k, _)| k.clone());
    out::finish(lines(args.output, events.iter().map(|(_, e)| e))?)?;

    let Some(signals) = signals.as_mut() else {
        return Ok(OK);
    };
    let watcher = Watcher::<ScalingEvent>::start(&store, prefix);
    if !watcher.wait_synced(ETCD_CALL_TIMEOUT).await {
        return Err(etcd::unreachable(
            etcd_args,
            format!("the first list did not succeed within {ETCD_CALL_TIMEOUT:?}"),
        ));
    }
    let mut updates = watcher.subscribe();
    loop {
        tokio::select! {
            signal = signals.recv() => {
                info!(signal, "stopping");
                return Ok(OK);
            }
            update = updates.next() => {
                let Some(update) = update else {
                    return Err(Failure::Runtime(anyhow!("the event watcher stopped")));
                };
                let new = past(&mut last_key, update);
                out::finish(lines(args.output, new.iter())?)?;
            }
        }
    }
}

/// The events of `update` whose key comes after `last_key`, in key order;
/// `last_key` moves to the newest of them. Deletions (history trimming) are
/// not news.
pub fn past(last_key: &mut Option<String>, update: Update<ScalingEvent>) -> Vec<ScalingEvent> {
    let candidates: Vec<(String, ScalingEvent)> = match update {
        Update::Reset(all) => all.iter().map(|(k, e)| (k.clone(), e.clone())).collect(),
        Update::Put(key, event) => vec![(key, event)],
        Update::Delete(_) => Vec::new(),
    };
    let mut new = Vec::new();
    for (key, event) in candidates {
        if last_key.as_ref().is_none_or(|last| key > *last) {
            *last_key = Some(key);
            new.push(event);
        }
    }
    new
}

fn lines<'a>(
    format: OutputFormat,
    events: impl Iterator<Item = &'a ScalingEvent>,
) -> Result<Vec<String>, Failure> {
    events
        .map(|e| match format {
            OutputFormat::Table => Ok(line(e)),
            OutputFormat::Json => serde_json::to_string(e)
                .map_err(|err| Failure::Runtime(anyhow!("cannot encode an event: {err}"))),
        })
        .collect()
}

/// `TIME  KIND  CURRENT → DESIRED  REASON  bounded by RULE`.
pub fn line(event: &ScalingEvent) -> String {
    let mut line = format!(
        "{}  {}  {} → {}  {}",
        event.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.kind,
        event.current,
        event.desired,
        event.reason,
    );
    if let Some(rule) = &event.bounded_by {
        line.push_str(&format!("  (bounded by {rule})"));
    }
    if let Some(instance) = &event.instance {
        line.push_str(&format!("  [instance {instance}]"));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;

    fn event(desired: u32, bounded_by: Option<&str>) -> ScalingEvent {
        ScalingEvent {
            service: "app".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 22, 6, 30, 5).unwrap(),
            kind: "decision".into(),
            current: 1,
            desired,
            reason: "in-flight 9.1 per instance over target 4".into(),
            bounded_by: bounded_by.map(str::to_owned),
            inputs: BTreeMap::new(),
            instance: None,
        }
    }

    #[test]
    fn one_line_per_event() {
        assert_eq!(
            line(&event(3, None)),
            "2026-11-22T06:30:05.000Z  decision  1 → 3  in-flight 9.1 per instance over target 4"
        );
        let mut retire = event(4, Some("max"));
        retire.kind = "retire".into();
        retire.instance = Some("i-1".into());
        assert_eq!(
            line(&retire),
            "2026-11-22T06:30:05.000Z  retire  1 → 4  in-flight 9.1 per instance over target 4  (bounded by max)  [instance i-1]"
        );
    }

    #[test]
    fn following_prints_only_what_comes_after_the_last_printed_key() {
        let keys = registry::Keys::default();
        let mut last = Some(keys.event("app", 2));
        let all: BTreeMap<String, ScalingEvent> = (1..=4)
            .map(|seq| (keys.event("app", seq), event(seq as u32, None)))
            .collect();
        let new = past(&mut last, Update::Reset(Arc::new(all)));
        assert_eq!(new.iter().map(|e| e.desired).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(last, Some(keys.event("app", 4)));
        assert!(past(&mut last, Update::Put(keys.event("app", 4), event(4, None))).is_empty());
        assert!(past(&mut last, Update::Delete(keys.event("app", 1))).is_empty());
        let new = past(
            &mut last,
            Update::Put(keys.event("app", 10), event(10, None)),
        );
        assert_eq!(new.len(), 1);

        let mut none = None;
        let new = past(&mut none, Update::Put(keys.event("app", 1), event(1, None)));
        assert_eq!(new.len(), 1);
    }
}
