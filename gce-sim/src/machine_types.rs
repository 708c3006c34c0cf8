//! The machine-type catalog every zone offers by default: prevmtable's `f1-micro` and
//! `g1-small`, and the common e2, n1, n2 and n2d shapes.

/// Shared-core types, listed by name.
const SHARED_CORE: [&str; 5] = ["f1-micro", "g1-small", "e2-micro", "e2-small", "e2-medium"];

/// Predefined families and their vCPU counts, as in GCE's machine-type tables.
const FAMILIES: [(&str, &[u32]); 12] = [
    ("e2-standard", &[2, 4, 8, 16, 32]),
    ("e2-highcpu", &[2, 4, 8, 16, 32]),
    ("e2-highmem", &[2, 4, 8, 16]),
    ("n1-standard", &[1, 2, 4, 8, 16, 32, 64, 96]),
    ("n1-highcpu", &[2, 4, 8, 16, 32, 64, 96]),
    ("n1-highmem", &[2, 4, 8, 16, 32, 64, 96]),
    ("n2-standard", &[2, 4, 8, 16, 32, 48, 64, 80, 96, 128]),
    ("n2-highcpu", &[2, 4, 8, 16, 32, 48, 64, 80, 96]),
    ("n2-highmem", &[2, 4, 8, 16, 32, 48, 64, 80, 96, 128]),
    ("n2d-standard", &[2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224]),
    ("n2d-highcpu", &[2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224]),
    ("n2d-highmem", &[2, 4, 8, 16, 32, 48, 64, 80, 96]),
];

/// The default catalog, the same in every zone.
pub fn default_machine_types() -> Vec<String> {
    let predefined = FAMILIES
        .iter()
        .flat_map(|(family, sizes)| sizes.iter().map(move |n| format!("{family}-{n}")));
    SHARED_CORE
        .iter()
        .map(|name| (*name).to_string())
        .chain(predefined)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_is_realistic_and_valid() {
        let catalog = default_machine_types();
        for name in [
            "f1-micro",
            "g1-small",
            "e2-small",
            "e2-standard-4",
            "e2-highmem-16",
        ] {
            assert!(catalog.iter().any(|m| m == name), "{name}");
        }
        for name in ["n1-standard-1", "n2-highcpu-8", "n2d-standard-224"] {
            assert!(catalog.iter().any(|m| m == name), "{name}");
        }
        for (i, name) in catalog.iter().enumerate() {
            assert!(pm_gce::template::validate_name(name).is_ok(), "{name}");
            assert!(!catalog[..i].contains(name), "{name} twice");
        }
    }
}
