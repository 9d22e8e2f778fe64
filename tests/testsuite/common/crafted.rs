//! Hand-made archives for refusal tests: a good archive's signed manifest and signature,
//! then whatever entries a test writes.

/// The good archive's `manifest.json` and `manifest.sig`, then the entries `add` appends.
pub fn crafted(good: &[u8], add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut a = tar::Archive::new(std::io::Cursor::new(good));
    let mut b = tar::Builder::new(Vec::new());
    for e in a.entries().unwrap().take(2) {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        b.append_data(&mut h, e.path().unwrap(), &data[..]).unwrap();
    }
    add(&mut b);
    b.into_inner().unwrap()
}

/// One entry with exactly these bytes as its name and link (no checks on the way), in the
/// GNU header form patchcast's builder writes.
pub fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    link: Option<&[u8]>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
}
