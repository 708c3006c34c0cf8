//! Adopt mode (`adopt: true`): VMs made by another tool (prevmtable) under the pool's
//! prefix become the pool's by getting its labels, through `instances.setLabels` with the
//! label fingerprint GCE listed, so a VM whose labels changed meanwhile (another pool
//! claimed it) is refused by GCE (412) instead of being taken.
//!
//! Only a VM of the pool's own project whose name has the prefix and that carries no
//! `pm-pool` label at all is a candidate: a VM of another pool is never claimed. Until it
//! is labelled, pm touches it in no other way; the pass that finds candidates claims them
//! and decides nothing else, so the zone neither creates nor deletes on a count that is
//! about to change.

use std::collections::{BTreeMap, BTreeSet};

use pm_gce::resources::Instance;
use pm_gce::POOL_LABEL;
use pm_pool::REVISION_LABEL;
use pm_proto::PoolConfig;

use crate::decide::InFlight;

/// One `setLabels` to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The VM.
    pub name: String,
    /// Its labels with the pool's added.
    pub labels: BTreeMap<String, String>,
    /// The fingerprint of the labels GCE listed.
    pub fingerprint: String,
}

/// The extra list filter of a pool in adopt mode: every VM named with its prefix
/// (labelled or not; the prefix is lowercase letters, digits and dashes, so it is a
/// literal in the regular expression).
pub fn adopt_filter(config: &PoolConfig) -> Option<String> {
    (config.adopt && !config.prefix.is_empty()).then(|| format!("name eq '{}.*'", config.prefix))
}

/// What adopt mode does in one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The `setLabels` calls to send now.
    pub send: Vec<Claim>,
    /// Whether some VM is still being claimed (sent now or in flight): the pass then
    /// decides nothing else.
    pub pending: bool,
}

/// The claims of `pool` (at `revision`) among what the pass `listed`, each VM with its
/// project. VMs whose claim is in flight are not sent again; `refused` ones (GCE refused
/// their claim for good) are left alone.
pub fn claims(
    pool: &str,
    project: &str,
    config: &PoolConfig,
    revision: &str,
    listed: &[(String, Instance)],
    in_flight: &BTreeMap<String, InFlight>,
    refused: &BTreeSet<String>,
) -> Claims {
    let mut out = Claims::default();
    if !config.adopt || config.prefix.is_empty() {
        return out;
    }
    let candidates = listed.iter().filter(|(in_project, i)| {
        in_project == project
            && i.name.starts_with(&config.prefix)
            && !i.labels.contains_key(POOL_LABEL)
            && !refused.contains(&i.name)
    });
    for (_, instance) in candidates {
        out.pending = true;
        if in_flight.contains_key(&instance.name) {
            continue;
        }
        let mut labels = instance.labels.clone();
        labels.insert(POOL_LABEL.to_string(), pool.to_string());
        labels.insert(REVISION_LABEL.to_string(), revision.to_string());
        out.send.push(Claim {
            name: instance.name.clone(),
            labels,
            fingerprint: instance.label_fingerprint.clone().unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, labels: &[(&str, &str)]) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "status": "RUNNING",
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "labelFingerprint": format!("fp-{name}"),
        }))
        .expect("instance")
    }

    fn config(adopt: bool) -> PoolConfig {
        PoolConfig {
            prefix: "web-".into(),
            adopt,
            ..Default::default()
        }
    }

    #[test]
    fn only_unlabelled_prefixed_vms_of_the_project_are_claimed() {
        let listed = vec![
            ("p".to_string(), vm("web-1", &[("team", "a")])),
            ("p".to_string(), vm("web-2", &[("pm-pool", "web")])),
            ("p".to_string(), vm("web-3", &[("pm-pool", "other")])),
            ("p".to_string(), vm("db-1", &[])),
            ("q".to_string(), vm("web-4", &[])),
        ];
        let none = BTreeMap::new();
        let got = claims(
            "web",
            "p",
            &config(true),
            "r1",
            &listed,
            &none,
            &BTreeSet::new(),
        );
        assert!(got.pending);
        assert_eq!(got.send.len(), 1, "{got:?}");
        let claim = &got.send[0];
        assert_eq!(claim.name, "web-1");
        assert_eq!(claim.fingerprint, "fp-web-1");
        let want: BTreeMap<String, String> = [("team", "a"), ("pm-pool", "web"), ("pm-rev", "r1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(claim.labels, want);
        let off = claims(
            "web",
            "p",
            &config(false),
            "r1",
            &listed,
            &none,
            &BTreeSet::new(),
        );
        assert_eq!(off, Claims::default(), "adopt mode off claims nothing");
    }

    #[test]
    fn claims_in_flight_wait_and_refused_ones_are_left_alone() {
        let listed = vec![
            ("p".to_string(), vm("web-1", &[])),
            ("p".to_string(), vm("web-2", &[])),
        ];
        let flying = BTreeMap::from([("web-1".to_string(), InFlight::Labelling)]);
        let refused = BTreeSet::from(["web-2".to_string()]);
        let got = claims("web", "p", &config(true), "r1", &listed, &flying, &refused);
        assert_eq!(
            got,
            Claims {
                send: vec![],
                pending: true
            }
        );
        let all_refused = BTreeSet::from(["web-1".to_string(), "web-2".to_string()]);
        let got = claims(
            "web",
            "p",
            &config(true),
            "r1",
            &listed,
            &BTreeMap::new(),
            &all_refused,
        );
        assert_eq!(
            got,
            Claims::default(),
            "refused VMs do not hold the pool back"
        );
        assert_eq!(
            adopt_filter(&config(true)).as_deref(),
            Some("name eq 'web-.*'")
        );
        assert_eq!(adopt_filter(&config(false)), None);
    }
}
