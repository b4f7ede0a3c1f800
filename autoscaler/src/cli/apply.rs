//! `autoscaler apply -f FILE [--dry-run] [--prune]`: services, policies and
//! routes from a YAML (or JSON) file ([`Manifest`]), checked whole, printed
//! as a diff against the registry, then written in one etcd transaction.
//!
//! Every problem in the file is reported at once as `FILE:LINE: path:
//! problem`, and nothing is written while there is one. `--dry-run` prints
//! the diff only; `--prune` also deletes the services, policies and routes
//! the file does not list. A service whose spec changes is rolled onto the
//! new version by the leading controller.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use registry::EtcdArgs;
use registry::StoreError;
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};
use registry::manifest::{Manifest, ManifestError};

use super::Outcome;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// `--etcd`, `--prefix`, ...: parsed at the top level and filled in by `main`.
    #[arg(skip)]
    pub etcd: EtcdArgs,
    /// The file: YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Print what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the services, policies and routes the file does not list.
    #[arg(long)]
    pub prune: bool,
}

pub async fn run(args: ApplyArgs) -> Outcome {
    let name = args.file.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.file)
    }
    .map_err(|e| Failure::Usage(anyhow!("cannot read {name}: {e}")))?;
    let manifest =
        parse(&name, &text).map_err(|lines| Failure::Usage(anyhow!("{}", lines.join("\n"))))?;

    let store = etcd::store(&args.etcd).await?;
    let failure = |e| etcd::store_failure(&args.etcd, e);
    let plan = store
        .plan_apply(&manifest, args.prune)
        .await
        .map_err(failure)?;
    let mut lines: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
    if !plan.changes_anything() {
        lines.push(format!("{name}: no changes"));
    } else if args.dry_run {
        lines.push(format!("{name}: dry run, nothing written"));
    } else {
        store.apply(&plan).await.map_err(|e| match e {
            StoreError::Conflict { .. } => Failure::Runtime(anyhow!(
                "the registry changed while {name} was being applied; nothing was written, run the command again"
            )),
            other => failure(other),
        })?;
        let changed = plan
            .changes
            .iter()
            .filter(|c| c.action != registry::store::Action::Unchanged)
            .count();
        lines.push(format!(
            "{name}: applied {changed} change(s) in one transaction"
        ));
    }
    out::finish(lines)?;
    Ok(OK)
}

/// Parse and check `text`; the errors as `FILE:LINE: path: problem` lines.
pub fn parse(name: &str, text: &str) -> Result<Manifest, Vec<String>> {
    let value: serde_json::Value = yaml_serde::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        vec![format!("{name}:{at}: {e}")]
    })?;
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    Manifest::from_value(value).map_err(|errors| {
        let mut located: Vec<(Option<usize>, &ManifestError)> =
            errors.iter().map(|e| (locate(text, &e.path), e)).collect();
        // In the file's order; problems without a line last.
        located.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
        located
            .into_iter()
            .map(|(line, e)| match line {
                Some(line) => format!("{name}:{line}: {e}"),
                None => format!("{name}: {e}"),
            })
            .collect()
    })
}

/// The line (1-based) of the deepest part of `path` (`services.web.process`)
/// found as a block key in `text`; `None` if not even the first is.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let mut start = 0;
    let mut parent_indent: Option<usize> = None;
    for segment in path.split('.') {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            let key = trimmed.trim_start_matches("- ");
            if [
                format!("{segment}:"),
                format!("\"{segment}\":"),
                format!("'{segment}':"),
            ]
            .iter()
            .any(|k| key.starts_with(k.as_str()))
            {
                hit = Some((i, indent));
                break;
            }
        }
        let Some((i, indent)) = hit else { break };
        found = Some(i + 1);
        start = i + 1;
        parent_indent = Some(indent);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# two services
services:
  web:
    process:
      argv: []
      port_env: PORT
policies:
  web: {min: 1, max: 0, metric: inflight, target: 4}
routes:
  web:
    service: web
    path_prefix: /node/
";

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let errors = parse("shoal.yaml", FILE).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("shoal.yaml:5: services.web.process.argv:"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("shoal.yaml:8: policies.web"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_yaml_syntax_error_has_its_position() {
        let errors = parse("bad.yaml", "services:\n  web: [\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("bad.yaml:"), "{errors:?}");
        assert!(
            errors[0].split(':').nth(1).unwrap().parse::<u32>().is_ok(),
            "{errors:?}"
        );
    }

    #[test]
    fn locate_follows_the_indentation() {
        assert_eq!(locate(FILE, "services"), Some(2));
        assert_eq!(locate(FILE, "services.web.process.port_env"), Some(6));
        assert_eq!(locate(FILE, "routes.web.path_prefix"), Some(12));
        // `web` under policies, not the one under services.
        assert_eq!(locate(FILE, "policies.web.max"), Some(8));
        assert_eq!(locate(FILE, "nothing.here"), None);
    }

    #[test]
    fn an_empty_file_is_an_empty_manifest() {
        assert!(parse("empty.yaml", "").unwrap().is_empty());
        assert!(parse("empty.yaml", "# nothing\n").unwrap().is_empty());
    }
}
