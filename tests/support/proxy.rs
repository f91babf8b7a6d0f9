//! A small TCP proxy standing in for an L4 load balancer in front of
//! several `lockstep serve` replicas: a new connection goes to the first
//! target that accepts it (a dead replica is skipped), existing connections
//! can be dropped (a failover) or frozen half-open (the balancer stops
//! forwarding but neither end is told).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct Conn {
    frozen: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    conns: Arc<Mutex<Vec<Conn>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a loopback port; connections go to `targets` in order of
    /// preference.
    pub async fn start(targets: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(targets));
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let accept = {
            let (targets, conns) = (Arc::clone(&targets), Arc::clone(&conns));
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let order = targets.lock().unwrap().clone();
                    let frozen = Arc::new(AtomicBool::new(false));
                    let f = Arc::clone(&frozen);
                    let task = tokio::spawn(async move {
                        for target in order {
                            if let Ok(outbound) = TcpStream::connect(target).await {
                                forward(inbound, outbound, f).await;
                                return;
                            }
                        }
                        // No target accepts: the client sees the connection close.
                    });
                    conns.lock().unwrap().push(Conn { frozen, task });
                }
            })
        };
        Proxy {
            addr,
            targets,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where new connections go from now on.
    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Closes every connection (both ends see it end).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.task.abort();
        }
    }

    /// Stops forwarding on every current connection without closing it:
    /// both ends keep a socket that carries nothing (half-open).
    pub fn freeze_connections(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.frozen.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// Copies bytes both ways until either side closes; once `frozen`, copies
/// nothing more and holds both sockets open until aborted.
async fn forward(a: TcpStream, b: TcpStream, frozen: Arc<AtomicBool>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let up = pipe(&mut ar, &mut bw, &frozen);
    let down = pipe(&mut br, &mut aw, &frozen);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    if frozen.load(Ordering::SeqCst) {
        // Half-open: keep the sockets (and say nothing) until aborted.
        std::future::pending::<()>().await;
    }
}

async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow it, and everything after.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
