//! Data directories that outlive instances (`data_dir: true` in a service's
//! spec) for the process driver: `{root}/{service}/{n}`, each claimed by one
//! instance at a time through `{root}/{service}/{n}.owner`, which holds the
//! instance's id. A directory whose owner is not a live instance is free,
//! and a new instance of the service takes the lowest free one: the
//! replacement of a crashed instance gets the crashed one's directory and
//! what it held. (An instance that drained and handed its data off leaves
//! its directory empty, so a later instance starts clean from it.)
//!
//! The owner files are what a controller that takes over on the same
//! machine finds, so it hands out the same directories.

use std::io;
use std::path::{Path, PathBuf};

const OWNER_SUFFIX: &str = ".owner";

/// The data directories of one driver.
#[derive(Debug, Clone)]
pub struct DataSlots {
    root: PathBuf,
}

impl DataSlots {
    pub fn new(root: PathBuf) -> Self {
        DataSlots { root }
    }

    /// Claim a directory for instance `id` of `service`: the lowest one
    /// whose owner is not `live`, created if there is none. The caller must
    /// not let two claims for one service run at once.
    pub fn claim(
        &self,
        service: &str,
        id: &str,
        live: impl Fn(&str) -> bool,
    ) -> io::Result<PathBuf> {
        let dir = self.root.join(service);
        std::fs::create_dir_all(&dir)?;
        let mut slot = 0u32;
        loop {
            let owner_file = owner_file(&dir, slot);
            let free = match std::fs::read_to_string(&owner_file) {
                Ok(owner) => !live(owner.trim()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => return Err(e),
            };
            if free {
                let data = dir.join(slot.to_string());
                std::fs::create_dir_all(&data)?;
                let partial = owner_file.with_extension("owner.partial");
                std::fs::write(&partial, id)?;
                std::fs::rename(&partial, &owner_file)?;
                return Ok(data);
            }
            slot += 1;
        }
    }
}

fn owner_file(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("{slot}{OWNER_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_replacement_gets_the_directory_of_the_instance_that_died() {
        let root = tempfile::tempdir().unwrap();
        let slots = DataSlots::new(root.path().to_owned());
        let mut live: HashSet<String> = HashSet::new();
        let claim = |id: &str, live: &mut HashSet<String>| {
            let dir = slots.claim("kv", id, |owner| live.contains(owner)).unwrap();
            live.insert(id.to_owned());
            dir
        };
        let a = claim("a", &mut live);
        let b = claim("b", &mut live);
        let c = claim("c", &mut live);
        assert_eq!(a, root.path().join("kv/0"));
        assert_eq!(b, root.path().join("kv/1"));
        assert_eq!(c, root.path().join("kv/2"));
        std::fs::write(b.join("data"), "b's").unwrap();
        // b dies: its replacement gets b's directory, with b's data.
        live.remove("b");
        let d = claim("d", &mut live);
        assert_eq!(d, b);
        assert_eq!(std::fs::read_to_string(d.join("data")).unwrap(), "b's");
        // All live: a new one gets a new directory. Another service has its own.
        assert_eq!(claim("e", &mut live), root.path().join("kv/3"));
        let other = slots.claim("web", "w", |_| true).unwrap();
        assert_eq!(other, root.path().join("web/0"));
    }
}
