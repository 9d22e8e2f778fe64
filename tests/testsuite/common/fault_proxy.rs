//! A TCP proxy that breaks what passes through it on command, for the fault tests: it sits
//! between an agent and its server (TLS passes through untouched) and, once a connection has
//! carried `n` bytes towards the agent, resets it (RST), closes it (FIN) or stops forwarding
//! (a stall, the socket kept open, until the mode is `Pass` or `Delay` again). `Blackhole` stalls every connection, old and new: the
//! server is lost. `Delay` holds each chunk towards the agent for a while (a slow link). This kernel has no netem, and the proxy gives the same faults faster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// After `n` bytes towards the client on one connection: RST.
    ResetAfter(u64),
    /// After `n` bytes: a clean close, mid-body.
    CloseAfter(u64),
    /// After `n` bytes: nothing more, the connection left open.
    StallAfter(u64),
    /// Nothing forwarded on any connection.
    Blackhole,
    /// Each chunk towards the client forwarded `ms` milliseconds late.
    Delay(u64),
}

pub struct FaultProxy {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (`https://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_on(upstream, "127.0.0.1").await
    }

    /// The same on a free port of `ip`, one of this machine's addresses (the host end of a
    /// `netns` link, for an agent in its own namespace).
    pub async fn start_on(upstream: &str, ip: &str) -> FaultProxy {
        let up: SocketAddr = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let m = m.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(up).await {
                        relay(client, server, m).await;
                    }
                });
            }
        });
        FaultProxy { url, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns once the mode lets bytes through again (`Pass` or `Delay`): a stalled link that
/// heals delivers what it held, as TCP does.
async fn flowing(mode: &Mutex<Mode>) {
    while !matches!(*mode.lock().unwrap(), Mode::Pass | Mode::Delay(_)) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn relay(client: TcpStream, server: TcpStream, mode: Arc<Mutex<Mode>>) {
    let _ = client.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let m = mode.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if *m.lock().unwrap() == Mode::Blackhole {
                flowing(&m).await;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent: u64 = 0;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = *mode.lock().unwrap();
            if let Mode::Delay(ms) = now {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let limit = match now {
                Mode::Pass | Mode::Delay(_) => None,
                Mode::Blackhole => Some(0),
                Mode::ResetAfter(l) | Mode::CloseAfter(l) | Mode::StallAfter(l) => Some(l),
            };
            let room = limit.map_or(n as u64, |l| l.saturating_sub(sent).min(n as u64)) as usize;
            if room > 0 && cw.write_all(&buf[..room]).await.is_err() {
                break;
            }
            sent += room as u64;
            if room < n {
                match now {
                    // SO_LINGER 0, then the socket closes as this returns: the kernel
                    // sends RST.
                    // (Dropping a write half would send FIN first: forget it instead.)
                    Mode::ResetAfter(_) => {
                        let _ = cw.as_ref().set_zero_linger();
                        cw.forget();
                    }
                    Mode::CloseAfter(_) => {
                        let _ = cw.shutdown().await;
                    }
                    // A stall holds what it has; the link healed, it flows on.
                    _ => {
                        flowing(&mode).await;
                        if cw.write_all(&buf[room..n]).await.is_err() {
                            break;
                        }
                        sent += (n - room) as u64;
                        continue;
                    }
                }
                return;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
