//! `registry route set|get|delete`: the gateway routes at
//! `{prefix}/routes/{name}`, written through the registry store (as
//! `autoscaler policy` writes policies), for set-ups without the gateway's admin token or
//! `etcdctl`: `scripts/up` and the compose one-shot use it. `set` takes the
//! route as the same JSON the admin API takes and refuses one that does not
//! validate (exit 2) before writing it; gateways pick it up within
//! milliseconds.

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use registry::EtcdArgs;
use registry::keys::validate_segment;
use registry::model::{NamedRoute, Route};

use crate::exit::{Failure, OK, Outcome};
use crate::{etcd, out};

#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub action: RouteAction,
}

#[derive(Debug, Subcommand)]
pub enum RouteAction {
    /// Create or replace a route, and print it as JSON.
    Set(SetArgs),
    /// Print every route as a table, or one route.
    Get(GetArgs),
    /// Delete a route; its requests go to the default route again.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The route's name (the last segment of its key).
    #[arg(value_parser = route_name)]
    pub name: String,
    /// The route as JSON, e.g.
    /// '{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}'.
    #[arg(value_parser = parse_route)]
    pub route: Route,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Only this route.
    #[arg(value_parser = route_name)]
    pub name: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = RouteFormat::Table)]
    pub output: RouteFormat,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(value_parser = route_name)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouteFormat {
    /// Aligned columns: NAME HOST PREFIX SERVICE POLICY.
    Table,
    /// JSON objects `{"name": ..., "route": {...}}`.
    Json,
}

fn route_name(s: &str) -> Result<String, String> {
    validate_segment("route name", s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_route(s: &str) -> Result<Route, String> {
    let route: Route = serde_json::from_str(s).map_err(|e| {
        format!(
            "not a route: {e}; give JSON such as '{{\"path_prefix\":\"/api\",\"service\":\"app\"}}'"
        )
    })?;
    route
        .validate()
        .map_err(|e| format!("invalid route: {e}"))?;
    Ok(route)
}

pub async fn run(args: RouteArgs, etcd_args: EtcdArgs) -> Outcome {
    let keys = &etcd_args.prefix;
    let store = etcd::store(&etcd_args).await?;
    let failure = |e| etcd::store_failure(&etcd_args, e);
    let lines = match args.action {
        RouteAction::Set(set) => {
            store
                .put_route(&set.name, &set.route)
                .await
                .map_err(failure)?;
            vec![pretty(&[NamedRoute {
                name: set.name,
                route: set.route,
            }])?]
        }
        RouteAction::Get(get) => {
            let routes: Vec<NamedRoute> = store
                .routes()
                .await
                .map_err(failure)?
                .into_iter()
                .filter(|route| get.name.as_ref().is_none_or(|n| *n == route.name))
                .collect();
            if let Some(name) = &get.name
                && routes.is_empty()
            {
                return Err(Failure::Runtime(anyhow!(
                    "no route `{name}`; create one with registry route set {name} '{{\"path_prefix\":\"/api\",\"service\":\"app\"}}'"
                )));
            }
            match get.output {
                RouteFormat::Table => {
                    if routes.is_empty() {
                        eprintln!(
                            "no routes under {}; every request goes to the gateways' --default-service",
                            keys.routes()
                        );
                    }
                    table(&routes)
                }
                RouteFormat::Json if get.name.is_some() => vec![pretty(&routes)?],
                RouteFormat::Json => vec![pretty_list(&routes)?],
            }
        }
        RouteAction::Delete(delete) => {
            let deleted = store.delete_route(&delete.name).await.map_err(failure)?;
            vec![if deleted {
                format!("deleted the route {}", delete.name)
            } else {
                format!("there was no route {}; nothing deleted", delete.name)
            }]
        }
    };
    out::finish(lines)?;
    Ok(OK)
}

fn as_json(route: &NamedRoute) -> serde_json::Value {
    serde_json::json!({ "name": route.name, "route": route.route })
}

/// One route as a JSON object (the first of `routes`).
fn pretty(routes: &[NamedRoute]) -> Result<String, Failure> {
    let route = routes.first().expect("one route");
    serde_json::to_string_pretty(&as_json(route))
        .map_err(|e| Failure::Runtime(anyhow!("cannot encode the route: {e}")))
}

fn pretty_list(routes: &[NamedRoute]) -> Result<String, Failure> {
    let list: Vec<_> = routes.iter().map(as_json).collect();
    serde_json::to_string_pretty(&list)
        .map_err(|e| Failure::Runtime(anyhow!("cannot encode the routes: {e}")))
}

fn table(routes: &[NamedRoute]) -> Vec<String> {
    let rows: Vec<[String; 5]> = routes
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.route.host.clone().unwrap_or_else(|| "*".to_owned()),
                r.route.path_prefix.clone(),
                r.route.service.clone(),
                r.route.policy.to_string(),
            ]
        })
        .collect();
    out::table(["NAME", "HOST", "PREFIX", "SERVICE", "POLICY"], &rows)
}

#[cfg(test)]
mod tests {
    use registry::model::BalancePolicy;

    use super::*;

    #[test]
    fn a_route_is_checked_before_anything_is_written() {
        let ok = parse_route(r#"{"path_prefix":"/kv/","service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":0}}"#).unwrap();
        assert_eq!(ok.policy, BalancePolicy::ConsistentHash);
        let no_key = parse_route(r#"{"service":"app","policy":"consistent-hash"}"#).unwrap_err();
        assert!(no_key.contains("hash_key"), "{no_key}");
        let not_json = parse_route("app").unwrap_err();
        assert!(not_json.contains("give JSON such as"), "{not_json}");
        assert!(route_name("a/b").is_err());
    }
}
