//! Which instances to retire on a scale-down: ready ones with the fewest
//! in-flight requests (they drain soonest and disturb the fewest clients),
//! the youngest first among equals (they have the coldest caches).
//! Instances that are not ready are left alone: they may be about to serve.
//! During a rolling restart the instances it is replacing go first: retiring
//! one of them is progress for the restart too.

use std::time::Duration;

/// A counted instance, as the retire choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub ready: bool,
    /// Summed across gateways; 0 when no gateway has seen it yet.
    pub in_flight: f64,
    pub age: Duration,
}

/// Up to `n` ids to retire, best first; those `preferred` says yes to first.
pub fn pick(candidates: &[Candidate], n: usize, preferred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    ready.sort_by(|a, b| {
        preferred(&b.id)
            .cmp(&preferred(&a.id))
            .then(a.in_flight.total_cmp(&b.in_flight))
            .then(a.age.cmp(&b.age))
            .then(a.id.cmp(&b.id))
    });
    ready.into_iter().take(n).map(|c| c.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, ready: bool, in_flight: f64, age_secs: u64) -> Candidate {
        Candidate {
            id: id.into(),
            ready,
            in_flight,
            age: Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn fewest_in_flight_then_youngest_and_never_a_starting_one() {
        let all = [
            c("busy", true, 5.0, 100),
            c("idle-old", true, 0.0, 100),
            c("idle-young", true, 0.0, 10),
            c("starting", false, 0.0, 1),
            c("some", true, 1.0, 50),
        ];
        let none = |_: &str| false;
        assert_eq!(pick(&all, 1, none), ["idle-young"]);
        assert_eq!(pick(&all, 3, none), ["idle-young", "idle-old", "some"]);
        assert_eq!(
            pick(&all, 10, none).len(),
            4,
            "only ready instances are retired"
        );
        assert!(pick(&all, 0, none).is_empty());
        // A rolling restart's old instances first, however busy.
        let old = |id: &str| id == "busy" || id == "starting";
        assert_eq!(pick(&all, 2, old), ["busy", "idle-young"]);
    }
}
