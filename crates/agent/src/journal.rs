//! The delivery journal: one JSON file per delivery under `DIR/journal/`, written before each
//! step starts (temporary file, fsync, rename), so a kill at any moment — or a reboot — resumes
//! the delivery where it was.
//!
//! Reports are queued in the entry's outbox in the same write that moves it to the next step,
//! then sent; an acknowledged report leaves the outbox. A restart therefore resends exactly the
//! reports that were not acknowledged, with their original `seq`, and never one that was.
//! Finished deliveries are remembered in `done.json` (the last few hundred), so a replayed work
//! item for the same delivery and attempt is not executed twice.

use super::config::write_atomic;
use anyhow::{Context, Result, bail};
pub use patchcast_core::pipeline::Step;
pub use patchcast_runner::Entry;
use std::path::PathBuf;

/// How many finished deliveries are remembered.
const DONE_KEPT: usize = 500;

fn key(delivery_id: &str, attempt: u32) -> String {
    format!("{delivery_id}#{attempt}")
}

/// A delivery id becomes a file and directory name: only plain characters are accepted.
pub fn check_delivery_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!(
            "delivery id `{id}` is not a plain name (letters, digits, `-`, `_`, `.`); refusing the work item"
        );
    }
    Ok(())
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: PathBuf) -> Journal {
        Journal { dir }
    }

    fn path(&self, delivery_id: &str) -> PathBuf {
        self.dir.join(format!("{delivery_id}.json"))
    }

    fn done_path(&self) -> PathBuf {
        self.dir.join("done.json")
    }

    pub fn save(&self, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(entry)?;
        write_atomic(&self.path(&entry.work.delivery_id), &bytes)
    }

    pub fn load(&self, delivery_id: &str) -> Result<Option<Entry>> {
        let path = self.path(delivery_id);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("journal entry {} is malformed", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Every journaled delivery, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if id == "done" {
                continue;
            }
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            if let Some(entry) = self.load(id)? {
                found.push((modified, entry));
            }
        }
        found.sort_by_key(|(m, _)| *m);
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    pub fn done_list(&self) -> Vec<String> {
        std::fs::read(self.done_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn is_done(&self, delivery_id: &str, attempt: u32) -> bool {
        self.done_list().contains(&key(delivery_id, attempt))
    }

    /// Remembers the delivery as finished, then forgets its entry (in this order: a kill in
    /// between leaves an entry that is known to be done, never a lost one).
    pub fn finish(&self, entry: &Entry) -> Result<()> {
        let mut done = self.done_list();
        let k = key(&entry.work.delivery_id, entry.work.attempt);
        if !done.contains(&k) {
            done.push(k);
        }
        let excess = done.len().saturating_sub(DONE_KEPT);
        done.drain(..excess);
        write_atomic(&self.done_path(), &serde_json::to_vec(&done)?)?;
        let path = self.path(&entry.work.delivery_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_that_are_not_plain_names_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", "C:\\x"] {
            assert!(check_delivery_id(bad).is_err(), "{bad}");
        }
        for good in ["d-1", "0f3a.2", "abc_DEF"] {
            check_delivery_id(good).unwrap();
        }
    }
}
