//! A TCP proxy that a test can cut: it forwards connections to one upstream address
//! until [`TcpProxy::cut`], which drops every open connection and refuses new ones
//! (accepted, then closed at once) until [`TcpProxy::restore`]. Put it between a
//! daemon and etcd to cut the daemon off from etcd while it still reaches everything
//! else.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; it stops when dropped.
pub struct TcpProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// `true` while cut; every connection task watches it.
    cut: Arc<watch::Sender<bool>>,
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
        let cut = Arc::new(watch::Sender::new(false));
        let task = tokio::spawn(accept_loop(listener, upstream, cut.clone()));
        TcpProxy { addr, cut, task }
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

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, cut: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        if *cut.borrow() {
            drop(client);
            continue;
        }
        let mut cut_rx = cut.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = cut_rx.wait_for(|cut| *cut) => {}
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
        assert!(proxy.is_cut());
        assert!(!round_trip(&mut open).await, "open connections are dropped");
        let mut refused = TcpStream::connect(addr).await.unwrap();
        assert!(!round_trip(&mut refused).await, "new ones are closed");

        proxy.restore();
        let mut again = TcpStream::connect(addr).await.unwrap();
        assert!(round_trip(&mut again).await);
    }
}
