//! The agent's log file when it has no console (the Windows service): appended to
//! ROOT/agent.log and rotated by size while the service runs (a service may run for months
//! without a restart), keeping `KEEP` older files: agent.log.1 (newest) … agent.log.KEEP.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size at which the file is rotated.
pub const ROTATE_AT: u64 = 10 << 20;
/// Rotated files kept besides the current one.
pub const KEEP: u32 = 3;

pub struct RotatingFile {
    inner: Mutex<Inner>,
}

struct Inner {
    path: PathBuf,
    limit: u64,
    file: File,
    len: u64,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

impl RotatingFile {
    pub fn open(path: &Path, limit: u64) -> io::Result<RotatingFile> {
        let (file, len) = open(path)?;
        Ok(RotatingFile {
            inner: Mutex::new(Inner {
                path: path.to_path_buf(),
                limit,
                file,
                len,
            }),
        })
    }
}

impl Inner {
    /// agent.log → .1 → .2 …, the oldest dropped; then a fresh agent.log.
    fn rotate(&mut self) -> io::Result<()> {
        let _ = std::fs::remove_file(numbered(&self.path, KEEP));
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        (self.file, self.len) = open(&self.path)?;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Rotated between lines (the subscriber writes one line at a time), never inside one.
        if self.len > 0 && self.len + buf.len() as u64 > self.limit {
            // A failed rotation (say, a .1 held open by a viewer) keeps logging here and
            // tries again a limit's worth later, not at every line.
            if self.rotate().is_err() {
                self.len = 0;
            }
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
}

/// What the log subscriber writes through: one handle per line, the file shared.
pub struct Line<'a>(&'a RotatingFile);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.inner.lock() {
            Ok(mut i) => i.write(buf),
            Err(_) => Err(io::Error::other("log file lock poisoned")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RotatingFile {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_between_lines_and_keeps_three_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let f = RotatingFile::open(&path, 100).unwrap();
        let line = [b'x'; 39];
        for i in 0..20u8 {
            let mut l = line.to_vec();
            l[0] = b'a' + i;
            l.push(b'\n');
            tracing_subscriber::fmt::MakeWriter::make_writer(&f)
                .write_all(&l)
                .unwrap();
        }
        // 40-byte lines, 100-byte files: two lines a file, whole lines only.
        for p in [
            path.clone(),
            numbered(&path, 1),
            numbered(&path, 2),
            numbered(&path, 3),
        ] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(text.len(), 80, "{}: {text:?}", p.display());
            assert!(text.lines().all(|l| l.len() == 39), "{text:?}");
        }
        assert!(!numbered(&path, 4).exists());
        // The newest lines are in the current file, the ones before in .1.
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.starts_with('s') && now.contains("\nt"), "{now:?}");
        assert!(
            std::fs::read_to_string(numbered(&path, 1))
                .unwrap()
                .starts_with('q')
        );
        // Reopened, it appends and rotates at once when full.
        drop(f);
        let f = RotatingFile::open(&path, 100).unwrap();
        tracing_subscriber::fmt::MakeWriter::make_writer(&f)
            .write_all(format!("next{}\n", "x".repeat(35)).as_bytes())
            .unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("next"));
        assert!(
            std::fs::read_to_string(numbered(&path, 1))
                .unwrap()
                .starts_with('s')
        );
    }
}
