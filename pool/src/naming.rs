//! Instance names, zone names and pool membership: what a pool's prefix may be, how its
//! instances are named, and which instances are provably the pool's.

use pm_gce::resources::Instance;
pub use pm_gce::template::{MAX_NAME_LEN, POOL_LABEL};
use rand::Rng;

/// Length of the unique suffix agents append to a pool's prefix: `<prefix><8 of [a-z0-9]>`.
pub const NAME_SUFFIX_LEN: usize = 8;

/// Longest prefix: a full name must still fit in [`MAX_NAME_LEN`].
pub const MAX_PREFIX_LEN: usize = MAX_NAME_LEN - NAME_SUFFIX_LEN;

const SUFFIX_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh instance name: the prefix and 8 random lowercase letters or digits. The
/// config's validation guarantees the result is a valid GCE name.
pub fn new_instance_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..NAME_SUFFIX_LEN)
        .map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())]))
        .collect();
    format!("{prefix}{suffix}")
}

/// Problems of a name prefix: instance names are `prefix` + [`NAME_SUFFIX_LEN`] of
/// `[a-z0-9]`, and must be valid GCE names.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let len = prefix.chars().count();
    if len == 0 {
        return Err("must not be empty: instance names start with it".into());
    }
    if len > MAX_PREFIX_LEN {
        return Err(format!(
            "{prefix:?} is {len} characters long; names are the prefix plus {NAME_SUFFIX_LEN} characters and GCE allows {MAX_NAME_LEN}, so at most {MAX_PREFIX_LEN}"
        ));
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{prefix:?} must start with a lowercase letter (GCE names match [a-z]([-a-z0-9]*[a-z0-9])?)"
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{prefix:?} holds {c:?}; GCE names allow only lowercase letters, digits and '-'"
        ));
    }
    Ok(())
}

/// Whether `zone` looks like a GCE zone: lowercase letters, digits and `-`, starting with
/// a letter and ending in `-` and a letter (`us-central1-a`). Short test zones such as
/// `zone-a` pass too, so gce-sim's zones work. Such a name is also a valid etcd key
/// segment.
pub fn is_valid_zone(zone: &str) -> bool {
    let bytes = zone.as_bytes();
    let n = bytes.len();
    (3..=MAX_NAME_LEN).contains(&n)
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[n - 2] == b'-'
        && bytes[n - 1].is_ascii_lowercase()
}

/// The list filter selecting a pool's instances.
pub fn pool_filter(pool: &str) -> String {
    format!("labels.{POOL_LABEL} = \"{pool}\"")
}

/// Whether `instance` provably belongs to `pool`: it carries the pool's label and its
/// name starts with the pool's prefix. Anything else is never touched.
pub fn is_pool_member(instance: &Instance, pool: &str, prefix: &str) -> bool {
    !prefix.is_empty() && instance.name.starts_with(prefix) && carries_pool_label(instance, pool)
}

/// Whether `instance` carries the label `pm-pool=<pool>`. With the label, an instance
/// whose name lacks the pool's prefix is the pool's only while pm recorded it (an
/// observed key): a VM created under an earlier prefix, kept until a rollout replaces it.
pub fn carries_pool_label(instance: &Instance, pool: &str) -> bool {
    instance.labels.get(POOL_LABEL).map(String::as_str) == Some(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, label: Option<&str>) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
        if let Some(l) = label {
            i.labels.insert(POOL_LABEL.into(), l.into());
        }
        i
    }

    #[test]
    fn names_are_prefix_plus_a_valid_suffix() {
        let a = new_instance_name("web-");
        assert_eq!(a.len(), 4 + NAME_SUFFIX_LEN);
        assert!(a.starts_with("web-"));
        assert!(pm_gce::template::validate_name(&a).is_ok(), "{a}");
        assert_ne!(a, new_instance_name("web-"));
    }

    #[test]
    fn prefixes_and_zones() {
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_LEN)).is_ok());
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_LEN + 1))
            .unwrap_err()
            .contains("at most 55"));
        assert!(check_prefix("").is_err());
        assert!(check_prefix("9lives").is_err());
        assert!(check_prefix("web_").is_err());
        for ok in ["us-central1-a", "zone-a", "europe-west4-c"] {
            assert!(is_valid_zone(ok), "{ok}");
        }
        for bad in [
            "us-central1",
            "a",
            "us-central1-",
            "-a-b",
            "Us-central1-a",
            "us_central1-a",
        ] {
            assert!(!is_valid_zone(bad), "{bad}");
        }
    }

    #[test]
    fn membership_needs_label_and_prefix() {
        assert!(is_pool_member(
            &instance("web-abc", Some("web")),
            "web",
            "web-"
        ));
        assert!(!is_pool_member(&instance("web-abc", None), "web", "web-"));
        assert!(!is_pool_member(
            &instance("web-abc", Some("api")),
            "web",
            "web-"
        ));
        assert!(!is_pool_member(
            &instance("db-abc", Some("web")),
            "web",
            "web-"
        ));
        assert!(!is_pool_member(
            &instance("web-abc", Some("web")),
            "web",
            ""
        ));
    }
}
