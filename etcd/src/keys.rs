//! The whole keyspace of pm (DESIGN.md "etcd keyspace"), in one place.
//!
//! Every key pm reads or writes is built here, under a configurable prefix (default
//! `/pm`), and every key read back from etcd is parsed here. Names are validated before
//! they become part of a key, so a key never has an empty or slash-containing segment.

use crate::error::{Error, Result};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/pm";

/// Builds and parses the keys of one pm installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    /// `<prefix>/v1/`, always ending with one slash.
    root: String,
}

/// A key of pm's keyspace, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `pools/<pool>/config`
    PoolConfig {
        /// Pool name.
        pool: String,
    },
    /// `pools/<pool>/rollout`
    Rollout {
        /// Pool name.
        pool: String,
    },
    /// `pools/<pool>/zones/<zone>/desired`
    ZoneDesired {
        /// Pool name.
        pool: String,
        /// Zone name.
        zone: String,
    },
    /// `pools/<pool>/zones/<zone>/instances/<name>`
    Instance {
        /// Pool name.
        pool: String,
        /// Zone name.
        zone: String,
        /// GCE instance name.
        name: String,
    },
    /// `pools/<pool>/zones/<zone>/exhausted`
    Exhausted {
        /// Pool name.
        pool: String,
        /// Zone name.
        zone: String,
    },
    /// `pools/<pool>/zones/<zone>/report`
    Report {
        /// Pool name.
        pool: String,
        /// Zone name.
        zone: String,
    },
    /// `pools/<pool>/zones/<zone>/witnessed`
    Witnessed {
        /// Pool name.
        pool: String,
        /// Zone name (the zone counted, not the witness's).
        zone: String,
    },
    /// `pools/<pool>/zones/<zone>/drain/<name>`: pmctl asks to drain an instance.
    DrainRequest {
        /// Pool name.
        pool: String,
        /// Zone name.
        zone: String,
        /// GCE instance name.
        name: String,
    },
    /// `pools/<pool>/drain-slots/<slot>`: one slot of the pool's disruption budget.
    DrainSlot {
        /// Pool name.
        pool: String,
        /// The slot's number.
        slot: u32,
    },
    /// `pools/<pool>/workflows/<id>`: a pmctl drain or shed.
    Workflow {
        /// Pool name.
        pool: String,
        /// Workflow id.
        id: String,
    },
    /// `events/<pool>/<seq>` (`pools/<pool>/events/<seq>` before it moved)
    Event {
        /// Pool name.
        pool: String,
        /// Sortable sequence id of the event.
        seq: String,
    },
    /// `agents/<zone>/members/<agent-id>`
    AgentMember {
        /// Zone the agent serves.
        zone: String,
        /// Agent id.
        agent_id: String,
    },
}

impl Key {
    /// The pool the key belongs to, if any.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Key::PoolConfig { pool }
            | Key::Rollout { pool }
            | Key::ZoneDesired { pool, .. }
            | Key::Instance { pool, .. }
            | Key::Exhausted { pool, .. }
            | Key::Report { pool, .. }
            | Key::Witnessed { pool, .. }
            | Key::DrainRequest { pool, .. }
            | Key::DrainSlot { pool, .. }
            | Key::Workflow { pool, .. }
            | Key::Event { pool, .. } => Some(pool),
            Key::AgentMember { .. } => None,
        }
    }

    /// The zone the key belongs to, if any.
    pub fn zone(&self) -> Option<&str> {
        match self {
            Key::ZoneDesired { zone, .. }
            | Key::Instance { zone, .. }
            | Key::Exhausted { zone, .. }
            | Key::Report { zone, .. }
            | Key::Witnessed { zone, .. }
            | Key::DrainRequest { zone, .. }
            | Key::AgentMember { zone, .. } => Some(zone),
            Key::PoolConfig { .. }
            | Key::Rollout { .. }
            | Key::DrainSlot { .. }
            | Key::Workflow { .. }
            | Key::Event { .. } => None,
        }
    }
}

fn invalid(what: &'static str, name: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        what,
        name: name.to_string(),
        reason,
    }
}

/// Checks a lowercase DNS-label-like name: 1..=63 chars of `[a-z0-9-]` (plus `_` when
/// `underscore`), starting with a letter, not ending with `-`.
fn check_label(what: &'static str, name: &str, underscore: bool) -> Result<()> {
    let Some(first) = name.chars().next() else {
        return Err(invalid(what, name, "must not be empty"));
    };
    if name.len() > 63 {
        return Err(invalid(what, name, "must be at most 63 characters"));
    }
    if !first.is_ascii_lowercase() {
        return Err(invalid(what, name, "must start with a lowercase letter"));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (underscore && c == '_')
    };
    if !name.chars().all(allowed) {
        return Err(invalid(
            what,
            name,
            if underscore {
                "may hold only lowercase letters, digits, '-' and '_'"
            } else {
                "may hold only lowercase letters, digits and '-'"
            },
        ));
    }
    if name.ends_with('-') {
        return Err(invalid(what, name, "must not end with '-'"));
    }
    Ok(())
}

/// Validates a pool name. It becomes the value of the `pm-pool` label, so it follows GCE's
/// label rules: 1..=63 of `[a-z0-9_-]`, starting with a letter.
pub fn validate_pool(pool: &str) -> Result<()> {
    check_label("pool", pool, true)
}

/// Validates a zone name such as `us-central1-a`.
pub fn validate_zone(zone: &str) -> Result<()> {
    check_label("zone", zone, false)
}

/// Validates a GCE instance name: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn validate_instance_name(name: &str) -> Result<()> {
    check_label("instance name", name, false)
}

/// Validates an agent id or event sequence: 1..=128 of `[A-Za-z0-9._-]`.
fn validate_token(what: &'static str, token: &str) -> Result<()> {
    if token.is_empty() {
        return Err(invalid(what, token, "must not be empty"));
    }
    if token.len() > 128 {
        return Err(invalid(what, token, "must be at most 128 characters"));
    }
    if !token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            what,
            token,
            "may hold only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Validates an agent id.
pub fn validate_agent_id(agent_id: &str) -> Result<()> {
    validate_token("agent id", agent_id)
}

impl Default for Keyspace {
    fn default() -> Self {
        Self {
            root: format!("{DEFAULT_PREFIX}/v1/"),
        }
    }
}

impl Keyspace {
    /// A keyspace under `prefix`, e.g. `/pm` or `/tenants/a/pm`. The prefix must start with
    /// `/`, and must not end with `/` or hold empty segments.
    pub fn new(prefix: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Config(format!("key prefix {prefix:?} {reason}"));
        if !prefix.starts_with('/') {
            return Err(bad("must start with '/'"));
        }
        if prefix.len() > 1 && prefix.ends_with('/') {
            return Err(bad("must not end with '/'"));
        }
        if prefix.len() > 1 && prefix[1..].split('/').any(str::is_empty) {
            return Err(bad("must not hold empty segments"));
        }
        let base = prefix.trim_end_matches('/');
        Ok(Self {
            root: format!("{base}/v1/"),
        })
    }

    /// `<prefix>/v1/`: every key of this installation starts with it.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Prefix of every pool's keys: `<root>pools/`.
    pub fn pools_prefix(&self) -> String {
        format!("{}pools/", self.root)
    }

    /// Prefix of all keys of one pool: `<root>pools/<pool>/`.
    pub fn pool_prefix(&self, pool: &str) -> Result<String> {
        validate_pool(pool)?;
        Ok(format!("{}pools/{pool}/", self.root))
    }

    /// The pool's config key.
    pub fn pool_config(&self, pool: &str) -> Result<String> {
        Ok(format!("{}config", self.pool_prefix(pool)?))
    }

    /// The rollout key of a pool.
    pub fn rollout(&self, pool: &str) -> Result<String> {
        Ok(format!("{}rollout", self.pool_prefix(pool)?))
    }

    /// Prefix of the keys of one pool in one zone: `.../zones/<zone>/`.
    pub fn zone_prefix(&self, pool: &str, zone: &str) -> Result<String> {
        validate_zone(zone)?;
        Ok(format!("{}zones/{zone}/", self.pool_prefix(pool)?))
    }

    /// The desired-count key of a pool in a zone.
    pub fn zone_desired(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}desired", self.zone_prefix(pool, zone)?))
    }

    /// Prefix of the observed instances of a pool in a zone.
    pub fn instances_prefix(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}instances/", self.zone_prefix(pool, zone)?))
    }

    /// The observed-instance key of one instance.
    pub fn instance(&self, pool: &str, zone: &str, name: &str) -> Result<String> {
        validate_instance_name(name)?;
        Ok(format!("{}{name}", self.instances_prefix(pool, zone)?))
    }

    /// The exhaustion key of a pool in a zone.
    pub fn exhausted(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}exhausted", self.zone_prefix(pool, zone)?))
    }

    /// The exhaustion-report key of a pool in a zone.
    pub fn report(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}report", self.zone_prefix(pool, zone)?))
    }

    /// The key where another zone's agent answers a witness request for `zone`.
    pub fn witnessed(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}witnessed", self.zone_prefix(pool, zone)?))
    }

    /// Prefix of the drain requests of a pool in a zone.
    pub fn drain_requests_prefix(&self, pool: &str, zone: &str) -> Result<String> {
        Ok(format!("{}drain/", self.zone_prefix(pool, zone)?))
    }

    /// The drain-request key of one instance.
    pub fn drain_request(&self, pool: &str, zone: &str, name: &str) -> Result<String> {
        validate_instance_name(name)?;
        Ok(format!("{}{name}", self.drain_requests_prefix(pool, zone)?))
    }

    /// Prefix of the slots of a pool's disruption budget.
    pub fn drain_slots_prefix(&self, pool: &str) -> Result<String> {
        Ok(format!("{}drain-slots/", self.pool_prefix(pool)?))
    }

    /// One slot of a pool's disruption budget.
    pub fn drain_slot(&self, pool: &str, slot: u32) -> Result<String> {
        Ok(format!("{}{slot}", self.drain_slots_prefix(pool)?))
    }

    /// Prefix of a pool's workflows.
    pub fn workflows_prefix(&self, pool: &str) -> Result<String> {
        Ok(format!("{}workflows/", self.pool_prefix(pool)?))
    }

    /// One workflow of a pool.
    pub fn workflow(&self, pool: &str, id: &str) -> Result<String> {
        validate_token("workflow id", id)?;
        Ok(format!("{}{id}", self.workflows_prefix(pool)?))
    }

    /// What an agent of `zone` follows of `pool`, as key spans `[start, end)`: the config
    /// key, and the pool's keys of the zone.
    pub fn zone_spans(&self, pool: &str, zone: &str) -> Result<[(String, Vec<u8>); 2]> {
        let config = self.pool_config(pool)?;
        let config_end = key_range_end(config.as_bytes());
        let zone_prefix = self.zone_prefix(pool, zone)?;
        let zone_end = prefix_range_end(zone_prefix.as_bytes());
        Ok([(config, config_end), (zone_prefix, zone_end)])
    }

    /// Prefix of every pool's events: `<root>events/`, off the `pools/` prefix so that
    /// the daemons' watches never carry event traffic.
    pub fn all_events_prefix(&self) -> String {
        format!("{}events/", self.root)
    }

    /// The key of the events sink's delivery cursor.
    pub fn sink_cursor(&self) -> String {
        format!("{}sink/cursor", self.root)
    }

    /// Prefix of a pool's events.
    pub fn events_prefix(&self, pool: &str) -> Result<String> {
        validate_pool(pool)?;
        Ok(format!("{}{pool}/", self.all_events_prefix()))
    }

    /// The key of one event.
    pub fn event(&self, pool: &str, seq: &str) -> Result<String> {
        validate_token("event sequence", seq)?;
        Ok(format!("{}{seq}", self.events_prefix(pool)?))
    }

    /// The election name of the scheduler leader.
    pub fn scheduler_election(&self) -> String {
        format!("{}scheduler/election", self.root)
    }

    /// Prefix of every agent key: `<root>agents/`.
    pub fn agents_prefix(&self) -> String {
        format!("{}agents/", self.root)
    }

    /// The election name of the active agent of a zone.
    pub fn agent_election(&self, zone: &str) -> Result<String> {
        validate_zone(zone)?;
        Ok(format!("{}{zone}/election", self.agents_prefix()))
    }

    /// Prefix of the membership keys of a zone's agents.
    pub fn agent_members_prefix(&self, zone: &str) -> Result<String> {
        validate_zone(zone)?;
        Ok(format!("{}{zone}/members/", self.agents_prefix()))
    }

    /// The membership key of one agent.
    pub fn agent_member(&self, zone: &str, agent_id: &str) -> Result<String> {
        validate_agent_id(agent_id)?;
        Ok(format!("{}{agent_id}", self.agent_members_prefix(zone)?))
    }

    /// Parses a key of this keyspace. Election keys are not data keys and are rejected, as
    /// is anything outside the prefix, with an empty or invalid segment, or of unknown shape.
    pub fn parse(&self, key: &[u8]) -> Result<Key> {
        let text = std::str::from_utf8(key).map_err(|_| Error::MalformedKey {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not UTF-8".into(),
        })?;
        let malformed = |reason: &str| Error::MalformedKey {
            key: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix(&self.root)
            .ok_or_else(|| malformed(&format!("outside the prefix {}", self.root)))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let name_err = |e: Error| malformed(&e.to_string());
        let pool_zone = |pool: &str, zone: &str| -> Result<(String, String)> {
            validate_pool(pool).map_err(name_err)?;
            validate_zone(zone).map_err(name_err)?;
            Ok((pool.to_string(), zone.to_string()))
        };
        match parts.as_slice() {
            ["pools", pool, "config"] => {
                validate_pool(pool).map_err(name_err)?;
                Ok(Key::PoolConfig {
                    pool: pool.to_string(),
                })
            }
            ["pools", pool, "rollout"] => {
                validate_pool(pool).map_err(name_err)?;
                Ok(Key::Rollout {
                    pool: pool.to_string(),
                })
            }
            ["pools", pool, "zones", zone, "desired"] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                Ok(Key::ZoneDesired { pool, zone })
            }
            ["pools", pool, "zones", zone, "exhausted"] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                Ok(Key::Exhausted { pool, zone })
            }
            ["pools", pool, "zones", zone, "report"] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                Ok(Key::Report { pool, zone })
            }
            ["pools", pool, "zones", zone, "witnessed"] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                Ok(Key::Witnessed { pool, zone })
            }
            ["pools", pool, "zones", zone, "instances", name] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                validate_instance_name(name).map_err(name_err)?;
                Ok(Key::Instance {
                    pool,
                    zone,
                    name: name.to_string(),
                })
            }
            ["pools", pool, "zones", zone, "drain", name] => {
                let (pool, zone) = pool_zone(pool, zone)?;
                validate_instance_name(name).map_err(name_err)?;
                Ok(Key::DrainRequest {
                    pool,
                    zone,
                    name: name.to_string(),
                })
            }
            ["pools", pool, "drain-slots", slot] => {
                validate_pool(pool).map_err(name_err)?;
                let slot = slot
                    .parse()
                    .ok()
                    .filter(|n: &u32| n.to_string() == *slot)
                    .ok_or_else(|| malformed("the drain slot is not a number"))?;
                Ok(Key::DrainSlot {
                    pool: pool.to_string(),
                    slot,
                })
            }
            ["pools", pool, "workflows", id] => {
                validate_pool(pool).map_err(name_err)?;
                validate_token("workflow id", id).map_err(name_err)?;
                Ok(Key::Workflow {
                    pool: pool.to_string(),
                    id: id.to_string(),
                })
            }
            // Events before they moved off the pools/ prefix, until their lease ends.
            ["events", pool, seq] | ["pools", pool, "events", seq] => {
                validate_pool(pool).map_err(name_err)?;
                validate_token("event sequence", seq).map_err(name_err)?;
                Ok(Key::Event {
                    pool: pool.to_string(),
                    seq: seq.to_string(),
                })
            }
            ["agents", zone, "members", agent_id] => {
                validate_zone(zone).map_err(name_err)?;
                validate_agent_id(agent_id).map_err(name_err)?;
                Ok(Key::AgentMember {
                    zone: zone.to_string(),
                    agent_id: agent_id.to_string(),
                })
            }
            _ => Err(malformed("not a pm data key")),
        }
    }

    /// Builds the key string of a parsed key; `parse(build(k)) == k`.
    pub fn build(&self, key: &Key) -> Result<String> {
        match key {
            Key::PoolConfig { pool } => self.pool_config(pool),
            Key::Rollout { pool } => self.rollout(pool),
            Key::ZoneDesired { pool, zone } => self.zone_desired(pool, zone),
            Key::Instance { pool, zone, name } => self.instance(pool, zone, name),
            Key::Exhausted { pool, zone } => self.exhausted(pool, zone),
            Key::Report { pool, zone } => self.report(pool, zone),
            Key::Witnessed { pool, zone } => self.witnessed(pool, zone),
            Key::DrainRequest { pool, zone, name } => self.drain_request(pool, zone, name),
            Key::DrainSlot { pool, slot } => self.drain_slot(pool, *slot),
            Key::Workflow { pool, id } => self.workflow(pool, id),
            Key::Event { pool, seq } => self.event(pool, seq),
            Key::AgentMember { zone, agent_id } => self.agent_member(zone, agent_id),
        }
    }
}

/// The end of the key range holding only `key` (etcd's range_end).
pub fn key_range_end(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// The end of the key range of every key that starts with `prefix` (etcd's range_end).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Key> {
        let (p, z) = ("web".to_string(), "us-central1-a".to_string());
        vec![
            Key::PoolConfig { pool: p.clone() },
            Key::Rollout { pool: p.clone() },
            Key::ZoneDesired {
                pool: p.clone(),
                zone: z.clone(),
            },
            Key::Instance {
                pool: p.clone(),
                zone: z.clone(),
                name: "web-abc123".into(),
            },
            Key::Exhausted {
                pool: p.clone(),
                zone: z.clone(),
            },
            Key::Report {
                pool: p.clone(),
                zone: z.clone(),
            },
            Key::Witnessed {
                pool: p.clone(),
                zone: z.clone(),
            },
            Key::DrainRequest {
                pool: p.clone(),
                zone: z.clone(),
                name: "web-abc123".into(),
            },
            Key::DrainSlot {
                pool: p.clone(),
                slot: 12,
            },
            Key::Workflow {
                pool: p.clone(),
                id: "1732200000000-ab12".into(),
            },
            Key::Event {
                pool: p,
                seq: "0001732200000000-1a2b".into(),
            },
            Key::AgentMember {
                zone: z,
                agent_id: "host-1.4242".into(),
            },
        ]
    }

    #[test]
    fn every_key_round_trips_under_several_prefixes() {
        for prefix in ["/pm", "/", "/tenants/a/pm"] {
            let ks = Keyspace::new(prefix).expect("valid prefix");
            for key in all_kinds() {
                let built = ks.build(&key).expect("builds");
                assert!(built.starts_with(ks.root()), "{built}");
                assert_eq!(ks.parse(built.as_bytes()).expect("parses"), key);
            }
        }
    }

    #[test]
    fn layout_matches_the_design() {
        let ks = Keyspace::default();
        assert_eq!(ks.pool_config("web").unwrap(), "/pm/v1/pools/web/config");
        assert_eq!(
            ks.instance("web", "us-east1-b", "web-x1").unwrap(),
            "/pm/v1/pools/web/zones/us-east1-b/instances/web-x1"
        );
        assert_eq!(
            ks.zone_desired("web", "us-east1-b").unwrap(),
            "/pm/v1/pools/web/zones/us-east1-b/desired"
        );
        assert_eq!(ks.scheduler_election(), "/pm/v1/scheduler/election");
        assert_eq!(
            ks.agent_election("us-east1-b").unwrap(),
            "/pm/v1/agents/us-east1-b/election"
        );
        assert_eq!(
            ks.agent_member("us-east1-b", "a1").unwrap(),
            "/pm/v1/agents/us-east1-b/members/a1"
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let ks = Keyspace::default();
        for bad in [
            "/other/v1/pools/web/config",
            "/pm/v1/pools/web",
            "/pm/v1/pools//config",
            "/pm/v1/pools/Web/config",
            "/pm/v1/pools/web/zones/z1/instances/",
            "/pm/v1/pools/web/zones/z1/instances/a/b",
            "/pm/v1/pools/web/zones/z1/instances/UPPER",
            "/pm/v1/pools/web/zones/z1/unknown",
            "/pm/v1/pools/web/config/extra",
            "/pm/v1/scheduler/election/694d7a",
            "/pm/v1/agents/z1/members/bad id",
            "/pm/v1/pools/web/drain-slots/01",
            "/pm/v1/pools/web/drain-slots/-1",
            "/pm/v1/pools/web/workflows/a b",
            "/pm/v1/pools/web/zones/z1/drain/UPPER",
        ] {
            assert!(ks.parse(bad.as_bytes()).is_err(), "{bad} was accepted");
        }
        assert!(ks.parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn invalid_names_never_become_keys() {
        let ks = Keyspace::default();
        assert!(ks.pool_config("").is_err());
        assert!(ks.pool_config("a/b").is_err());
        assert!(ks.pool_config(&"a".repeat(64)).is_err());
        assert!(ks.zone_desired("web", "Zone").is_err());
        assert!(ks.instance("web", "z1", "1abc").is_err());
        assert!(ks.instance("web", "z1", "abc-").is_err());
        assert!(ks.agent_member("z1", "../x").is_err());
    }

    #[test]
    fn prefixes_are_validated() {
        for bad in ["pm", "/pm/", "/a//b", ""] {
            assert!(Keyspace::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn range_end_covers_the_prefix() {
        assert_eq!(prefix_range_end(b"/pm/"), b"/pm0".to_vec());
        assert_eq!(prefix_range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_range_end(&[0xff]), vec![0]);
    }
}
