//! Streaming SHA-256 of files and readers.

use patchcast_core::model::types::Sha256;
use sha2::Digest;
use std::io::{self, Read};
use std::path::Path;

/// Large reads keep the hashing loop at the speed of the SHA-NI instructions.
const BUF: usize = 1 << 20;

pub fn sha256_reader(mut r: impl Read, mut progress: impl FnMut(u64)) -> io::Result<(Sha256, u64)> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
        progress(n as u64);
    }
    Ok((Sha256(h.finalize().into()), total))
}

pub fn sha256_file(path: &Path) -> io::Result<(Sha256, u64)> {
    sha256_reader(std::fs::File::open(path)?, |_| {})
}

pub fn sha256_bytes(data: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(data).into())
}
