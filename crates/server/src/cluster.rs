//! Several servers on one PostgreSQL database: what used to be one process's memory, made
//! correct across processes. Three mechanisms, all here so call sites stay one line (their
//! statements are the store's, `db::locks`):
//!
//! - **The write lock** (`Cluster::write`): every state-changing transaction runs under it.
//!   On SQLite it is the in-process mutex it always was (one process, one writer). On
//!   PostgreSQL the holder also takes a session-level advisory lock on a dedicated
//!   connection, so read-modify-writes are serialised across every server on the database
//!   (handed between this process's writers while held, released in batches:
//!   `WriteGuard::drop`); a server killed with SIGKILL drops that connection and PostgreSQL
//!   releases the lock.
//! - **The leader** (`Cluster::leader`): singleton background work (no-reply sweeper,
//!   automatic-update and rollout ticker, SSH workers, history pruning) runs on the one server
//!   holding another advisory lock on its own connection; when that server dies, the next one
//!   to try (every second) takes over. Correctness never depends on it (each pass re-reads
//!   under the write lock); it keeps the work from running twice.
//! - **Signals** (`Cluster::signal`): `NOTIFY patchcast` with `"<instance> <kind> <arg>"`,
//!   heard by one `LISTEN` task per server, so a change on one server wakes long polls on
//!   another and a trust statement accepted on one is trusted by all. A server ignores its
//!   own signals (it acted on them locally already).

use super::db::{Pool, locks};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};

/// Advisory lock keys (per database): "patchcast" + 1 / 2.
const WRITE_KEY: i64 = 0x7063_6173_7400_0001;
const LEADER_KEY: i64 = 0x7063_6173_7400_0002;
const CHANNEL: &str = "patchcast";
/// How often a follower tries to become leader, and the leader checks its connection.
const LEADER_EVERY: Duration = Duration::from_secs(1);

/// A change another server must hear of.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A machine's long poll should look for work again.
    Wake(String),
    /// A relay's long poll should look again.
    Relay(String),
    /// The trust statements changed: reload them.
    Keys,
    /// Group policies, the update-source list or relay roles changed (`cache`).
    Changed,
    /// A machine was removed: forget its credential (`cache`).
    Removed(String),
    /// The listener lost its connection (signals may have been missed): wake everything.
    Lost,
}

impl Signal {
    fn payload(&self, instance: &str) -> Option<String> {
        match self {
            Signal::Wake(m) => Some(format!("{instance} wake {m}")),
            Signal::Relay(m) => Some(format!("{instance} relay {m}")),
            Signal::Keys => Some(format!("{instance} keys -")),
            Signal::Changed => Some(format!("{instance} changed -")),
            Signal::Removed(m) => Some(format!("{instance} removed {m}")),
            Signal::Lost => None,
        }
    }

    /// The signal in a payload another server sent; None for our own or an unknown one.
    fn parse(payload: &str, instance: &str) -> Option<Signal> {
        let mut it = payload.splitn(3, ' ');
        let (from, kind, arg) = (it.next()?, it.next()?, it.next()?);
        if from == instance {
            return None;
        }
        match kind {
            "wake" => Some(Signal::Wake(arg.to_string())),
            "relay" => Some(Signal::Relay(arg.to_string())),
            "keys" => Some(Signal::Keys),
            "changed" => Some(Signal::Changed),
            "removed" => Some(Signal::Removed(arg.to_string())),
            _ => None,
        }
    }
}

pub struct Cluster {
    /// The database URL when it is PostgreSQL (shared by several servers); None on SQLite.
    url: Option<String>,
    instance: String,
    write: Arc<Mutex<Slot>>,
    /// A task is queued to release the database lock (`WriteGuard::drop`).
    releasing: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
    /// To the task sending NOTIFY (set by `start`, PostgreSQL only).
    out: std::sync::OnceLock<mpsc::UnboundedSender<String>>,
}

/// What the in-process mutex guards: the connection holding the database-wide lock, and
/// whether it holds it now.
#[derive(Default)]
struct Slot {
    conn: Option<locks::Conn>,
    held: bool,
}

/// Held while a state-changing transaction runs; released on drop.
pub struct WriteGuard {
    slot: Option<OwnedMutexGuard<Slot>>,
    release: Option<(Arc<Mutex<Slot>>, Arc<AtomicBool>)>,
}

impl Drop for WriteGuard {
    /// The next writer of this process goes on at once, still under the database lock;
    /// the lock itself is released by a task queued behind the writers waiting now, so a
    /// busy server pays one lock and unlock per batch of writes, and another server gets its
    /// turn after each batch.
    fn drop(&mut self) {
        let Some(mut g) = self.slot.take() else {
            return;
        };
        let Some((mutex, releasing)) = self.release.take().filter(|_| g.held) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left to unlock with: closing the connection releases the lock.
            *g = Slot::default();
            return;
        };
        drop(g);
        if releasing.swap(true, Ordering::AcqRel) {
            return;
        }
        rt.spawn(async move {
            let mut g = mutex.lock().await;
            releasing.store(false, Ordering::Release);
            if !g.held {
                return;
            }
            g.held = false;
            if let Some(c) = g.conn.as_mut()
                && let Err(e) = locks::unlock(c, WRITE_KEY).await
            {
                // Closing the connection releases the lock; the next writer reconnects.
                tracing::warn!("releasing the database write lock: {e}; reconnecting");
                g.conn = None;
            }
        });
    }
}

impl Cluster {
    pub fn new(url: &str) -> Cluster {
        let shared = url.starts_with("postgres:") || url.starts_with("postgresql:");
        Cluster {
            url: shared.then(|| url.to_string()),
            instance: patchcast_pack::keys::random_hex(8).unwrap_or_else(|_| "0".into()),
            write: Arc::new(Mutex::new(Slot::default())),
            releasing: Arc::new(AtomicBool::new(false)),
            leader: Arc::new(AtomicBool::new(!shared)),
            out: std::sync::OnceLock::new(),
        }
    }

    /// Whether other servers may share this database (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.url.is_some()
    }

    /// The write lock: this process's mutex, and on PostgreSQL the database-wide one.
    pub async fn write(&self) -> Result<WriteGuard> {
        let mut g = self.write.clone().lock_owned().await;
        if let Some(url) = &self.url
            && !g.held
        {
            for attempt in 0..2 {
                // Out of the mutex while the lock is taken: if this future is dropped
                // meanwhile, so is the connection, and with it whatever it had locked.
                let mut conn = match g.conn.take() {
                    Some(c) => c,
                    None => locks::connect(url)
                        .await
                        .context("connecting for the database write lock")?,
                };
                match locks::lock(&mut conn, WRITE_KEY).await {
                    Ok(_) => {
                        *g = Slot {
                            conn: Some(conn),
                            held: true,
                        };
                        break;
                    }
                    Err(e) if attempt == 0 => {
                        tracing::warn!("taking the database write lock: {e}; reconnecting");
                    }
                    Err(e) => return Err(e).context("taking the database write lock"),
                }
            }
        }
        Ok(WriteGuard {
            slot: Some(g),
            release: self
                .url
                .as_ref()
                .map(|_| (self.write.clone(), self.releasing.clone())),
        })
    }

    /// Whether this server runs the singleton background work now (always on SQLite).
    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Tells the other servers (nothing on SQLite).
    pub fn signal(&self, s: &Signal) {
        if let (Some(out), Some(p)) = (self.out.get(), s.payload(&self.instance)) {
            let _ = out.send(p);
        }
    }

    /// Starts the leader election, the sender of signals and the listener (PostgreSQL only);
    /// `on` is called with each signal another server sent.
    pub fn start(&self, pool: Pool, on: impl Fn(Signal) + Send + Sync + 'static) {
        let Some(url) = self.url.clone() else {
            return;
        };
        tokio::spawn(elect(url.clone(), self.leader.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        if self.out.set(tx).is_ok() {
            tokio::spawn(send(pool, rx));
        }
        tokio::spawn(listen(url, self.instance.clone(), on));
    }
}

async fn elect(url: String, leader: Arc<AtomicBool>) {
    let mut conn: Option<locks::Conn> = None;
    loop {
        let held = leader.load(Ordering::Relaxed);
        let r = async {
            if conn.is_none() {
                conn = Some(locks::connect(&url).await?);
            }
            let c = conn.as_mut().expect("connected above");
            if held {
                locks::alive(c).await?;
                Ok::<bool, anyhow::Error>(true)
            } else {
                locks::try_lock(c, LEADER_KEY).await
            }
        }
        .await;
        match r {
            Ok(now) => {
                if now && !held {
                    tracing::info!("this server now runs the background tasks (leader)");
                }
                leader.store(now, Ordering::Relaxed);
            }
            Err(e) => {
                if held {
                    tracing::warn!("lost the leader connection: {e}; background tasks paused");
                }
                leader.store(false, Ordering::Relaxed);
                conn = None;
            }
        }
        tokio::time::sleep(LEADER_EVERY).await;
    }
}

async fn send(pool: Pool, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(p) = rx.recv().await {
        // Sent outside any transaction, after the change committed: delivered at once.
        if let Err(e) = locks::notify(&pool, CHANNEL, &p).await {
            tracing::warn!("NOTIFY to the other servers failed: {e}");
        }
    }
}

async fn listen(url: String, instance: String, on: impl Fn(Signal) + Send + Sync + 'static) {
    loop {
        let mut l = match locks::listener(&url, CHANNEL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("LISTEN for the other servers: {e}; trying again");
                tokio::time::sleep(LEADER_EVERY).await;
                continue;
            }
        };
        // Anything missed before this LISTEN is looked at again.
        on(Signal::Lost);
        loop {
            match l.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(s) = Signal::parse(n.payload(), &instance) {
                        on(s);
                    }
                }
                // The connection dropped; try_recv reconnects on the next call.
                Ok(None) => on(Signal::Lost),
                Err(e) => {
                    tracing::warn!("LISTEN for the other servers: {e}; reconnecting");
                    tokio::time::sleep(LEADER_EVERY).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_our_own_are_ignored() {
        for s in [
            Signal::Wake("m-1".into()),
            Signal::Relay("r 2".into()),
            Signal::Keys,
        ] {
            let p = s.payload("a").unwrap();
            assert_eq!(Signal::parse(&p, "b"), Some(s));
            assert_eq!(Signal::parse(&p, "a"), None);
        }
        assert_eq!(Signal::Lost.payload("a"), None);
        assert_eq!(Signal::parse("b other x", "a"), None);
    }
}
