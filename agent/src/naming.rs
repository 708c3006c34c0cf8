//! Instance names and pool membership.

use pm_gce::resources::Instance;
use rand::Rng;

/// The label that marks an instance as a pool's.
pub const POOL_LABEL: &str = "pm-pool";

/// Length of the random suffix after the pool's prefix.
pub const NAME_SUFFIX_LEN: usize = 8;

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

/// The list filter selecting a pool's instances.
pub fn pool_filter(pool: &str) -> String {
    format!("labels.{POOL_LABEL} = \"{pool}\"")
}

/// Whether `instance` provably belongs to `pool`: it carries the pool's label and its
/// name starts with the pool's prefix. Anything else is never touched.
pub fn is_pool_member(instance: &Instance, pool: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && instance.name.starts_with(prefix)
        && instance.labels.get(POOL_LABEL).map(String::as_str) == Some(pool)
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
