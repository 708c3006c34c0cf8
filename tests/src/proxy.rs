//! A TCP proxy that a test can cut: it forwards connections to one upstream address
//! until [`TcpProxy::cut`] (every open connection is dropped, new ones are closed at
//! once: the peer sees resets) or [`TcpProxy::blackhole`] (connections stay open but
//! nothing gets through: the peer sees silence, like a network partition), and again
//! after [`TcpProxy::restore`]. Put it between a daemon and etcd to cut the daemon off
//! from etcd while it still reaches everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut,
    Blackhole,
}

/// A running proxy; it stops when dropped.
pub struct TcpProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// The mode; every connection task watches it.
    mode: Arc<watch::Sender<Mode>>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(watch::Sender::new(Mode::Forward));
        let task = tokio::spawn(accept_loop(listener, upstream, mode.clone()));
        TcpProxy { addr, mode, task }
    }

    /// Forwards to the host and port of an `http://HOST:PORT` URL.
    pub async fn for_url(url: &str) -> TcpProxy {
        let hostport = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
        let upstream: SocketAddr = hostport
            .parse()
            .unwrap_or_else(|e| panic!("proxy upstream {url}: {e}"));
        TcpProxy::start(upstream).await
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection and closes new ones at once.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops forwarding but keeps connections open, and accepts new ones that go
    /// nowhere: requests hang until the client gives up.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Forwards again; connections held by a blackhole are closed, so clients reconnect.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: Arc<watch::Sender<Mode>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, or a connection reset before it was accepted: go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut rx = mode.subscribe();
        tokio::spawn(async move {
            let current = *rx.borrow_and_update();
            match current {
                Mode::Cut => return,
                Mode::Blackhole => {
                    // Hold it, silent, until the mode changes; then close it.
                    let _held = client;
                    rx.changed().await.ok();
                    return;
                }
                Mode::Forward => {}
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            client.set_nodelay(true).ok();
            server.set_nodelay(true).ok();
            let (mut client, mut server) = (client, server);
            let stopped = tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => None,
                m = rx.wait_for(|m| *m != Mode::Forward) => m.ok().map(|m| *m),
            };
            if stopped == Some(Mode::Blackhole) {
                rx.wait_for(|m| *m != Mode::Blackhole).await.ok();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> bool {
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.is_ok() && &buf == b"ping"
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let addr = proxy.addr;
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert!(round_trip(&mut open).await);

        proxy.cut();
        assert!(!round_trip(&mut open).await, "open connections are dropped");
        let mut refused = TcpStream::connect(addr).await.unwrap();
        assert!(!round_trip(&mut refused).await, "new ones are closed");

        proxy.restore();
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert!(round_trip(&mut again).await);
    }

    #[tokio::test]
    async fn a_blackhole_holds_connections_silent_until_restored() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut open = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut open).await);

        proxy.blackhole();
        let mut held = TcpStream::connect(proxy.addr).await.unwrap();
        for stream in [&mut open, &mut held] {
            let silent = tokio::time::timeout(Duration::from_millis(300), round_trip(stream)).await;
            assert!(silent.is_err(), "no answer, and no close either");
        }

        proxy.restore();
        assert!(!round_trip(&mut open).await, "held connections close");
        let mut again = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut again).await);
    }
}
