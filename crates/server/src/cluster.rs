//! Several servers on one PostgreSQL database: what used to be one process's memory, made
//! correct across processes. Three mechanisms, all here so call sites stay one line (their
//! statements are the store's, `db::locks`):
//!
//! - **The write lock** (`Cluster::write`, `Cluster::write_shared`): every state-changing
//!   transaction runs under it, in one of two modes. *Exclusive* (administrators' actions,
//!   rollouts, sources, keys…): alone, in this process and on PostgreSQL across every server.
//!   *Shared* (the hot delivery paths: dispatch, reports, the no-reply sweeper, heartbeats):
//!   concurrently with the other shared writers of every server, never with an exclusive
//!   one; these paths lock the rows they decide on themselves (`SELECT … FOR UPDATE`, in the
//!   store). In-process the two modes are a read-write lock; on PostgreSQL the holder also
//!   takes a session-level advisory lock in the same mode on a dedicated connection, handed
//!   between this process's writers while held and released in batches (`WriteGuard::drop`);
//!   a server killed with SIGKILL drops that connection and PostgreSQL releases the lock. On
//!   SQLite (one process, one writer) a shared guard is an exclusive one.
//! - **The leader** (`Cluster::leader`): singleton background work (no-reply sweeper,
//!   automatic-update and rollout ticker, SSH workers, history pruning) runs on the one server
//!   holding another advisory lock on its own connection; when that server dies, the next one
//!   to try (every second) takes over. Correctness never depends on it (each pass re-reads
//!   under the write lock); it keeps the work from running twice.
//! - **Signals** (`Cluster::signal`): `NOTIFY patchcast` with `"<instance> <kind> <arg>"`,
//!   heard by one `LISTEN` task per server, so a change on one server wakes long polls on
//!   another and a trust statement accepted on one is trusted by all. A server ignores its
//!   own signals (it acted on them locally already).

use super::db::{Conn, Pool, locks};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{
    Mutex, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore,
    mpsc,
};

/// Advisory lock keys (per database): "patchcast" + 1 / 2.
const WRITE_KEY: i64 = 0x7063_6173_7400_0001;
const LEADER_KEY: i64 = 0x7063_6173_7400_0002;
const CHANNEL: &str = "patchcast";
/// Shared writers of one process at once: half the PostgreSQL pool (`db::connect`), as each
/// may read through a second connection while its transaction holds one.
const SHARED_WRITERS: usize = 8;
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
    /// A shared writer looks at the slot under its mutex, an exclusive one owns it.
    write: Writers,
    /// Room for `SHARED_WRITERS` shared writers.
    shared_room: Arc<Semaphore>,
    /// A task is queued to release the database lock (`WriteGuard::drop`).
    releasing: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
    /// To the task sending NOTIFY (set by `start`, PostgreSQL only).
    out: std::sync::OnceLock<mpsc::UnboundedSender<String>>,
}

/// The two kinds of write guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// With the other shared writers; the transaction locks the rows it decides on.
    Shared,
    /// Alone.
    Exclusive,
}

impl Mode {
    /// Whether holding the database lock in `self` mode lets a writer of `want` go on.
    fn covers(self, want: Mode) -> bool {
        self == Mode::Exclusive || want == Mode::Shared
    }
}

/// The connection holding the database-wide lock, and the mode it holds it in now.
#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    held: Option<Mode>,
}

impl Slot {
    /// Makes the connection hold the lock in a mode covering `want`: taken when not held,
    /// or a shared one given up and taken exclusively (never upgraded in place, so two
    /// servers upgrading at once cannot deadlock on each other's shared lock). The caller
    /// is alone with the slot in the mode it asks for.
    async fn hold(&mut self, url: &str, want: Mode) -> Result<()> {
        if self.held.is_some_and(|m| m.covers(want)) {
            return Ok(());
        }
        let mut retried = false;
        loop {
            // Out of the slot while the lock is taken: if this future is dropped meanwhile,
            // so is the connection, and with it whatever it had locked.
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => locks::connect(url)
                    .await
                    .context("connecting for the database write lock")?,
            };
            let was = self.held.take();
            let taken = async {
                if let Some(m) = was {
                    locks::unlock(&mut conn, WRITE_KEY, m == Mode::Shared).await?;
                }
                locks::lock(&mut conn, WRITE_KEY, want == Mode::Shared).await
            }
            .await;
            match taken {
                Ok(()) => {
                    *self = Slot {
                        conn: Some(conn),
                        held: Some(want),
                    };
                    return Ok(());
                }
                // The connection is dropped, and with it any lock it held.
                Err(e) if !retried => {
                    retried = true;
                    tracing::warn!("taking the database write lock: {e}; reconnecting");
                }
                Err(e) => return Err(e).context("taking the database write lock"),
            }
        }
    }

    /// Gives the database lock up; on failure closes the connection, which releases it.
    async fn release(&mut self) {
        let Some(m) = self.held.take() else {
            return;
        };
        if let Some(c) = self.conn.as_mut()
            && let Err(e) = locks::unlock(c, WRITE_KEY, m == Mode::Shared).await
        {
            // The next writer reconnects.
            tracing::warn!("releasing the database write lock: {e}; reconnecting");
            self.conn = None;
        }
    }
}

/// This process's side of the write lock: read for a shared writer, write for an exclusive
/// one; inside, what this process holds of the database lock.
type Writers = Arc<RwLock<Mutex<Slot>>>;

/// This process's side of a guard.
enum Local {
    Shared {
        slot: OwnedRwLockReadGuard<Mutex<Slot>>,
        _room: OwnedSemaphorePermit,
    },
    Exclusive(OwnedRwLockWriteGuard<Mutex<Slot>>),
}

/// Held while a state-changing transaction runs; released on drop.
pub struct WriteGuard {
    local: Option<Local>,
    release: Option<(Writers, Arc<AtomicBool>)>,
}

impl Drop for WriteGuard {
    /// The next writers of this process go on at once, still under the database lock; the
    /// lock itself is released by a task queued (as an exclusive writer) behind the writers
    /// waiting now, so a busy server pays one lock and unlock per batch of writes, and
    /// another server gets its turn after each batch.
    fn drop(&mut self) {
        let Some(local) = self.local.take() else {
            return;
        };
        let Some((lock, releasing)) = self.release.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left to unlock with: closing the connection releases the lock.
            match local {
                Local::Exclusive(mut g) => *g.get_mut() = Slot::default(),
                Local::Shared { slot, .. } => {
                    if let Ok(mut s) = slot.try_lock() {
                        *s = Slot::default();
                    }
                }
            }
            return;
        };
        drop(local);
        if releasing.swap(true, Ordering::AcqRel) {
            return;
        }
        rt.spawn(async move {
            let mut g = lock.write_owned().await;
            releasing.store(false, Ordering::Release);
            g.get_mut().release().await;
        });
    }
}

impl Cluster {
    pub fn new(url: &str) -> Cluster {
        let shared = url.starts_with("postgres:") || url.starts_with("postgresql:");
        Cluster {
            url: shared.then(|| url.to_string()),
            instance: patchcast_pack::keys::random_hex(8).unwrap_or_else(|_| "0".into()),
            write: Arc::new(RwLock::new(Mutex::new(Slot::default()))),
            shared_room: Arc::new(Semaphore::new(SHARED_WRITERS)),
            releasing: Arc::new(AtomicBool::new(false)),
            leader: Arc::new(AtomicBool::new(!shared)),
            out: std::sync::OnceLock::new(),
        }
    }

    /// Whether other servers may share this database (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.url.is_some()
    }

    /// The exclusive write lock: alone in this process, and on PostgreSQL on the database.
    pub async fn write(&self) -> Result<WriteGuard> {
        self.guard(Mode::Exclusive).await
    }

    /// The shared write lock, for transactions that lock the rows they decide on: with the
    /// other shared writers of every server, never with an exclusive one. Exclusive on
    /// SQLite, which has one writer and no row locks.
    pub async fn write_shared(&self) -> Result<WriteGuard> {
        self.guard(if self.shared() {
            Mode::Shared
        } else {
            Mode::Exclusive
        })
        .await
    }

    async fn guard(&self, want: Mode) -> Result<WriteGuard> {
        let local = match want {
            Mode::Shared => {
                let room = self
                    .shared_room
                    .clone()
                    .acquire_owned()
                    .await
                    .context("the write lock is closed")?;
                let g = self.write.clone().read_owned().await;
                if let Some(url) = &self.url {
                    g.lock().await.hold(url, want).await?;
                }
                Local::Shared {
                    slot: g,
                    _room: room,
                }
            }
            Mode::Exclusive => {
                let mut g = self.write.clone().write_owned().await;
                if let Some(url) = &self.url {
                    g.get_mut().hold(url, want).await?;
                }
                Local::Exclusive(g)
            }
        };
        Ok(WriteGuard {
            local: Some(local),
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
    let mut conn: Option<Conn> = None;
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

    #[test]
    fn an_exclusive_hold_covers_both_modes_a_shared_one_only_shared() {
        use Mode::*;
        assert!(Exclusive.covers(Exclusive));
        assert!(Exclusive.covers(Shared));
        assert!(Shared.covers(Shared));
        assert!(!Shared.covers(Exclusive));
    }
}
