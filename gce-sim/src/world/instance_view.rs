//! Instances as GCE renders them, serialized straight from the world, and the reads
//! that render them: `instances.get`, `instances.list`, `instances.aggregatedList`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::instances::SimInstance;
use super::paging::{list_reply, paginate, ListQuery};
use super::{instance_path, zone_url, ApiError, World, URL_ROOT};
use crate::clock::rfc3339;

/// A list page of instances, serialized straight from the world (no copies).
struct InstancePage<'a> {
    items: Vec<InstanceView<'a>>,
    next_page_token: Option<String>,
    self_link: String,
}

impl Serialize for InstancePage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", "compute#instanceList")?;
        map.serialize_entry("id", self.self_link.trim_start_matches(URL_ROOT))?;
        if !self.items.is_empty() {
            map.serialize_entry("items", &self.items)?;
        }
        if let Some(token) = &self.next_page_token {
            map.serialize_entry("nextPageToken", token)?;
        }
        map.serialize_entry("selfLink", &self.self_link)?;
        map.end()
    }
}

/// Sorted label pairs serialized as a JSON object.
struct LabelMap<'a>(&'a [(String, String)]);

impl Serialize for LabelMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One instance as GCE renders it.
struct InstanceView<'a> {
    instance: &'a SimInstance,
    project: &'a str,
    zone: &'a str,
    name: &'a str,
    status: &'a str,
}

impl Serialize for InstanceView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let i = self.instance;
        let zone = zone_url(self.project, self.zone);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", "compute#instance")?;
        map.serialize_entry("id", &i.id.to_string())?;
        map.serialize_entry("creationTimestamp", &rfc3339(i.created))?;
        map.serialize_entry("name", self.name)?;
        for (key, value) in &i.body {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("status", self.status)?;
        map.serialize_entry("zone", &zone)?;
        map.serialize_entry("selfLink", &format!("{zone}/instances/{}", self.name))?;
        if !i.labels.is_empty() {
            map.serialize_entry("labels", &LabelMap(&i.labels))?;
        }
        map.serialize_entry("labelFingerprint", &i.label_fingerprint)?;
        map.serialize_entry("lastStartTimestamp", &rfc3339(i.last_start))?;
        if let Some(stop) = i.last_stop {
            map.serialize_entry("lastStopTimestamp", &rfc3339(stop))?;
        }
        map.end()
    }
}

impl<'a> InstanceView<'a> {
    /// `instance`, named `name`, of `project` in `zone` as it is at `now`.
    fn new(
        instance: &'a SimInstance,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        now: Instant,
        boot_delay: Duration,
    ) -> InstanceView<'a> {
        InstanceView {
            instance,
            project,
            zone,
            name,
            status: instance.status_text(now, boot_delay),
        }
    }

    /// A field for list filters.
    fn field(&self, field: &str) -> Option<Cow<'_, str>> {
        let i = self.instance;
        match field {
            "name" => Some(Cow::Borrowed(self.name)),
            "status" => Some(Cow::Borrowed(self.status)),
            "id" => Some(Cow::Owned(i.id.to_string())),
            "zone" => Some(Cow::Owned(zone_url(self.project, self.zone))),
            "labelFingerprint" => Some(Cow::Borrowed(&i.label_fingerprint)),
            _ => {
                if let Some(key) = field.strip_prefix("labels.") {
                    return i
                        .labels
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| Cow::Borrowed(v.as_str()));
                }
                let mut parts = field.split('.');
                let first = parts.next()?;
                let (_, raw) = i.body.iter().find(|(key, _)| key.as_ref() == first)?;
                let parsed: Value = serde_json::from_str(raw.get()).ok()?;
                let mut value = &parsed;
                for part in parts {
                    value = value.get(part)?;
                }
                match value {
                    Value::String(s) => Some(Cow::Owned(s.clone())),
                    Value::Bool(b) => Some(Cow::Owned(b.to_string())),
                    Value::Number(n) => Some(Cow::Owned(n.to_string())),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                }
            }
        }
    }
}

impl World {
    /// `instances.get`, serialized.
    pub fn get_instance(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let (name, instance) = z
            .projects
            .get(project)
            .and_then(|pz| pz.instances.get_key_value(name))
            .ok_or_else(|| ApiError::not_found(&instance_path(project, zone, name)))?;
        let view = InstanceView::new(instance, project, zone, name, now, boot);
        serde_json::to_value(view).map_err(|e| ApiError::backend(&e))
    }

    /// `instances.list`, serialized.
    pub fn list_instances(
        &mut self,
        project: &str,
        zone: &str,
        query: &ListQuery<'_>,
    ) -> Result<Vec<u8>, ApiError> {
        let page = query.check_by_name()?;
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let empty = BTreeMap::new();
        let instances = z.projects.get(project).map_or(&empty, |pz| &pz.instances);
        let views = instances
            .range::<str, _>(page.keys())
            .map(|(name, instance)| InstanceView::new(instance, project, zone, name, now, boot))
            .filter(|view| page.filter.matches(|f| view.field(f)))
            .map(|view| (view.name.to_string(), view));
        let (items, next_page_token) = paginate(views, page.size);
        let page = InstancePage {
            items,
            next_page_token,
            self_link: format!("{}/instances", zone_url(project, zone)),
        };
        serde_json::to_vec(&page).map_err(|e| ApiError::backend(&e))
    }

    /// `instances.aggregatedList`, serialized. Pages run over (zone, name).
    pub fn aggregated_instances(
        &mut self,
        project: &str,
        query: &ListQuery<'_>,
    ) -> Result<Value, ApiError> {
        let page = query.check_by_name()?;
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let empty = BTreeMap::new();
        let mut views = Vec::new();
        for (zone_name, zone) in self.zones.iter_mut() {
            zone.sweep(now);
            let instances = zone
                .projects
                .get(project)
                .map_or(&empty, |pz| &pz.instances);
            for (name, instance) in instances {
                let key = format!("{zone_name}/{name}");
                if page
                    .after
                    .as_ref()
                    .is_some_and(|after| key.as_str() <= after.as_str())
                {
                    continue;
                }
                let view = InstanceView::new(instance, project, zone_name, name, now, boot);
                if page.filter.matches(|f| view.field(f)) {
                    views.push((key, view));
                }
            }
        }
        let (items, next_page_token) = paginate(views.into_iter(), page.size);
        let mut by_zone: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for view in items {
            let zone = view.zone.to_string();
            let value = serde_json::to_value(&view).map_err(|e| ApiError::backend(&e))?;
            by_zone.entry(zone).or_default().push(value);
        }
        let items: Map<String, Value> = self
            .zones
            .keys()
            .map(|zone| {
                let scope = format!("zones/{zone}");
                let entry = match by_zone.remove(zone.as_str()) {
                    Some(instances) => json!({ "instances": instances }),
                    None => json!({"warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": format!("There are no results for scope '{scope}' on this page."),
                        "data": [{"key": "scope", "value": scope}],
                    }}),
                };
                (scope, entry)
            })
            .collect();
        Ok(list_reply(
            "compute#instanceAggregatedList",
            &format!("projects/{project}/aggregated/instances"),
            items,
            next_page_token,
        ))
    }
}
