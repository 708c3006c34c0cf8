//! `pmctl events [POOL] [--follow]`: what agents, schedulers and pmctl recorded.

use pm_etcd::{
    decode, EventLog, Key, ResumableWatch, Store, StoredKey, WatchBatch, WatchEvent, WatchRange,
};
use pm_proto::{Event, Severity};
use serde::Serialize;

use crate::error::Result;
use crate::output::{self, OutputFormat, Render};

/// The `source` of events pmctl records, and the `set_by` of its exhaustion marks.
pub const SOURCE: &str = "pmctl";

/// Records an event of `pool` as pmctl. A refusal is logged, not returned: the change the
/// event tells of is made already.
pub async fn record(
    store: &Store,
    pool: &str,
    kind: &str,
    severity: Severity,
    zone: &str,
    message: String,
) {
    let events = EventLog::new(store.clone(), SOURCE, EventLog::DEFAULT_RETENTION);
    if let Err(e) = events.record(pool, kind, severity, zone, "", message).await {
        tracing::warn!("could not record the {kind} event: {e}");
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// The pool.
    pub pool: String,
    /// The key's sequence id: sortable by time.
    pub seq: String,
    /// When it happened (Unix ms).
    pub unix_ms: i64,
    /// The same as RFC 3339 UTC.
    pub time: String,
    /// `info`, `warning` or `error`.
    pub severity: &'static str,
    /// Machine-readable kind, e.g. `created`, `preempted`, `zone-exhausted`.
    pub kind: String,
    /// The zone; empty for pool-wide events.
    pub zone: String,
    /// The instance; empty when none.
    pub instance: String,
    /// What happened, for people.
    pub message: String,
    /// Who recorded it: an agent or scheduler id, or `pmctl`.
    pub source: String,
    /// How many times the source recorded it within the repeat window (1: once).
    pub count: u32,
    /// When it was last repeated (Unix ms), 0 when it happened once.
    pub last_unix_ms: i64,
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

impl EventRow {
    /// The event stored under `kv`, when it is one.
    fn from_stored(store: &Store, kv: &StoredKey) -> Option<Self> {
        let Ok(Key::Event { pool, seq }) = store.keys().parse(kv.key.as_bytes()) else {
            return None;
        };
        let event = match decode::<Event>(&kv.key, &kv.value) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        Some(Self {
            pool,
            seq,
            unix_ms: event.unix_ms,
            time: output::time(event.unix_ms),
            severity: severity_name(event.severity()),
            kind: event.kind,
            zone: event.zone,
            instance: event.instance,
            message: event.message,
            source: event.source,
            count: event.count.max(1),
            last_unix_ms: event.last_unix_ms,
        })
    }

    /// One line, columns padded to fixed widths so a followed stream stays aligned.
    fn line(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let repeats = if self.count > 1 {
            format!(
                " (x{}, last {})",
                self.count,
                output::time(self.last_unix_ms)
            )
        } else {
            String::new()
        };
        format!(
            "{:<20}  {:<8}  {:<12}  {:<18}  {:<15}  {:<22}  {}{repeats} [{}]",
            self.time,
            self.severity,
            self.pool,
            self.kind,
            dash(&self.zone),
            dash(&self.instance),
            self.message,
            self.source
        )
        .trim_end()
        .to_string()
    }
}

/// The header of the event lines.
fn header() -> String {
    format!(
        "{:<20}  {:<8}  {:<12}  {:<18}  {:<15}  {:<22}  MESSAGE [SOURCE]\n",
        "TIME", "SEVERITY", "POOL", "KIND", "ZONE", "INSTANCE"
    )
}

/// What `pmctl events` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsView {
    /// The events, oldest first.
    pub events: Vec<EventRow>,
}

impl Render for EventsView {
    fn table(&self) -> String {
        if self.events.is_empty() {
            return "no events\n".into();
        }
        let mut out = header();
        for event in &self.events {
            out.push_str(&event.line());
            out.push('\n');
        }
        out
    }
}

/// Where the events of `pool` (or of all pools) live.
fn range(store: &Store, pool: Option<&str>) -> Result<String> {
    Ok(match pool {
        Some(pool) => store.keys().events_prefix(pool)?,
        None => store.keys().all_events_prefix(),
    })
}

/// Events in time order (the order of their sequence ids), then by pool.
fn sort(events: &mut [EventRow]) {
    events.sort_by(|a, b| (&a.seq, &a.pool).cmp(&(&b.seq, &b.pool)));
}

/// `pmctl events [POOL] [--limit N]`, and with `follow` every new event after them until
/// Ctrl-C.
pub async fn show(
    store: &Store,
    pool: Option<&str>,
    limit: usize,
    follow: bool,
    format: OutputFormat,
) -> Result<()> {
    let prefix = range(store, pool)?;
    let (stored, revision) = store.list_raw(&prefix).await?;
    let mut events: Vec<EventRow> = stored
        .iter()
        .filter_map(|kv| EventRow::from_stored(store, kv))
        .collect();
    sort(&mut events);
    if limit > 0 && events.len() > limit {
        events.drain(..events.len() - limit);
    }
    if !follow {
        return output::emit(format, &EventsView { events });
    }
    let print = |event: &EventRow| match format {
        OutputFormat::Table => output::print(&format!("{}\n", event.line())),
        OutputFormat::Json => output::emit_line(event),
    };
    if format == OutputFormat::Table {
        output::print(&header())?;
    }
    for event in &events {
        print(event)?;
    }
    // The newest event shown; after a compaction only newer ones are printed again.
    let mut last = events.last().map(|e| (e.seq.clone(), e.pool.clone()));
    let mut watch = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(prefix),
        revision + 1,
    );
    loop {
        let batch = tokio::select! {
            batch = watch.next() => batch?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let mut fresh: Vec<EventRow> = match batch {
            WatchBatch::Events(changes) => changes
                .iter()
                .filter_map(|change| match change {
                    WatchEvent::Put(kv) if kv.create_revision == kv.mod_revision => {
                        EventRow::from_stored(store, kv)
                    }
                    WatchEvent::Put(_) | WatchEvent::Delete { .. } => None,
                })
                .collect(),
            WatchBatch::Resync { keys, .. } => keys
                .iter()
                .filter_map(|kv| EventRow::from_stored(store, kv))
                .filter(|e| {
                    last.as_ref()
                        .is_none_or(|l| (&e.seq, &e.pool) > (&l.0, &l.1))
                })
                .collect(),
        };
        sort(&mut fresh);
        for event in &fresh {
            print(event)?;
        }
        if let Some(newest) = fresh.last() {
            last = Some((newest.seq.clone(), newest.pool.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_line_up_with_the_header() {
        let row = EventRow {
            pool: "web".into(),
            seq: "0001700000000000-0000abcd".into(),
            unix_ms: 1_700_000_000_000,
            time: output::time(1_700_000_000_000),
            severity: "warning",
            kind: "preempted".into(),
            zone: "us-central1-a".into(),
            instance: "web-abcd1234".into(),
            message: "instance preempted".into(),
            source: "agent-1".into(),
            count: 1,
            last_unix_ms: 0,
        };
        let view = EventsView { events: vec![row] };
        let text = view.table();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].find("KIND"), lines[1].find("preempted"), "{text}");
        assert_eq!(
            lines[0].find("MESSAGE"),
            lines[1].find("instance preempted"),
            "{text}"
        );
        assert!(lines[1].ends_with("[agent-1]"));
    }
}
