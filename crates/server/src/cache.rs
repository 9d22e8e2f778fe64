//! Small tables every check-in consults (group policies, the update-source list, relay
//! roles) and agents' credential hashes, kept in memory between their changes. The database
//! stays the truth: a change clears the copy here and, through `cluster::Signal::Changed`,
//! on every other server; a lost listener clears them all.
//!
//! A load that began before a clear is not kept (the generation moved on), so a reader
//! racing a change can never put the old value back.

use crate::db::scenarios::Scheduled;
use anyhow::Result;
use patchcast_core::model::scenario::Scenario;
use patchcast_core::sources::SourceList;
use patchcast_proto::schedule_api::PolicyView;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// What a server keeps in memory between changes.
#[derive(Default)]
pub struct Caches {
    pub policies: Cached<Vec<PolicyView>>,
    /// The update-source list and when it was set; None: never set.
    pub sources: Cached<Option<(SourceList, i64)>>,
    /// Machines with a relay row, and whether it is enabled.
    pub relay_roles: Cached<HashMap<String, bool>>,
    /// Agents' credential hashes by machine id.
    pub agents: CachedMap<String, String>,
    /// Scenario specs and how scenarios were scheduled (`db::scenarios::scheduled`): neither
    /// changes once written.
    pub specs: CachedMap<String, Arc<Scenario>>,
    pub scheduled: CachedMap<String, Option<Scheduled>>,
}

impl Caches {
    /// After a change to policies, sources or relays (here or on another server).
    pub fn tables_changed(&self) {
        self.policies.clear();
        self.sources.clear();
        self.relay_roles.clear();
    }

    /// After a machine was removed: its agent is refused from then on.
    pub fn machine_removed(&self, id: &str) {
        self.agents.forget(&id.to_string());
        self.relay_roles.clear();
    }

    /// When signals from other servers may have been missed.
    pub fn clear(&self) {
        self.tables_changed();
        self.agents.clear();
    }
}

/// One value, loaded on first use.
pub struct Cached<T> {
    slot: Mutex<(u64, Option<Arc<T>>)>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            slot: Mutex::new((0, None)),
        }
    }
}

impl<T> Cached<T> {
    pub async fn get<F: Future<Output = Result<T>>>(
        &self,
        load: impl FnOnce() -> F,
    ) -> Result<Arc<T>> {
        let generation = {
            let s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = &s.1 {
                return Ok(v.clone());
            }
            s.0
        };
        let v = Arc::new(load().await?);
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 == generation {
            s.1 = Some(v.clone());
        }
        Ok(v)
    }

    pub fn clear(&self) {
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.1 = None;
    }
}

/// Values by key, each loaded on first use; only found values are kept.
pub struct CachedMap<K, V> {
    map: Mutex<(u64, HashMap<K, V>)>,
}

impl<K, V> Default for CachedMap<K, V> {
    fn default() -> Self {
        CachedMap {
            map: Mutex::new((0, HashMap::new())),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CachedMap<K, V> {
    pub async fn get<F: Future<Output = Result<Option<V>>>>(
        &self,
        key: &K,
        load: impl FnOnce() -> F,
    ) -> Result<Option<V>> {
        let generation = {
            let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = m.1.get(key) {
                return Ok(Some(v.clone()));
            }
            m.0
        };
        let v = load().await?;
        if let Some(v) = &v {
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.0 == generation {
                m.1.insert(key.clone(), v.clone());
            }
        }
        Ok(v)
    }

    /// Forgets one key (and any load under way).
    pub fn forget(&self, key: &K) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.0 += 1;
        m.1.remove(key);
    }

    pub fn clear(&self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.0 += 1;
        m.1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_racing_a_clear_is_not_kept() {
        let c: Cached<u32> = Cached::default();
        let v = c
            .get(|| async {
                // A change lands while this load reads the old value.
                c.clear();
                Ok(1)
            })
            .await
            .unwrap();
        assert_eq!(*v, 1);
        assert_eq!(*c.get(|| async { Ok(2) }).await.unwrap(), 2);
        assert_eq!(*c.get(|| async { Ok(3) }).await.unwrap(), 2);
        c.clear();
        assert_eq!(*c.get(|| async { Ok(4) }).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_forgotten_key_is_loaded_again_and_a_miss_is_not_kept() {
        let m: CachedMap<String, u32> = CachedMap::default();
        let k = "m-1".to_string();
        assert_eq!(m.get(&k, || async { Ok(None) }).await.unwrap(), None);
        assert_eq!(m.get(&k, || async { Ok(Some(1)) }).await.unwrap(), Some(1));
        assert_eq!(m.get(&k, || async { Ok(Some(2)) }).await.unwrap(), Some(1));
        let raced = m
            .get(&"m-2".to_string(), || async {
                m.forget(&"m-2".to_string());
                Ok(Some(5))
            })
            .await
            .unwrap();
        assert_eq!(raced, Some(5));
        assert_eq!(
            m.get(&"m-2".to_string(), || async { Ok(None) })
                .await
                .unwrap(),
            None
        );
        m.forget(&k);
        assert_eq!(m.get(&k, || async { Ok(None) }).await.unwrap(), None);
    }
}
