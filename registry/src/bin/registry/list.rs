//! `registry list [SERVICE]`: the instances registered now, from one bounded
//! read of etcd, as an aligned table or a JSON array. Entries that do not
//! decode are skipped with a warning that names the key.

use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, ValueEnum};
use registry::EtcdArgs;
use registry::model::{Instance, RegistryValue};
use tracing::warn;

use crate::exit::{Failure, OK, Outcome};
use crate::{etcd, out};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only instances of this service.
    #[arg(value_parser = crate::service_name)]
    pub service: Option<String>,

    /// Output format.
    #[arg(long, short, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns: SERVICE ID ADDR STATE VERSION WEIGHT AGE.
    Table,
    /// A JSON array of instances, as stored in etcd.
    Json,
}

pub async fn run(args: ListArgs, etcd_args: EtcdArgs) -> Outcome {
    let keys = &etcd_args.prefix;
    let prefix = match &args.service {
        Some(service) => keys.service_instances(service),
        None => keys.instances(),
    };
    let mut client = etcd::connect(&etcd_args).await?;
    let response = etcd::get_prefix(&mut client, &etcd_args, &prefix).await?;

    let mut instances = Vec::with_capacity(response.kvs().len());
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        match Instance::decode(keys, &key, kv.value()) {
            Ok(instance) => instances.push(instance),
            Err(e) => warn!(key = %key, error = %e, "skipping malformed registry entry"),
        }
    }

    let lines = match args.output {
        ListFormat::Table => {
            if instances.is_empty() {
                eprintln!("no instances under {prefix}");
            }
            table(&instances, Utc::now())
        }
        ListFormat::Json => vec![
            serde_json::to_string_pretty(&instances)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot encode instances: {e}")))?,
        ],
    };
    match out::write_lines(lines) {
        Ok(()) => Ok(OK),
        Err(e) if out::reader_gone(&e) => Ok(OK),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("cannot write to stdout"),
        )),
    }
}

/// Header and one row per instance, columns padded to their widest cell.
fn table(instances: &[Instance], now: DateTime<Utc>) -> Vec<String> {
    let rows: Vec<[String; 7]> = instances
        .iter()
        .map(|i| {
            [
                i.service.clone(),
                i.id.clone(),
                i.addr.clone(),
                i.state.to_string(),
                if i.version.is_empty() {
                    "-".to_owned()
                } else {
                    i.version.clone()
                },
                i.weight.to_string(),
                format_age(now - i.started_at),
            ]
        })
        .collect();
    out::table(
        ["SERVICE", "ID", "ADDR", "STATE", "VERSION", "WEIGHT", "AGE"],
        &rows,
    )
}

/// `12s`, `3m`, `5h`, `2d`: the largest whole unit, like `kubectl get`.
/// A start time in the future (clock skew) shows as `0s`.
fn format_age(age: TimeDelta) -> String {
    let secs = age.num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::InstanceState;

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let cases = [
            (0, "0s"),
            (12, "12s"),
            (59, "59s"),
            (60, "1m"),
            (3 * 60 + 59, "3m"),
            (3_600, "1h"),
            (86_399, "23h"),
            (2 * 86_400 + 5, "2d"),
            (-30, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_age(TimeDelta::seconds(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn table_columns_are_aligned() {
        let now = Utc::now();
        let mut a = Instance::new("app", "127.0.0.1:8081");
        a.id = "a1".into();
        a.version = String::new();
        a.started_at = now - TimeDelta::seconds(12);
        let mut b = Instance::new("checkout", "10.0.0.12:18080");
        b.id = "b-long-id".into();
        b.state = InstanceState::Ready;
        b.version = "v2".into();
        b.weight = 10;
        b.started_at = now - TimeDelta::seconds(190);
        let lines = table(&[a, b], now);
        assert_eq!(
            lines,
            [
                "SERVICE   ID         ADDR             STATE     VERSION  WEIGHT  AGE",
                "app       a1         127.0.0.1:8081   starting  -        1       12s",
                "checkout  b-long-id  10.0.0.12:18080  ready     v2       10      3m",
            ]
        );
    }

    #[test]
    fn an_empty_table_is_just_the_header() {
        assert_eq!(
            table(&[], Utc::now()),
            ["SERVICE  ID  ADDR  STATE  VERSION  WEIGHT  AGE"]
        );
    }
}
