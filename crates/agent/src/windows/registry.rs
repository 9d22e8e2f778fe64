//! Registry reads. A 64-bit agent sees the 64-bit view; 32-bit installers write theirs under
//! WOW6432Node. A rule names a key as its installer wrote it, so each read tries the 64-bit
//! view and then the 32-bit one.

use winreg::enums::*;
use winreg::{HKEY, RegKey};

const VIEWS: [u32; 2] = [KEY_WOW64_64KEY, KEY_WOW64_32KEY];

/// `HKLM\SOFTWARE\Vendor` → the hive and the path under it.
fn split(key: &str) -> Option<(HKEY, &str)> {
    let (hive, path) = key.split_once('\\').unwrap_or((key, ""));
    let root = match hive.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => HKEY_LOCAL_MACHINE,
        "HKCU" | "HKEY_CURRENT_USER" => HKEY_CURRENT_USER,
        "HKCR" | "HKEY_CLASSES_ROOT" => HKEY_CLASSES_ROOT,
        "HKU" | "HKEY_USERS" => HKEY_USERS,
        _ => return None,
    };
    Some((root, path))
}

/// The key in the first view that has it.
pub fn open(key: &str) -> Option<RegKey> {
    let (root, path) = split(key)?;
    VIEWS.iter().find_map(|view| {
        RegKey::predef(root)
            .open_subkey_with_flags(path, KEY_READ | view)
            .ok()
    })
}

/// The key in each view that has it (the same key twice when a hive is not redirected).
pub fn open_all(key: &str) -> Vec<RegKey> {
    let Some((root, path)) = split(key) else {
        return Vec::new();
    };
    VIEWS
        .iter()
        .filter_map(|view| {
            RegKey::predef(root)
                .open_subkey_with_flags(path, KEY_READ | view)
                .ok()
        })
        .collect()
}

/// A value as text: `HKLM\SOFTWARE\Vendor\Product\Value` (`(Default)` for the key's default
/// value); `None` when neither view has it.
pub fn value_text(key_and_value: &str) -> Option<String> {
    let (key, value) = key_and_value.rsplit_once('\\')?;
    let name = if value == "(Default)" { "" } else { value };
    open_all(key)
        .iter()
        .find_map(|k| k.get_raw_value(name).ok())
        .map(|raw| raw.to_string())
}

/// A string value of `key`, or empty.
pub fn string(key: &RegKey, name: &str) -> String {
    key.get_value(name).unwrap_or_default()
}

/// A DWORD value of `key`.
pub fn dword(key: &RegKey, name: &str) -> Option<u32> {
    key.get_value(name).ok()
}

/// The names of `key`'s subkeys.
pub fn subkeys(key: &RegKey) -> Vec<String> {
    key.enum_keys().filter_map(Result::ok).collect()
}
