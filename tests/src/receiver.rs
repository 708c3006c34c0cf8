//! A CloudEvents receiver over HTTP, as `pm-scheduler --events-sink` delivers to: it
//! decodes each POST with `cloudevents-sdk` (binary or structured), keeps what it got, and
//! can be taken down and brought back on the same address, or told to refuse a type.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use cloudevents::{AttributesReader, Event};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How one event came.
#[derive(Debug, Clone)]
pub struct Received {
    /// The decoded event.
    pub event: Event,
    /// Whether it came as `application/cloudevents+json` (structured mode).
    pub structured: bool,
}

/// What the handler shares.
#[derive(Default)]
struct Shared {
    /// Every event taken, in arrival order.
    taken: Vec<Received>,
    /// Types answered with this status instead of being taken.
    refused: BTreeMap<String, u16>,
    /// POSTs that did not decode as CloudEvents, with the reason.
    undecodable: Vec<String>,
}

/// A running (or stopped) receiver; stopped when dropped.
pub struct Receiver {
    /// Where it listens, kept across stop and start.
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    /// The server and its shutdown signal while it runs.
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Receiver {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let mut receiver = Self {
            addr,
            shared: Arc::default(),
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .await
                .ok();
        });
        self.server = Some((stop, task));
    }

    /// The URL to give `--events-sink`.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Stops listening: deliveries are refused at connect until [`Receiver::resume`].
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.send(()).ok();
            task.await.ok();
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the receiver's address again");
        self.serve(listener);
    }

    /// Answers events of type `ty` with `status` from now on.
    pub fn refuse(&self, ty: &str, status: u16) {
        let mut shared = self.shared.lock().expect("receiver state");
        shared.refused.insert(ty.to_string(), status);
    }

    /// Every event taken so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().expect("receiver state").taken.clone()
    }

    /// The reasons of POSTs that were not CloudEvents.
    pub fn undecodable(&self) -> Vec<String> {
        self.shared
            .lock()
            .expect("receiver state")
            .undecodable
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.send(()).ok();
            task.abort();
        }
    }
}

async fn receive(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let structured = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/cloudevents+json"));
    let mut shared = shared.lock().expect("receiver state");
    match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
        Ok(event) => {
            if let Some(status) = shared.refused.get(event.ty()) {
                return StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            }
            shared.taken.push(Received { event, structured });
            StatusCode::ACCEPTED
        }
        Err(e) => {
            shared.undecodable.push(e.to_string());
            StatusCode::BAD_REQUEST
        }
    }
}
