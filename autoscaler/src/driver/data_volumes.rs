//! Data that outlives instances (`data_dir: true` in a service's spec) for
//! the `docker` driver: one named Docker volume per slot,
//! `{name prefix}-{registry prefix}-{service}-data-{n}`, mounted at
//! [`DATA_MOUNT`] with `SHOAL_DATA_DIR` naming it, as the process driver's
//! directories are (`data_slots.rs`). A slot belongs to the live container
//! labelled with it ([`LABEL_DATA_SLOT`]); a new instance takes the lowest
//! slot no live container of its service holds, so the replacement of a
//! crashed instance gets the crashed one's volume and what it held. The
//! labels are what a controller that takes over finds, so it hands out the
//! same volumes.
//!
//! Docker fills a new, empty volume from the image's directory at the mount
//! point, ownership and mode included: Shoal's images have
//! `/var/lib/shoal/data` owned by their user (10001); another image must
//! have the directory writable by the user it runs as. Volumes are never
//! removed by Shoal (`docker volume rm` them once a service is gone).

use std::collections::{BTreeSet, HashMap};

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, VolumeCreateRequest};

use super::containers::{
    DockerConfig, LABEL_MANAGED, LABEL_PREFIX, LABEL_SERVICE, dns_safe, is_registrar,
};

/// Where an instance's volume is mounted; its `SHOAL_DATA_DIR`.
pub const DATA_MOUNT: &str = "/var/lib/shoal/data";
/// The slot of the volume an instance's program container has mounted.
pub const LABEL_DATA_SLOT: &str = "shoal.data-slot";

/// A volume claimed for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataVolume {
    pub slot: u32,
    pub name: String,
}

/// The name of `service`'s volume `slot` for a controller with `config`.
pub fn volume_name(config: &DockerConfig, service: &str, slot: u32) -> String {
    format!(
        "{}-{}-{}-data-{slot}",
        dns_safe(&config.name_prefix),
        dns_safe(&config.prefix),
        dns_safe(service)
    )
}

/// The lowest slot not in `held`.
fn lowest_free(held: &BTreeSet<u32>) -> u32 {
    (0..).find(|slot| !held.contains(slot)).unwrap_or(0)
}

/// The slots `service`'s live program containers hold, of `containers`
/// (this controller's).
fn held_slots(containers: &[ContainerSummary], service: &str) -> BTreeSet<u32> {
    containers
        .iter()
        .filter(|c| !is_registrar(c))
        .filter(|c| {
            matches!(
                c.state,
                Some(
                    ContainerSummaryStateEnum::CREATED
                        | ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::PAUSED
                )
            )
        })
        .filter_map(|c| {
            let labels = c.labels.as_ref()?;
            (labels.get(LABEL_SERVICE)? == service)
                .then(|| labels.get(LABEL_DATA_SLOT)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Claim a volume for a new instance of `service`, given this controller's
/// `containers`: the lowest free slot, its volume created if it does not
/// exist (with the containers' labels and its slot's). The caller must not let two claims for
/// one service run at once, and must create the container with the slot's
/// label before the next.
pub async fn claim(
    docker: &Docker,
    config: &DockerConfig,
    service: &str,
    containers: &[ContainerSummary],
) -> Result<DataVolume, String> {
    let slot = lowest_free(&held_slots(containers, service));
    let name = volume_name(config, service, slot);
    let mut labels: HashMap<String, String> = config.labels.iter().cloned().collect();
    labels.extend([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_PREFIX.to_owned(), config.prefix.clone()),
        (LABEL_SERVICE.to_owned(), service.to_owned()),
        (LABEL_DATA_SLOT.to_owned(), slot.to_string()),
    ]);
    // Creating a volume that exists returns it, data and all.
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create data volume {name}: {e}"))?;
    Ok(DataVolume { slot, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(service: &str, slot: &str, state: ContainerSummaryStateEnum) -> ContainerSummary {
        ContainerSummary {
            labels: Some(HashMap::from([
                (LABEL_SERVICE.to_owned(), service.to_owned()),
                (LABEL_DATA_SLOT.to_owned(), slot.to_owned()),
            ])),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_instance_takes_the_lowest_slot_no_live_container_of_its_service_holds() {
        use ContainerSummaryStateEnum::{EXITED, RUNNING};
        let containers = [
            container("kv", "0", RUNNING),
            // Crashed: its volume is free for the replacement.
            container("kv", "1", EXITED),
            container("kv", "2", RUNNING),
            // Another service's slot 1 is not kv's.
            container("web", "1", RUNNING),
        ];
        let held = held_slots(&containers, "kv");
        assert_eq!(held, BTreeSet::from([0, 2]));
        assert_eq!(lowest_free(&held), 1);
        assert_eq!(lowest_free(&held_slots(&containers, "web")), 0);
        assert_eq!(lowest_free(&BTreeSet::new()), 0);
    }

    #[test]
    fn volume_names_are_per_controller_prefix_and_service() {
        let config = DockerConfig {
            name_prefix: "shoal".into(),
            prefix: "/shoal-test/ab12".into(),
            ..DockerConfig::default()
        };
        assert_eq!(
            volume_name(&config, "My_KV", 3),
            "shoal-shoal-test-ab12-my-kv-data-3"
        );
    }
}
