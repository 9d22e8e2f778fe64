//! The error catalog: stable result codes, each with a title, a message and a remedy in
//! English and Japanese, and whether waiting for the next auto-update may clear it.
//!
//! Pure. E01–E14, W15, W16 and E17 carry over the FAQ's "detailed information" 1–16 and Q3
//! so that administrators who know the old messages recognise them; E18 onwards cover what
//! that product could not detect (signatures, hashes, timeouts, reboots, identification,
//! sources, clock skew).
//! A result is stored as a code plus `Params`, never as text, and rendered in the reader's
//! language when shown: `render(Code::E06, Lang::Ja, &params)`.
//!
//! Templates take `{name}` placeholders and `[first|second|…]` groups: a group shows its
//! first alternative whose placeholders all have values (the last may be empty), so a
//! missing parameter drops a clause instead of printing a placeholder or "unknown".

use crate::model::types::FormatError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! codes {
    ($($(#[$doc:meta])* $code:ident),* $(,)?) => {
        /// A stable result code. Serialized as its string form (`"E06"`, `"W15"`); the numbers
        /// never change meaning, new codes take new numbers.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        pub enum Code {
            $($(#[$doc])* $code),*
        }

        impl Code {
            /// Every code, in catalog order.
            pub const ALL: &'static [Code] = &[$(Code::$code),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$code => stringify!($code)),*
                }
            }
        }
    };
}

codes! {
    /// Error while preparing the auto-update (server short of resources).
    E01,
    /// Socket error (patchcast: the connection was reset during the download, after retries).
    E02,
    /// Could not connect to the machine.
    E03,
    /// No package applies to the machine's OS, language or architecture.
    E04,
    /// Re-checking the connection to the machine failed.
    E05,
    /// Could not create the files on the machine (free disk < 3 × the package size).
    E06,
    /// Error preparing the file transfer (patchcast: the staging directory cannot be created).
    E07,
    /// The file transfer thread could not start (patchcast: the transfer ended early, after
    /// retries).
    E08,
    /// The file transfer control thread could not start (patchcast: the transfer stalled, after
    /// retries).
    E09,
    /// Error transferring a file.
    E10,
    /// Transfer to the machine failed (network, or the file locked by antivirus).
    E11,
    /// Error executing a package (network, disk, extraction).
    E12,
    /// No "auto-update finished" reply from the machine.
    E13,
    /// Auto-update notification failed: unknown host.
    E14,
    /// Time setting deferred: the machine is busy updating or running a scenario.
    W15,
    /// Time setting failed: the machine is off or its port is closed.
    W16,
    /// The server's disk is full (FAQ Q3).
    E17,
    /// The package signature is invalid.
    E18,
    /// A payload file does not match its hash in the signed manifest.
    E19,
    /// The install timed out or was killed.
    E20,
    /// The install exited with a failure exit code.
    E21,
    /// Applied, but the machine must restart.
    W22,
    /// Whether the package is applied cannot be determined.
    E23,
    /// The package keeps being delivered without ever identifying as applied.
    E24,
    /// Extraction refused: an archive entry is unsafe.
    E25,
    /// The agent's credential or the server's certificate was rejected.
    E26,
    /// No custom update source could provide the content and the fallback switch says not
    /// to use the server.
    E27,
    /// The machine's clock differs from the server's by more than `CLOCK_SKEW_LIMIT_SECS`
    /// (`patchcast-agent doctor`).
    E28,
    /// A package this one `requires:` failed on the machine, or was never delivered to it
    /// (`core::lifecycle::requirements`).
    E29,
    /// An agent self-upgrade failed: the new agent did not check in within its deadline (or
    /// could not be put in place), and the previous binary was restored.
    E30,
}

/// How far a machine's clock may be from the server's before `doctor` reports E28: relay
/// tokens, schedules and result times are judged by the server's clock.
pub const CLOCK_SKEW_LIMIT_SECS: u64 = 5 * 60;

/// Result codes and lint problems share one notion of severity.
pub use crate::model::problem::Severity;

impl Code {
    /// Warnings (W*) report something that still ends well without anyone acting now.
    pub fn severity(self) -> Severity {
        match self {
            Code::W15 | Code::W16 | Code::W22 => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// Whether the next auto-update may clear this without an administrator acting.
    pub fn transient(self) -> bool {
        entry(self).transient
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Code {
    type Err = FormatError;
    /// Accepts any case and surrounding spaces (`" e06 "`); serde accepts only the exact form.
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let want = s.trim();
        all()
            .find(|c| c.as_str().eq_ignore_ascii_case(want))
            .ok_or_else(|| {
                let known: Vec<&str> = all().map(Code::as_str).collect();
                FormatError(format!(
                    "`{s}` is not a patchcast result code; expected one of {}",
                    known.join(", ")
                ))
            })
    }
}

/// Every code, in catalog order.
pub fn all() -> impl Iterator<Item = Code> {
    Code::ALL.iter().copied()
}

/// The language of rendered text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    #[default]
    En,
    Ja,
}

impl Lang {
    /// From a language tag or an Accept-Language value: `ja`, `ja-JP`, `ja_JP` → Japanese;
    /// in a list (`fr, ja;q=0.5`) the most preferred language we have wins; anything else,
    /// including an empty or malformed value, → English.
    pub fn from_tag(tag: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for item in tag.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = range.split(['-', '_']).next().unwrap_or("");
            let lang = if primary.eq_ignore_ascii_case("ja") {
                Lang::Ja
            } else if primary.eq_ignore_ascii_case("en") {
                Lang::En
            } else {
                continue;
            };
            // q=0 means "not acceptable"; on a tie the earlier item wins.
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One text in both languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Text {
    pub en: &'static str,
    pub ja: &'static str,
}

impl Text {
    pub fn in_lang(self, lang: Lang) -> &'static str {
        match lang {
            Lang::En => self.en,
            Lang::Ja => self.ja,
        }
    }
}

/// A catalog entry. `message` and `remedy` are templates for `render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub code: Code,
    pub title: Text,
    pub message: Text,
    pub remedy: Text,
    /// Whether the next auto-update may clear this without an administrator acting
    /// (a network blip, a file held by antivirus). A property of the code, never of the text.
    pub transient: bool,
}

/// The catalog entry of `code`.
pub fn entry(code: Code) -> &'static Entry {
    // CATALOG is in declaration order; a test pins that.
    &CATALOG[code as usize]
}

/// What a rendered message may name. Stored with the code so that the text can be rendered
/// later in the reader's language.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_bytes: Option<u64>,
    /// As the package's `success_exit_codes`: `i32`, so Windows HRESULTs show as negatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The identification rule concerned, as the identification explanation names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Anything else worth showing (an OS error, a reason); appended when the template does
    /// not place it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A code rendered for one reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub remedy: String,
}

/// The message and remedy of `code` in `lang`, with `params` filled in.
pub fn render(code: Code, lang: Lang, params: &Params) -> Rendered {
    let e = entry(code);
    let template = e.message.in_lang(lang);
    let mut message = fill(template, lang, params);
    if let Some(detail) = params
        .detail
        .as_deref()
        .filter(|_| !template.contains("{detail}"))
    {
        match lang {
            Lang::En => message.push_str(&format!(" Detail: {detail}")),
            Lang::Ja => message.push_str(&format!("詳細: {detail}")),
        }
    }
    Rendered {
        code,
        severity: code.severity(),
        message,
        remedy: fill(e.remedy.in_lang(lang), lang, params),
    }
}

/// Decimal units, one decimal place: 120_000_000 → "120.0 MB" (the FAQ's 100 MB → 300 MB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut unit = 1;
    loop {
        let div = 1000u128.pow(unit as u32);
        let tenths = (u128::from(n) * 10 + div / 2) / div;
        // 999_950 rounds to 1000.0 kB; show it as 1.0 MB instead.
        if tenths < 10_000 || unit == UNITS.len() - 1 {
            return format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit]);
        }
        unit += 1;
    }
}

enum Slot {
    Value(String),
    Missing,
    /// A name no parameter has: left as written so that tests catch the typo.
    Unknown,
}

fn slot(name: &str, params: &Params) -> Slot {
    let value = match name {
        "file" => params.file.clone(),
        "package" => params.package.clone(),
        "rule" => params.rule.clone(),
        "detail" => params.detail.clone(),
        "free_bytes" => params.free_bytes.map(human_bytes),
        "required_bytes" => params.required_bytes.map(human_bytes),
        "exit_code" => params.exit_code.map(|c| {
            if c < 0 {
                format!("{c} (0x{:08X})", c as u32)
            } else {
                c.to_string()
            }
        }),
        _ => return Slot::Unknown,
    };
    value.map_or(Slot::Missing, Slot::Value)
}

/// Placeholder names in a template fragment, in order.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
}

/// Expands `[a|b|…]` groups, then placeholders; values are inserted once, never re-read.
fn fill(template: &str, lang: Lang, params: &Params) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('[') {
        substitute(&mut out, before, lang, params);
        let (group, tail) = after.split_once(']').unwrap_or((after, ""));
        let chosen = group
            .split('|')
            .find(|alt| placeholders(alt).all(|name| !matches!(slot(name, params), Slot::Missing)));
        if let Some(alt) = chosen {
            substitute(&mut out, alt, lang, params);
        }
        rest = tail;
    }
    substitute(&mut out, rest, lang, params);
    out
}

fn substitute(out: &mut String, text: &str, lang: Lang, params: &Params) {
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        let Some((name, tail)) = after.split_once('}') else {
            out.push('{');
            rest = after;
            continue;
        };
        match slot(name, params) {
            Slot::Value(v) => out.push_str(&v),
            // Templates put optional values in groups; this is the safety net.
            Slot::Missing => out.push_str(match lang {
                Lang::En => "(not recorded)",
                Lang::Ja => "(不明)",
            }),
            Slot::Unknown => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = tail;
    }
    out.push_str(rest);
}

// Remedy text shared by several codes. Macros, not consts, so that `concat!` can use them.
macro_rules! ping_and_restart_en {
    () => {
        "1. Ping the machine (`ping <IP address>` or `ping <host name>`); if there is no reply, \
         check the network settings. 2. If the network is fine, restart the patchcast-agent \
         service on the machine (start it if it is stopped)."
    };
}
macro_rules! ping_and_restart_ja {
    () => {
        "1. コンピュータに対して「ping IPアドレス」または「ping ホスト名」を実行してください。\
         応答が無い場合,ネットワークの設定に問題が無いか確認してください。\
         2. ネットワークに問題がなければ,コンピュータ側で patchcast-agent サービスを\
         再起動してください(停止していれば開始してください)。"
    };
}
macro_rules! restart_server_en {
    () => {
        "The patchcast server may have run short of resources. Restart the patchcast server."
    };
}
macro_rules! restart_server_ja {
    () => {
        "管理サーバのリソースが不足した可能性があります。\
         管理サーバ(patchcast server)を再起動してください。"
    };
}

const fn text(en: &'static str, ja: &'static str) -> Text {
    Text { en, ja }
}

static CATALOG: [Entry; 30] = [
    Entry {
        code: Code::E01,
        title: text(
            "Error while preparing the auto-update",
            "自動更新準備中エラー",
        ),
        message: text(
            "An error occurred while preparing the auto-update.",
            "自動更新準備中エラーが発生しました。",
        ),
        remedy: text(restart_server_en!(), restart_server_ja!()),
        transient: false,
    },
    Entry {
        code: Code::E02,
        title: text("Socket error", "ソケットエラー"),
        message: text(
            "A socket error occurred[ while downloading {file}|].",
            "[「{file}」のダウンロード中に|]ソケットエラーが発生しました。",
        ),
        // patchcast: the connection was reset during the download, on every quick retry.
        remedy: text(
            "The connection was reset while the machine downloaded the package, on every \
             retry. Something between the machine and the patchcast server or update source \
             (a firewall, proxy or security appliance) may be cutting it: check it and the \
             server's network settings (is TCP/IP configured?). The package is delivered \
             again at the next auto-update.",
            "パッケージのダウンロード中に接続がリセットされ,再試行しても同じでした。\
             コンピュータと管理サーバ(またはアップデート元)の間のファイアウォール,\
             プロキシ,セキュリティ機器などが接続を切断している可能性があります。\
             それらと管理サーバのネットワーク設定(TCP/IPプロトコルが実装されているか)を\
             確認してください。次回自動更新時に再度配信されます。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E03,
        title: text(
            "Could not connect to the machine",
            "クライアントとの接続失敗",
        ),
        message: text(
            "Connecting to the machine failed.",
            "クライアントとの接続に失敗しました。",
        ),
        remedy: text(
            concat!(
                "The server could not connect to the machine. ",
                ping_and_restart_en!()
            ),
            concat!(
                "管理サーバがコンピュータと接続できませんでした。",
                ping_and_restart_ja!()
            ),
        ),
        transient: true,
    },
    Entry {
        code: Code::E04,
        title: text(
            "No applicable package for the machine",
            "適用できるパッケージなし",
        ),
        message: text(
            "Searching for a package applicable to the machine failed.[ Package {package} does \
             not target this machine's OS, language or architecture.|]",
            "クライアントに適用できるパッケージの検索に失敗しました。\
             [パッケージ「{package}」はこのコンピュータのOS・言語・アーキテクチャを\
             対象としていません。|]",
        ),
        remedy: text(
            "The machine's OS may not be among the package's targets. Check the machine's OS, \
             language and architecture against the package's targets. This is not a failed \
             delivery: the package is simply not for this machine.",
            "エラーとなったコンピュータのOSが,パッケージの対象外である可能性があります。\
             コンピュータのOSと言語(およびアーキテクチャ)を,パッケージの対象(targets)と\
             照らし合わせて確認してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E05,
        title: text(
            "Re-check of the connection failed",
            "クライアントとの接続の再確認失敗",
        ),
        message: text(
            "Re-checking the connection to the machine failed.",
            "クライアントとの接続の再確認に失敗しました。",
        ),
        remedy: text(
            concat!(
                "The server could not connect to the machine. ",
                ping_and_restart_en!()
            ),
            concat!(
                "管理サーバがコンピュータと接続できませんでした。",
                ping_and_restart_ja!()
            ),
        ),
        transient: true,
    },
    Entry {
        code: Code::E06,
        title: text(
            "Could not create the files on the machine",
            "クライアント側のファイル生成失敗",
        ),
        message: text(
            "Could not create the files on the machine[: free space on the system drive is \
             {free_bytes}; {required_bytes} (3 × the package size) is needed|: free space on \
             the system drive is {free_bytes}; at least 3 × the package size is needed|: \
             {required_bytes} of free space (3 × the package size) is needed on the system \
             drive|].",
            "クライアント側のファイル生成に失敗しました。\
             [システムドライブの空き容量は{free_bytes}です。\
             {required_bytes}(パッケージ容量の3倍)以上必要です。\
             |システムドライブの空き容量は{free_bytes}です。パッケージ容量の3倍以上必要です。\
             |システムドライブの空き容量が{required_bytes}(パッケージ容量の3倍)以上必要です。|]",
        ),
        remedy: text(
            "The machine's disk may be short of space. Check the free space on the machine's \
             disk: free space must normally be at least 3 times the size of the package being \
             transferred (e.g. to apply a 100 MB package, the machine's system drive needs at \
             least 300 MB free).",
            "コンピュータのディスク容量が不足している可能性があります。\
             コンピュータディスクの空き容量を確認してください。\
             通常,ディスクの空き容量は転送するパッケージ容量の3倍以上必要です。\
             (例)100MBのパッケージを適用する場合,\
             クライアントコンピュータのシステムドライブの空き容量は300MB以上必要です。",
        ),
        // The FAQ re-delivers at the next auto-update; freeing disk fixes it, the package stays.
        transient: true,
    },
    Entry {
        code: Code::E07,
        title: text(
            "Error preparing the file transfer",
            "ファイル転送準備時エラー",
        ),
        message: text(
            "An error occurred while preparing the file transfer.",
            "ファイル転送準備時にエラーが発生しました。",
        ),
        // patchcast: the agent cannot create the directory it stages the package in.
        remedy: text(
            "An error occurred in the processing before the file transfer: the agent could not \
             create the directory it stages the package in (a read-only file system, missing \
             permissions, or a file in the way). Check that the agent's data directory (its \
             `work` directory) on the machine is writable, then deliver the package again.",
            "ファイル転送前の処理でエラーが発生しました。エージェントがパッケージを一時保存する\
             ディレクトリを作成できませんでした(読み取り専用のファイルシステム,権限不足,\
             同名のファイルなど)。コンピュータ上のエージェントのデータディレクトリ\
             (work ディレクトリ)に書き込めるか確認し,パッケージを再度配信してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E08,
        title: text(
            "The file transfer thread could not start",
            "ファイル転送スレッドの生成失敗",
        ),
        message: text(
            "Creating the file transfer thread failed.[ The transfer of {file} ended before \
             its last byte.|]",
            "ファイル転送スレッドの生成に失敗しました。\
             [「{file}」の転送が最後まで届く前に終了しました。|]",
        ),
        // patchcast: the download ended before its last byte, on every quick retry.
        remedy: text(
            "The transfer ended before its last byte on every retry: the patchcast server or \
             update source closed the connection early, or its transfer task stopped. Check \
             that the server (or source) keeps running and its log, and the network in between \
             (ping the machine). If the server is short of resources, restart it. The package \
             is delivered again at the next auto-update.",
            "再試行しても,ファイル転送が最後まで届く前に終了しました。管理サーバ\
             (またはアップデート元)が接続を途中で閉じたか,転送処理が停止しています。\
             管理サーバ(またはアップデート元)が動作し続けているかとそのログ,\
             間のネットワーク(ping)を確認してください。管理サーバのリソースが不足している\
             場合は再起動してください。次回自動更新時に再度配信されます。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E09,
        title: text(
            "The file transfer control thread could not start",
            "ファイル転送コントロールスレッドの生成失敗",
        ),
        message: text(
            "Creating the file transfer control thread failed.[ The transfer of {file} \
             stalled.|]",
            "ファイル転送コントロールスレッドの生成に失敗しました。\
             [「{file}」の転送が停止しました。|]",
        ),
        // patchcast: the transfer stalled (no byte for the idle limit), on every quick retry.
        remedy: text(
            "The transfer stalled: no data arrived for its idle limit, on every retry. Check \
             the network between the machine and the patchcast server or update source (ping; \
             a firewall or proxy holding connections open) and whether the server is \
             overloaded (restart it if it is short of resources). The package is delivered \
             again at the next auto-update.",
            "ファイル転送が停止しました(一定時間データが届かない状態が,再試行しても続きました)。\
             コンピュータと管理サーバ(またはアップデート元)の間のネットワーク\
             (ping,接続を保持したままにするファイアウォールやプロキシ)と,\
             管理サーバが過負荷になっていないかを確認してください\
             (リソースが不足している場合は再起動してください)。\
             次回自動更新時に再度配信されます。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E10,
        title: text("Error transferring a file", "ファイル転送時エラー"),
        message: text(
            "An error occurred while transferring [file {file}|a file].",
            "ファイル[「{file}」|]転送時にエラーが発生しました。",
        ),
        remedy: text(
            concat!(
                "A communication error occurred during the file transfer. ",
                ping_and_restart_en!()
            ),
            concat!(
                "ファイル転送中通信エラーが発生しました。",
                ping_and_restart_ja!()
            ),
        ),
        transient: true,
    },
    Entry {
        code: Code::E11,
        title: text(
            "File transfer to the machine failed",
            "クライアントへのファイル転送失敗",
        ),
        message: text(
            "Transferring [file {file}|the files] to the machine failed.",
            "クライアントへのファイル[「{file}」の|]転送に失敗しました。",
        ),
        remedy: text(
            concat!(
                "A communication error occurred during the file transfer. ",
                ping_and_restart_en!(),
                " 3. The file being transferred may be in use by another process on the \
                 machine: antivirus software scanning it can lock it and make the transfer \
                 fail. In that case the file is transferred again and applied at the next \
                 auto-update."
            ),
            concat!(
                "ファイル転送中通信エラーが発生しました。",
                ping_and_restart_ja!(),
                "3. コンピュータ上で転送中のファイルが他のプロセスによって使用されている\
                 可能性があります。コンピュータ上でウィルススキャンソフトなどが動作している\
                 場合,転送中のファイルがウィルススキャンソフトによってロックされ転送に失敗する\
                 場合があります。その場合,次回自動更新実行時に再度ファイルの転送を行い,\
                 適用を行います。"
            ),
        ),
        transient: true,
    },
    Entry {
        code: Code::E12,
        title: text("Error executing a package", "パッケージ実行時エラー"),
        message: text(
            "An error occurred while executing [package {package}|the package].",
            "パッケージ[「{package}」|]実行時にエラーが発生しました。",
        ),
        remedy: text(
            "The package was transferred to the machine, but an error occurred when it was run. \
             1. Ping the machine (`ping <IP address>` or `ping <host name>`); if there is no \
             reply, check the network settings. 2. The disk may have run short of space: check \
             the free space on the machine's disk, which must normally be at least 3 times the \
             package size (e.g. a 100 MB package needs at least 300 MB free on the system \
             drive). 3. Extraction may have failed: check whether the package transferred to \
             the machine is sound and can be extracted on the machine.",
            "パッケージをコンピュータに転送しましたが,実行時にエラーが発生しました。\
             1. コンピュータに対して「ping IPアドレス」または「ping ホスト名」を実行してください。\
             応答が無い場合,ネットワークの設定に問題が無いか確認してください。\
             2. ディスク容量が不足になった可能性があります。\
             コンピュータのディスクの空き容量を確認してください。\
             通常,ディスクの空き容量は転送するパッケージの3倍以上必要です。\
             (例)100MBのパッケージを適用する場合,\
             クライアントコンピュータのシステムドライブの空き容量は300MB以上必要です。\
             3. 解凍に失敗した可能性があります。\
             コンピュータに転送したパッケージに問題があるかどうかを確認してください。\
             パッケージがコンピュータ上で解凍できるかどうか確認してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E13,
        title: text(
            "No \"auto-update finished\" reply",
            "「自動更新終了」応答なし",
        ),
        message: text(
            "The \"auto-update finished\" reply from the machine was not received.",
            "クライアントからの「自動更新終了」応答を受け取れませんでした。",
        ),
        remedy: text(ping_and_restart_en!(), ping_and_restart_ja!()),
        transient: true,
    },
    Entry {
        code: Code::E14,
        title: text(
            "Auto-update notification failed: unknown host",
            "自動更新通知時ソケットエラー(ホスト不明)",
        ),
        message: text(
            "A socket error occurred while notifying the auto-update: no such host is known.",
            "自動更新通知時にソケットエラーが発生しました。そのようなホストは不明です。",
        ),
        remedy: text(
            concat!(
                "The machine's host name could not be resolved; check name resolution (DNS, \
                 hosts file) for it. ",
                ping_and_restart_en!()
            ),
            concat!(
                "コンピュータのホスト名を解決できませんでした。\
                 名前解決(DNS,hostsファイル)の設定を確認してください。",
                ping_and_restart_ja!()
            ),
        ),
        transient: true,
    },
    Entry {
        code: Code::W15,
        title: text(
            "Time setting deferred: the machine is busy",
            "自動更新時間設定の延期(クライアント処理中)",
        ),
        message: text(
            "The machine is running an auto-update or a scenario, so the auto-update time \
             setting will take effect after the machine restarts.",
            "クライアントが自動更新中,またはシナリオ実行中の状態であるため,\
             自動更新時間設定はクライアントの再起動後に有効になります。",
        ),
        remedy: text(
            "The auto-update time setting takes effect the next time the machine starts.",
            "自動更新時間設定はコンピュータの次回起動時に有効になります。",
        ),
        transient: true,
    },
    Entry {
        code: Code::W16,
        title: text(
            "Time setting failed: the machine is off or its port is closed",
            "自動更新時間設定失敗(電源OFFまたはポート閉)",
        ),
        message: text(
            "Configuring the machine failed. The auto-update time setting will take effect \
             after the machine restarts.",
            "クライアントの設定に失敗しました。\
             自動更新時間設定はクライアントの再起動後に有効になります。",
        ),
        remedy: text(
            "The connection to the machine failed because it is powered off or its \
             communication port is closed. The auto-update time setting takes effect the next \
             time the machine starts.",
            "クライアントの電源状態がOFF,または,通信ポートが閉じられた状態であるため\
             クライアントとの接続に失敗しました。\
             自動更新時間設定はコンピュータの次回起動時に有効になります。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E17,
        title: text("The server's disk is full", "管理サーバのディスク容量不足"),
        message: text(
            "The auto-update failed: the patchcast server's disk is short of space.[ Free \
             space is {free_bytes}; {required_bytes} is needed.| Free space is {free_bytes}.|]",
            "自動更新に失敗しました。管理サーバのディスク容量が不足しています。\
             [空き容量は{free_bytes}です。{required_bytes}以上必要です。\
             |空き容量は{free_bytes}です。|]",
        ),
        remedy: text(
            "Check the patchcast server's disk space. If it is short, free the space needed, \
             then restart the patchcast server.",
            "管理サーバのディスク容量を確認してください。ディスク容量が不足している場合は,\
             必要なディスク容量を確保した後,管理サーバ(patchcast server)の再起動をしてください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E18,
        title: text("Package signature invalid", "パッケージの署名が不正"),
        message: text(
            "The signature of [package {package}|the package] is invalid; nothing was run.",
            "パッケージ[「{package}」|]の署名が不正です。何も実行していません。",
        ),
        remedy: text(
            "The archive was changed after it was signed, or was signed with a key the agent \
             does not trust. Check the archive on the server with `patchcast package verify`, \
             check the agent's trusted keys, and rebuild and sign the package with `patchcast \
             package build`. Treat an unexplained change as tampering.",
            "署名後にアーカイブが変更されたか,エージェントが信頼していない鍵で署名されています。\
             管理サーバ上のアーカイブを `patchcast package verify` で確認し,\
             エージェントの信頼する鍵を確認したうえで,`patchcast package build` で\
             パッケージを作成し直して署名してください。原因の分からない変更は改ざんとして\
             扱ってください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E19,
        title: text("Payload hash mismatch", "ファイルのハッシュ値不一致"),
        message: text(
            "[File {file}|A file] of [package {package}|the package] does not match its sha256 \
             in the signed manifest; nothing was run.",
            "パッケージ[「{package}」|]のファイル[「{file}」|]が,\
             署名済みマニフェストのsha256と一致しません。何も実行していません。",
        ),
        remedy: text(
            "The file was altered or damaged in storage or on the way. Check the server's \
             content store and any relay or update source the machine uses with `patchcast \
             package verify`, replace the damaged copy, then deliver the package again.",
            "保管中または転送中にファイルが変更されたか破損しています。\
             管理サーバのコンテンツストア,およびコンピュータが使用する中継エージェントや\
             アップデート元を `patchcast package verify` で確認し,\
             破損したコピーを置き換えてから再度配信してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E20,
        title: text(
            "Install timed out or was killed",
            "インストールのタイムアウトまたは強制終了",
        ),
        message: text(
            "The installation of [package {package}|the package] did not finish: it timed out \
             or was killed.",
            "パッケージ[「{package}」|]のインストールが終了しませんでした\
             (タイムアウトまたは強制終了)。",
        ),
        remedy: text(
            "The installer may be waiting for input: check that its command runs unattended \
             (e.g. /quiet). If it only needs longer, raise install.timeout in the package. The \
             package is delivered again at the next auto-update.",
            "インストーラが入力待ちになっている可能性があります。\
             コマンドが無人で実行できるか(/quiet など)確認してください。\
             時間が足りないだけの場合は,パッケージの install.timeout を延ばしてください。\
             次回自動更新時に再度配信されます。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E21,
        title: text(
            "Install exited with a failure exit code",
            "インストールが失敗を示す終了コードで終了",
        ),
        message: text(
            "The installation of [package {package}|the package] exited with [exit code \
             {exit_code}|an exit code that means failure].",
            "パッケージ[「{package}」|]のインストールが\
             [終了コード{exit_code}|失敗を示す終了コード]で終了しました。",
        ),
        remedy: text(
            "The installer reported a failure. Check the end of its output kept with this \
             result and the installer's own log on the machine. If this exit code in fact \
             means success, add it to install.success_exit_codes (or reboot_exit_codes when a \
             restart is needed) in the package.",
            "インストーラが失敗を報告しました。この結果に保存された出力の末尾と,\
             コンピュータ上のインストーラ自身のログを確認してください。\
             この終了コードが実際には成功を意味する場合は,パッケージの \
             install.success_exit_codes(再起動が必要な場合は reboot_exit_codes)に\
             追加してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::W22,
        title: text("Restart required", "再起動待ち"),
        message: text(
            "[Package {package}|The package] was applied, but the machine must restart for it \
             to take effect[ (exit code {exit_code})|].",
            "パッケージ[「{package}」|]は適用されましたが,\
             有効にするにはコンピュータの再起動が必要です[(終了コード{exit_code})|]。",
        ),
        remedy: text(
            "Restart the machine at a convenient time. Whether the package is applied is \
             checked again after the restart.",
            "都合の良い時にコンピュータを再起動してください。\
             再起動後に適用状態を再確認します。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E23,
        title: text(
            "Cannot tell whether the package is applied",
            "適用状態を判断できない",
        ),
        message: text(
            "Whether [package {package}|the package] is applied cannot be determined[: rule \
             {rule} cannot be judged on this machine|].",
            "パッケージ[「{package}」|]の適用状態を判断できません。\
             [識別情報「{rule}」をこのコンピュータで判断できません。|]",
        ),
        remedy: text(
            "An identification rule cannot be judged here, or a fact it needs could not be \
             gathered. A file version on a file without a version resource (text, script) and \
             change rewrite or version_up on a text file can never be judged: for such files \
             leave version empty and use change new or delete. `patchcast package explain` \
             shows every rule's outcome.",
            "識別情報を判断できないか,判断に必要な情報を取得できませんでした。\
             テキスト形式等のファイルバージョンが無いファイルにファイルバージョンを指定した場合,\
             またテキスト形式のファイルで変更タイプに rewrite(書き換え)・\
             version_up(バージョンアップ)を指定した場合は,適用状態を正しく判断することが\
             できません。このようなファイルではファイルバージョンを空にし,\
             変更タイプには new(新規)もしくは delete(削除)を指定してください。\
             `patchcast package explain` で各識別情報の結果を確認できます。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E24,
        title: text(
            "Same package delivered again and again",
            "同じパッケージの繰り返し配信",
        ),
        message: text(
            "[Package {package}|The package] installed successfully but is still not \
             identified as applied, so it is delivered again at every auto-update[; the rule \
             that keeps failing is {rule}|].",
            "パッケージ[「{package}」|]は正常に実行されましたが,適用済みと判断できないため,\
             自動更新の度に繰り返し配信されています。\
             [判断に失敗し続けている識別情報は「{rule}」です。|]",
        ),
        remedy: text(
            "The server delivers a package at every auto-update until it judges the package \
             applied[; here rule {rule} keeps failing|]. Check the following. HotFix: the MS \
             number (ms_number) is wrong: correct it; the HotFix cannot be identified by its MS \
             number: add identification rules; the OS or language is wrong: correct it; an \
             identification rule is wrong: a file version set on a file without a version \
             resource (a text file, for example) can never be judged, so leave version empty, \
             and likewise change rewrite or version_up on a text file: use new or delete. \
             Service Pack: the major or minor version is wrong: correct it; the OS or language \
             is wrong: correct it; identification rules are not needed for a Service Pack: \
             enter the correct major and minor version.",
            "管理サーバがパッケージの適用が行われたと判断するまでは自動更新の度に繰り返し配信が\
             行われます。[判断に失敗し続けている識別情報は「{rule}」です。|]\
             下記を確認し,それぞれの処理を行ってください。\
             <パッケージのタイプがHotFixの場合> \
             MS番号(ms_number)が間違っている:MS番号を確認し,誤りがある場合は修正してください。\
             MS番号では識別できないHotFixである:識別情報を設定してください。\
             OSと言語に誤りがある:OSと言語を確認し,誤りがある場合は修正してください。\
             識別情報に誤りがある:識別情報のファイルパスにテキスト形式等のファイルバージョンが\
             無いファイルを指定した場合,ファイルバージョンを指定すると適用状態を正しく判断する\
             ことができません。ファイルバージョンを指定している場合は,空に修正してください。\
             また,テキスト形式のファイルで変更タイプに「書き換え」(rewrite)\
             「バージョンアップ」(version_up)を指定した場合も同様です。\
             テキスト形式のファイルの場合,変更タイプには「新規」(new)もしくは\
             「削除」(delete)を指定してください。\
             <パッケージのタイプがサービスパックの場合> \
             メジャーバージョン,マイナーバージョンが間違っている:確認し,誤りがある場合は\
             修正してください。OSと言語に誤りがある:OSと言語を確認し,誤りがある場合は\
             修正してください。識別情報に誤りがある:サービスパックの場合,識別情報は必要\
             ありません。メジャーバージョンとマイナーバージョンに正しい値を入力してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E25,
        title: text(
            "Unsafe archive entry: extraction refused",
            "アーカイブ内の危険なエントリ(展開拒否)",
        ),
        message: text(
            "Extraction of [package {package}|the package] was refused: [entry {file}|an entry \
             of the archive] is unsafe[ ({detail})|].",
            "パッケージ[「{package}」|]の展開を拒否しました。\
             [エントリ「{file}」|アーカイブ内のエントリ]が安全ではありません[({detail})|]。",
        ),
        remedy: text(
            "Entries must stay inside the work directory: no absolute paths, no `..`, no links \
             pointing outside. patchcast never builds such an archive, so treat it as tampered: \
             rebuild and sign the package with `patchcast package build` and check where the \
             archive came from.",
            "エントリは作業ディレクトリ内に収まる必要があります(絶対パス,`..`,\
             外部を指すリンクは不可)。patchcast はこのようなアーカイブを作成しないため,\
             改ざんされたものとして扱ってください。`patchcast package build` で\
             パッケージを作成し直して署名し,アーカイブの入手元を確認してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E26,
        title: text(
            "Agent credential or server certificate rejected",
            "エージェント資格情報またはサーバ証明書の拒否",
        ),
        message: text(
            "The connection between the agent and the server was refused: the agent's \
             credential or the server's certificate was rejected.",
            "エージェントと管理サーバ間の接続が拒否されました。\
             エージェントの資格情報または管理サーバの証明書が受け入れられませんでした。",
        ),
        remedy: text(
            "If the server's certificate was renewed, or the agent's credential was revoked or \
             lost, enroll the agent again. If neither changed, something may be intercepting \
             the connection: check the network path before enrolling again.",
            "管理サーバの証明書を更新した場合,またはエージェントの資格情報が失効・紛失した場合は,\
             エージェントを再登録してください。どちらも変更していない場合は,\
             通信が傍受されている可能性があります。再登録の前にネットワーク経路を確認してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E27,
        title: text(
            "No update source available (server fallback off)",
            "利用可能な更新元なし(管理サーバへのフォールバック無効)",
        ),
        message: text(
            "[Package {package}|The package] could not be fetched: every custom update source \
             of this machine failed, and the fallback setting for this kind of content says \
             not to use the server[ ({detail})|].",
            "パッケージ[「{package}」|]を取得できませんでした。このコンピュータのカスタム更新元が\
             すべて利用できず,このコンテンツ種別のフォールバック設定で管理サーバを使用しない\
             設定になっています[({detail})|]。",
        ),
        remedy: text(
            "Check the sources listed for this machine with `patchcast sources test ADDRESS` \
             (relay running, share reachable with the right credentials, URL serving \
             <sha256>.pcpkg), or set the fallback to `server` in sources.yaml and apply it with \
             `patchcast sources set`. The delivery is retried at the next auto-update.",
            "`patchcast sources test アドレス` でこのコンピュータの更新元を確認してください\
             (リレーの稼働,共有フォルダへの接続と資格情報,URL で <sha256>.pcpkg が\
             取得できること)。または sources.yaml のフォールバックを `server` にして\
             `patchcast sources set` で適用してください。次回の自動更新で再配布されます。",
        ),
        transient: true,
    },
    Entry {
        code: Code::E28,
        title: text("Clock skew", "時刻のずれ"),
        message: text(
            "The machine's clock differs from the server's by more than 5 minutes[ ({detail})|].",
            "コンピュータの時刻が管理サーバの時刻と5分以上ずれています[({detail})|]。",
        ),
        remedy: text(
            "Correct the machine's clock and keep it synchronised (NTP, or the Windows Time \
             service) with the same time source as the server. Time windows, relay tokens and \
             result times are judged by the server's clock, so a machine whose clock is off \
             applies updates at the wrong time and relays refuse its tokens.",
            "コンピュータの時刻を修正し,管理サーバと同じ時刻源(NTP,または Windows Time \
             サービス)と同期させてください。自動更新の時間帯,リレーのトークン,結果の時刻は\
             管理サーバの時刻で判断されるため,時刻がずれたコンピュータでは更新が想定外の時刻に\
             行われ,リレーがトークンを拒否します。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E29,
        title: text("Required package not applied", "前提パッケージ未適用"),
        message: text(
            "Not delivered: the package it requires, [{package}|another package], is not \
             applied on this machine[ ({detail})|].",
            "配布されませんでした。前提となるパッケージ[「{package}」|]がこのコンピュータに\
             適用されていません[({detail})|]。",
        ),
        remedy: text(
            "Look at the required package's own result on this machine and correct that first \
             (or add it to the scenario, ahead of this one, when it was never delivered here); \
             then run the scenario again for this machine.",
            "このコンピュータでの前提パッケージの結果を確認し,先にその問題を解決してください\
             (このコンピュータに配布されていない場合はシナリオに追加してください)。その後,\
             このコンピュータに対してシナリオを再実行してください。",
        ),
        transient: false,
    },
    Entry {
        code: Code::E30,
        title: text("Agent upgrade failed", "エージェント更新失敗"),
        message: text(
            "The agent upgrade[ {package}|] failed and the previous agent was restored[: {detail}|].",
            "エージェントの更新[「{package}」|]に失敗したため,以前のエージェントに戻しました[({detail})|]。",
        ),
        remedy: text(
            "Run the new agent binary by hand on a test machine (`patchcast-agent --version`, \
             then `patchcast-agent doctor`) to see why it does not start or cannot reach the \
             server; publish a corrected build under a newer version. The machine keeps \
             running its previous agent meanwhile.",
            "新しいエージェントをテスト用のコンピュータで手動で実行し(`patchcast-agent --version`,\
             続けて `patchcast-agent doctor`),起動しない理由や管理サーバに接続できない理由を\
             確認してください。修正したビルドを新しいバージョンで公開してください。その間,\
             このコンピュータは以前のエージェントで動作し続けます。",
        ),
        transient: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Params {
        Params {
            file: Some("WindowsServer2003-KB958644-x86-JPN.exe".into()),
            package: Some("ms08-067-ws2003-ja".into()),
            free_bytes: Some(100_000_000),
            required_bytes: Some(300_000_000),
            exit_code: Some(1603),
            rule: Some("file %SystemRoot%\\system32\\netapi32.dll version_up 5.2.3790.4392".into()),
            detail: Some("connection reset by peer".into()),
        }
    }

    const LANGS: [Lang; 2] = [Lang::En, Lang::Ja];

    #[test]
    fn codes_round_trip_through_str_and_serde() {
        assert_eq!(all().count(), 30);
        for c in all() {
            let s = c.as_str();
            assert_eq!(s.parse::<Code>(), Ok(c), "{s}");
            assert_eq!(s.to_ascii_lowercase().parse::<Code>(), Ok(c), "{s}");
            assert_eq!(format!(" {s} ").parse::<Code>(), Ok(c), "{s}");
            assert_eq!(c.to_string(), s);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), c);
        }
        for bad in ["", "E15", "W06", "E6", "E006", "E99", "X01", "E01 E02"] {
            let err = bad.parse::<Code>().unwrap_err();
            assert!(err.0.contains("E06"), "{bad}: {err}");
        }
    }

    #[test]
    fn codes_are_numbered_in_order_without_gaps() {
        for (i, c) in all().enumerate() {
            assert_eq!(c as usize, i);
            assert_eq!(CATALOG[i].code, c, "CATALOG out of order at {i}");
            assert_eq!(entry(c).code, c);
            assert_eq!(c.as_str()[1..].parse::<usize>().unwrap(), i + 1);
        }
        assert!(all().zip(all().skip(1)).all(|(a, b)| a < b));
    }

    #[test]
    fn every_entry_has_both_languages() {
        for c in all() {
            let e = entry(c);
            for (what, t) in [
                ("title", e.title),
                ("message", e.message),
                ("remedy", e.remedy),
            ] {
                assert!(!t.en.trim().is_empty(), "{c} {what} en");
                assert!(!t.ja.trim().is_empty(), "{c} {what} ja");
                assert!(!t.ja.is_ascii(), "{c} {what} ja is not Japanese");
                assert!(!t.en.contains("DeploymentManager"), "{c} {what} en");
                assert!(!t.ja.contains("DeploymentManager"), "{c} {what} ja");
            }
        }
    }

    #[test]
    fn nothing_of_the_template_syntax_is_left() {
        for params in [Params::default(), full()] {
            for c in all() {
                for lang in LANGS {
                    let r = render(c, lang, &params);
                    assert_eq!((r.code, r.severity), (c, c.severity()));
                    for (what, text) in [("message", &r.message), ("remedy", &r.remedy)] {
                        assert!(
                            !text.contains(['{', '}', '[', ']', '|']),
                            "{c} {lang} {what}: {text}"
                        );
                        assert!(!text.contains("(not recorded)"), "{c} {what}: {text}");
                        assert!(!text.contains("(不明)"), "{c} {what}: {text}");
                        assert!(!text.contains("  "), "{c} {lang} {what}: {text}");
                    }
                }
            }
        }
    }

    #[test]
    fn full_params_show_every_value_a_template_names() {
        let p = full();
        for c in all() {
            let e = entry(c);
            for lang in LANGS {
                let r = render(c, lang, &p);
                for (template, text) in [
                    (e.message.in_lang(lang), &r.message),
                    (e.remedy.in_lang(lang), &r.remedy),
                ] {
                    for name in placeholders(template) {
                        let Slot::Value(v) = slot(name, &p) else {
                            panic!("{c}: unknown placeholder {{{name}}}");
                        };
                        assert!(text.contains(&v), "{c} {lang} lacks {name}: {text}");
                    }
                }
                // The detail shows exactly once, wherever the template puts it.
                assert_eq!(
                    r.message.matches("connection reset by peer").count(),
                    1,
                    "{c}"
                );
            }
        }
    }

    #[test]
    fn disk_space_figures() {
        // (free, required, language, expected fragments of the message)
        type Case = (Option<u64>, Option<u64>, Lang, &'static [&'static str]);
        let cases: &[Case] = &[
            (
                Some(100_000_000),
                Some(300_000_000),
                Lang::En,
                &[
                    "Could not create the files on the machine: free space on the system drive is 100.0 MB; 300.0 MB (3 × the package size) is needed.",
                ],
            ),
            (
                Some(100_000_000),
                Some(300_000_000),
                Lang::Ja,
                &[
                    "クライアント側のファイル生成に失敗しました。",
                    "空き容量は100.0 MBです。",
                    "300.0 MB(パッケージ容量の3倍)以上必要です。",
                ],
            ),
            (
                Some(120_000_000),
                None,
                Lang::En,
                &["is 120.0 MB; at least 3 × the package size is needed."],
            ),
            (
                None,
                Some(300_000_000),
                Lang::Ja,
                &["空き容量が300.0 MB(パッケージ容量の3倍)以上必要です。"],
            ),
            (
                None,
                None,
                Lang::En,
                &["Could not create the files on the machine."],
            ),
            (
                None,
                None,
                Lang::Ja,
                &["クライアント側のファイル生成に失敗しました。"],
            ),
        ];
        for &(free, required, lang, want) in cases {
            let p = Params {
                free_bytes: free,
                required_bytes: required,
                ..Params::default()
            };
            let r = render(Code::E06, lang, &p);
            for w in want {
                assert!(
                    r.message.contains(w),
                    "{free:?} {required:?} {lang}: {}",
                    r.message
                );
            }
            if free.is_none() && required.is_none() {
                assert!(!r.message.contains("MB"), "{}", r.message);
            }
        }
        let ja = render(Code::E06, Lang::Ja, &Params::default());
        assert!(
            ja.message
                .starts_with("クライアント側のファイル生成に失敗しました。")
        );
        assert!(
            ja.remedy
                .contains("空き容量は転送するパッケージ容量の3倍以上必要です")
        );
    }

    #[test]
    fn human_sizes() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1_500, "1.5 kB"),
            (999_949, "999.9 kB"),
            (999_950, "1.0 MB"),
            (100_000_000, "100.0 MB"),
            (120_000_000, "120.0 MB"),
            (1_234_567_890, "1.2 GB"),
            (u64::MAX, "18.4 EB"),
        ];
        for &(n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn severities() {
        let cases: &[(Code, Severity)] = &[
            (Code::E01, Severity::Error),
            (Code::E06, Severity::Error),
            (Code::W15, Severity::Warning),
            (Code::W16, Severity::Warning),
            (Code::E17, Severity::Error),
            (Code::W22, Severity::Warning),
            (Code::E26, Severity::Error),
        ];
        for &(c, want) in cases {
            assert_eq!(c.severity(), want, "{c}");
        }
        for c in all() {
            assert_eq!(
                c.severity() == Severity::Warning,
                c.as_str().starts_with('W'),
                "{c}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Severity::Warning).unwrap(),
            "\"warning\""
        );
    }

    #[test]
    fn language_tags() {
        let cases: &[(&str, Lang)] = &[
            ("ja", Lang::Ja),
            ("ja-JP", Lang::Ja),
            ("JA_jp", Lang::Ja),
            (" ja-JP ", Lang::Ja),
            ("en", Lang::En),
            ("en-US", Lang::En),
            ("", Lang::En),
            ("fr", Lang::En),
            ("jav", Lang::En),
            ("japanese", Lang::En),
            ("*", Lang::En),
            ("ja-JP,ja;q=0.9,en;q=0.8", Lang::Ja),
            ("en-US,en;q=0.9,ja;q=0.8", Lang::En),
            ("fr-FR, ja;q=0.5", Lang::Ja),
            ("en;q=0.4, ja;q=0.6", Lang::Ja),
            ("ja;q=0", Lang::En),
            ("ja;q=oops", Lang::Ja),
        ];
        for &(tag, want) in cases {
            assert_eq!(Lang::from_tag(tag), want, "{tag:?}");
        }
    }

    #[test]
    fn transient_codes() {
        let cases: &[(Code, bool)] = &[
            (Code::E03, true),
            (Code::E05, true),
            (Code::E10, true),
            (Code::E11, true),
            (Code::E13, true),
            (Code::E14, true),
            (Code::E06, true),
            (Code::E02, true),
            (Code::E08, true),
            (Code::E09, true),
            (Code::E01, false),
            (Code::E07, false),
            (Code::E12, false),
            (Code::E17, false),
            (Code::E18, false),
            (Code::E19, false),
            (Code::E23, false),
            (Code::E24, false),
            (Code::E25, false),
            (Code::E28, false),
            (Code::E29, false),
            (Code::E30, false),
        ];
        for &(c, want) in cases {
            assert_eq!(c.transient(), want, "{c}");
        }
    }

    #[test]
    fn faq_wording_and_service_names() {
        let cases: &[(Code, Lang, &str)] = &[
            (Code::E01, Lang::Ja, "自動更新準備中エラーが発生しました。"),
            (Code::E03, Lang::Ja, "クライアントとの接続に失敗しました。"),
            (
                Code::E10,
                Lang::Ja,
                "ファイル転送時にエラーが発生しました。",
            ),
            (
                Code::E11,
                Lang::Ja,
                "クライアントへのファイル転送に失敗しました。",
            ),
            (
                Code::E12,
                Lang::Ja,
                "パッケージ実行時にエラーが発生しました。",
            ),
            (
                Code::E13,
                Lang::Ja,
                "クライアントからの「自動更新終了」応答を受け取れませんでした。",
            ),
            (Code::E13, Lang::En, "\"auto-update finished\" reply"),
        ];
        for &(c, lang, want) in cases {
            let r = render(c, lang, &Params::default());
            assert!(r.message.contains(want), "{c} {lang}: {}", r.message);
        }
        for c in [
            Code::E03,
            Code::E05,
            Code::E10,
            Code::E11,
            Code::E13,
            Code::E14,
        ] {
            for lang in LANGS {
                let r = render(c, lang, &Params::default());
                assert!(r.remedy.contains("patchcast-agent"), "{c} {lang}");
                assert!(r.remedy.contains("ping"), "{c} {lang}");
            }
        }
        let e11 = render(Code::E11, Lang::En, &Params::default());
        assert!(e11.remedy.contains("antivirus") && e11.remedy.contains("next auto-update"));
        let e17 = render(Code::E17, Lang::Ja, &Params::default());
        assert!(e17.remedy.contains("必要なディスク容量を確保した後"));
    }

    #[test]
    fn redelivery_loop_names_the_rule_and_the_causes() {
        let rule = "file C:\\app\\readme.txt version 1.0.0.0";
        let with = Params {
            rule: Some(rule.into()),
            package: Some("app-fix".into()),
            ..Params::default()
        };
        for lang in LANGS {
            let r = render(Code::E24, lang, &with);
            assert!(
                r.message.contains(rule) && r.remedy.contains(rule),
                "{lang}"
            );
            assert!(r.message.contains("app-fix"), "{lang}");
            let bare = render(Code::E24, lang, &Params::default());
            assert!(!bare.message.contains("「」") && !bare.remedy.contains("「」"));
            for cause in ["ms_number", "rewrite", "version_up", "new", "delete"] {
                assert!(bare.remedy.contains(cause), "{lang} lacks {cause}");
            }
        }
        let en = render(Code::E24, Lang::En, &Params::default()).remedy;
        for cause in [
            "MS number",
            "add identification rules",
            "OS or language",
            "without a version resource",
            "major or minor version",
        ] {
            assert!(en.contains(cause), "lacks {cause}");
        }
    }

    #[test]
    fn parameter_values_are_inserted_literally() {
        let p = Params {
            file: Some("{package}[x|y]".into()),
            package: Some("pkg".into()),
            ..Params::default()
        };
        let r = render(Code::E10, Lang::En, &p);
        assert_eq!(
            r.message,
            "An error occurred while transferring file {package}[x|y]."
        );
    }

    #[test]
    fn exit_codes_and_details() {
        let cases: &[(Code, Lang, Params, &str)] = &[
            (
                Code::E21,
                Lang::En,
                Params {
                    exit_code: Some(1603),
                    ..Params::default()
                },
                "exited with exit code 1603.",
            ),
            (
                Code::E21,
                Lang::Ja,
                Params {
                    exit_code: Some(-2147024891),
                    ..Params::default()
                },
                "終了コード-2147024891 (0x80070005)で終了しました。",
            ),
            (
                Code::E21,
                Lang::En,
                Params::default(),
                "exited with an exit code that means failure.",
            ),
            (
                Code::W22,
                Lang::En,
                Params {
                    exit_code: Some(3010),
                    ..Params::default()
                },
                "to take effect (exit code 3010).",
            ),
            (
                Code::E02,
                Lang::En,
                Params {
                    detail: Some("address in use".into()),
                    ..Params::default()
                },
                "A socket error occurred. Detail: address in use",
            ),
            (
                Code::E02,
                Lang::Ja,
                Params {
                    detail: Some("address in use".into()),
                    ..Params::default()
                },
                "ソケットエラーが発生しました。詳細: address in use",
            ),
            (
                Code::E25,
                Lang::En,
                Params {
                    file: Some("../etc/passwd".into()),
                    detail: Some("path leaves the work directory".into()),
                    ..Params::default()
                },
                "entry ../etc/passwd is unsafe (path leaves the work directory).",
            ),
        ];
        for (c, lang, p, want) in cases {
            let r = render(*c, *lang, p);
            assert!(r.message.contains(want), "{c} {lang}: {}", r.message);
        }
    }

    #[test]
    fn params_and_rendered_serialize_compactly() {
        let p = Params {
            exit_code: Some(3010),
            ..Params::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"exit_code":3010}"#);
        assert_eq!(serde_json::from_str::<Params>(&json).unwrap(), p);
        let r = render(Code::W22, Lang::En, &p);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["code"], "W22");
        assert_eq!(v["severity"], "warning");
    }
}
