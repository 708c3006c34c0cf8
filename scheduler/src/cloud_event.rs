//! How a pm event becomes a CloudEvent 1.0 for `--events-sink`: its type, id, source,
//! time, subject and JSON data. Pure, so every mapping is tested here.

use cloudevents::{Event as CloudEvent, EventBuilder, EventBuilderV10};
use pm_proto::{Event, Severity};

/// Instance kinds that keep their name in `dev.pm.instance.<kind>`.
const INSTANCE_KINDS: &[&str] = &[
    "created",
    "deleted",
    "preempted",
    "vanished",
    "restarted",
    "draining",
    "drained",
];

/// The CloudEvent type of a pm event kind:
/// - instance lifecycle kinds: `dev.pm.instance.<kind>`;
/// - `zone-exhausted`: `dev.pm.zone.exhausted`; `zone-usable` and `zone-cleared`:
///   `dev.pm.zone.recovered`;
/// - `scaled` and `shed`: `dev.pm.pool.<kind>`; `rollout-X`: `dev.pm.pool.rollout.X`;
/// - `lease-X`: `dev.pm.lease.X`;
/// - any other kind: `dev.pm.instance.<kind>` when it names an instance, else
///   `dev.pm.zone.<kind>` when it names a zone, else `dev.pm.pool.<kind>`.
pub fn event_type(kind: &str, zone: &str, instance: &str) -> String {
    if INSTANCE_KINDS.contains(&kind) {
        return format!("dev.pm.instance.{kind}");
    }
    match kind {
        "zone-exhausted" => return "dev.pm.zone.exhausted".into(),
        "zone-usable" | "zone-cleared" => return "dev.pm.zone.recovered".into(),
        "scaled" | "shed" => return format!("dev.pm.pool.{kind}"),
        _ => {}
    }
    if let Some(step) = kind.strip_prefix("rollout-") {
        return format!("dev.pm.pool.rollout.{step}");
    }
    if let Some(step) = kind.strip_prefix("lease-") {
        return format!("dev.pm.lease.{step}");
    }
    if !instance.is_empty() {
        format!("dev.pm.instance.{kind}")
    } else if !zone.is_empty() {
        format!("dev.pm.zone.{kind}")
    } else {
        format!("dev.pm.pool.{kind}")
    }
}

/// The CloudEvent of event `seq` of `pool`. Its id, `<pool>/<seq>`, is the event's etcd
/// key below the events prefix: the same on every delivery, so receivers can deduplicate.
/// An event whose time is out of range is refused with the reason.
pub fn to_cloud_event(pool: &str, seq: &str, event: &Event) -> Result<CloudEvent, String> {
    let time = chrono::DateTime::from_timestamp_millis(event.unix_ms)
        .ok_or_else(|| format!("its time {} ms is out of range", event.unix_ms))?;
    let severity = Severity::try_from(event.severity).unwrap_or(Severity::Info);
    let data = serde_json::json!({
        "pool": pool,
        "kind": event.kind,
        "zone": event.zone,
        "instance": event.instance,
        "message": event.message,
        "severity": severity
            .as_str_name()
            .trim_start_matches("SEVERITY_")
            .to_ascii_lowercase(),
        "source": event.source,
        "count": event.count.max(1),
    });
    let mut builder = EventBuilderV10::new()
        .id(format!("{pool}/{seq}"))
        .source(format!("/pm/{pool}"))
        .ty(event_type(&event.kind, &event.zone, &event.instance))
        .time(time)
        .data("application/json", data);
    let subject = [&event.instance, &event.zone]
        .into_iter()
        .find(|s| !s.is_empty());
    if let Some(subject) = subject {
        builder = builder.subject(subject.as_str());
    }
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use cloudevents::AttributesReader;

    use super::*;

    #[test]
    fn kinds_map_to_the_documented_types() {
        let cases = [
            ("created", "zone-a", "web-1", "dev.pm.instance.created"),
            ("preempted", "zone-a", "web-1", "dev.pm.instance.preempted"),
            ("draining", "zone-a", "web-1", "dev.pm.instance.draining"),
            ("zone-exhausted", "zone-a", "", "dev.pm.zone.exhausted"),
            ("zone-usable", "zone-a", "", "dev.pm.zone.recovered"),
            ("zone-cleared", "zone-a", "", "dev.pm.zone.recovered"),
            ("scaled", "", "", "dev.pm.pool.scaled"),
            ("shed", "", "", "dev.pm.pool.shed"),
            ("rollout-started", "", "", "dev.pm.pool.rollout.started"),
            ("lease-acquired", "", "", "dev.pm.lease.acquired"),
            (
                "create-failed",
                "zone-a",
                "web-1",
                "dev.pm.instance.create-failed",
            ),
            (
                "creates-throttled",
                "zone-a",
                "",
                "dev.pm.zone.creates-throttled",
            ),
            ("leader-elected", "", "", "dev.pm.pool.leader-elected"),
        ];
        for (kind, zone, instance, ty) in cases {
            assert_eq!(event_type(kind, zone, instance), ty, "{kind}");
        }
    }

    #[test]
    fn a_cloud_event_carries_id_source_time_subject_and_data() {
        let event = Event {
            unix_ms: 1_700_000_000_123,
            kind: "preempted".into(),
            zone: "zone-a".into(),
            instance: "web-1".into(),
            message: "GCE preempted it".into(),
            source: "agent-1".into(),
            severity: Severity::Warning as i32,
            count: 0,
            last_unix_ms: 0,
        };
        let ce = to_cloud_event("web", "0001700000000123-0000abcd", &event).unwrap();
        assert_eq!(ce.id(), "web/0001700000000123-0000abcd");
        assert_eq!(ce.source().as_str(), "/pm/web");
        assert_eq!(ce.ty(), "dev.pm.instance.preempted");
        assert_eq!(ce.subject(), Some("web-1"));
        assert_eq!(ce.time().unwrap().timestamp_millis(), 1_700_000_000_123);
        assert_eq!(ce.datacontenttype(), Some("application/json"));
        let Some(cloudevents::Data::Json(data)) = ce.data() else {
            panic!("JSON data: {:?}", ce.data());
        };
        assert_eq!(data["severity"], "warning");
        assert_eq!(data["count"], 1);
        assert_eq!(data["message"], "GCE preempted it");
    }

    #[test]
    fn a_pool_event_has_no_subject_and_a_time_out_of_range_is_refused() {
        let mut event = Event {
            unix_ms: 1,
            kind: "scaled".into(),
            ..Event::default()
        };
        let ce = to_cloud_event("web", "s", &event).unwrap();
        assert_eq!(ce.subject(), None);
        event.unix_ms = i64::MAX;
        let refused = to_cloud_event("web", "s", &event).unwrap_err();
        assert!(refused.contains("out of range"), "{refused}");
    }
}
