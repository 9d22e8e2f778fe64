//! Hashing a 100 MB payload: patchcast's streaming SHA-256 beside `openssl dgst -sha256` on
//! the same file in the same run (goal: patchcast ≥ 0.9 × openssl), and a whole package build.
//!
//! Run: `cargo bench --bench hashing`. Compare the two throughputs as a ratio; absolute
//! figures vary with the machine's load.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::process::Command;

const SIZE: usize = 100 * 1000 * 1000;

fn payload(dir: &std::path::Path) -> std::path::PathBuf {
    // Incompressible, deterministic content (xorshift), so nothing is special-cased.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = vec![0u8; SIZE];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let p = dir.join("payload.bin");
    std::fs::write(&p, data).unwrap();
    p
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = payload(dir.path());
    let mut g = c.benchmark_group("sha256-100MB");
    g.sample_size(10).throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("patchcast", |b| {
        b.iter(|| patchcast::pack::hash::sha256_file(&file).unwrap())
    });
    g.bench_function("openssl-dgst", |b| {
        b.iter(|| {
            let o = Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&file)
                .output()
                .expect("openssl is installed");
            assert!(o.status.success());
        })
    });
    // Sanity: both compute the same digest.
    let ours = patchcast::pack::hash::sha256_file(&file).unwrap().0.hex();
    let theirs = String::from_utf8(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .arg(&file)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(theirs.starts_with(&ours), "{ours} vs {theirs}");

    std::fs::write(
        dir.path().join("package.yaml"),
        "id: big\nkind: application\ntitle: big\ntargets: [{ os: debian }]\nidentification: [{ probe: 'true' }]\npayload: [payload.bin]\ninstall: { command: 'true' }\n",
    )
    .unwrap();
    let raw = patchcast::pack::load(dir.path())
        .map_err(|e| e.to_string())
        .unwrap()
        .raw;
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let out = dir.path().join("big.pcpkg");
    g.bench_function("package-build", |b| {
        b.iter(|| patchcast::pack::archive::build(dir.path(), &raw, &key, &out, |_| {}).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
