//! Reading the VERSIONINFO resource of Windows PE files (.exe, .dll, .sys, …).

use patchcast_core::model::types::FileVersion;

/// What a file says about its version resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionResource {
    /// A PE file whose VERSIONINFO holds this FileVersion.
    Version(FileVersion),
    /// A PE file without a VERSIONINFO resource.
    PeWithout,
    /// Not a PE file at all (text, script, ELF, archive, …).
    NotPe,
}

pub fn version_resource(bytes: &[u8]) -> VersionResource {
    let Ok(pe) = pelite::PeFile::from_bytes(bytes) else {
        return VersionResource::NotPe;
    };
    let fixed = pe
        .resources()
        .ok()
        .and_then(|r| r.version_info().ok())
        .and_then(|v| v.fixed().copied());
    match fixed {
        Some(f) => {
            let v = f.dwFileVersion;
            VersionResource::Version(FileVersion([v.Major, v.Minor, v.Patch, v.Build]))
        }
        None => VersionResource::PeWithout,
    }
}

/// Reads a file's version resource through a memory map, so a large installer is not
/// copied into memory just to find its VERSIONINFO.
pub fn file_version_resource(path: &std::path::Path) -> std::io::Result<VersionResource> {
    // A PE header alone is larger than this; mapping an empty file would fail.
    if std::fs::metadata(path)?.len() < 64 {
        return Ok(VersionResource::NotPe);
    }
    let map = pelite::FileMap::open(path)?;
    Ok(version_resource(map.as_ref()))
}

/// Extensions of files that normally carry a version resource on Windows.
pub const VERSIONED_EXTENSIONS: &[&str] = &[
    "exe", "dll", "sys", "ocx", "cpl", "drv", "scr", "mui", "efi", "ax", "tlb",
];

/// Extensions of text, script and data files, which never carry one.
pub const UNVERSIONED_EXTENSIONS: &[&str] = &[
    "txt",
    "ini",
    "inf",
    "cfg",
    "conf",
    "config",
    "xml",
    "json",
    "yaml",
    "yml",
    "log",
    "htm",
    "html",
    "css",
    "js",
    "bat",
    "cmd",
    "ps1",
    "psm1",
    "vbs",
    "wsf",
    "sh",
    "py",
    "pl",
    "rb",
    "reg",
    "md",
    "csv",
    "properties",
    "policy",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_not_pe() {
        assert_eq!(
            version_resource(b"#!/bin/sh\necho hi\n"),
            VersionResource::NotPe
        );
        assert_eq!(
            version_resource(b"MZ but not really"),
            VersionResource::NotPe
        );
    }

    #[test]
    fn real_pe_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pe");
        let with = std::fs::read(dir.join("withversion.dll")).unwrap();
        assert_eq!(
            version_resource(&with),
            VersionResource::Version("6.0.6002.18287".parse().unwrap())
        );
        let without = std::fs::read(dir.join("noversion.exe")).unwrap();
        assert_eq!(version_resource(&without), VersionResource::PeWithout);
        assert_eq!(
            file_version_resource(&dir.join("withversion.dll")).unwrap(),
            version_resource(&with)
        );
        assert_eq!(
            file_version_resource(&dir.join("noversion.exe")).unwrap(),
            VersionResource::PeWithout
        );
    }
}
