//! The console's own words in English and Japanese (result codes come from `core::errors`),
//! and which language a request gets: `?lang=` (remembered in a cookie), else the cookie,
//! else the browser's Accept-Language, else English.

use axum::http::{HeaderMap, header};
use patchcast_core::errors::Lang;
use serde_json::{Map, Value};

/// (key, English, Japanese). Templates use `{{t.key}}`.
const STRINGS: &[(&str, &str, &str)] = &[
    ("app", "patchcast console", "patchcast コンソール"),
    ("dashboard", "Dashboard", "ダッシュボード"),
    ("machines", "Machines", "コンピュータ"),
    ("scenarios", "Scenarios", "シナリオ"),
    ("sign_in", "Sign in", "サインイン"),
    ("sign_out", "Sign out", "サインアウト"),
    ("account", "Account", "アカウント"),
    ("password", "Password", "パスワード"),
    (
        "sign_in_failed",
        "Sign-in failed: the account name or password is incorrect.",
        "サインインできませんでした。アカウント名またはパスワードが正しくありません。",
    ),
    (
        "sign_in_locked",
        "Too many failed sign-ins for this account or from this address. Sign-in is refused for the next {minutes} minute(s).",
        "このアカウントまたはこのアドレスからのサインイン失敗が多すぎます。あと {minutes} 分間はサインインできません。",
    ),
    ("signed_in_as", "Signed in as", "サインイン中:"),
    ("language", "日本語", "English"),
    (
        "compliance",
        "Compliance per package",
        "パッケージごとの適用状況",
    ),
    ("package", "Package", "パッケージ"),
    ("applied", "Applied", "適用済み"),
    ("not_applied", "Not applied", "未適用"),
    ("not_applicable", "Not applicable", "対象外"),
    ("failed", "Failed", "失敗"),
    ("in_progress", "In progress", "処理中"),
    (
        "recent_errors",
        "Recent errors by code (7 days)",
        "最近のエラー(コード別、7日間)",
    ),
    ("code", "Code", "コード"),
    ("count", "Count", "件数"),
    ("last", "Last", "最終"),
    ("message", "Message", "メッセージ"),
    ("remedy", "Remedy", "対処方法"),
    (
        "stale",
        "Machines not seen for 24 hours",
        "24時間以上応答のないコンピュータ",
    ),
    ("none", "None.", "ありません。"),
    (
        "stale_more",
        "more machines not seen for 24 hours (the longest silent are listed)",
        "台のコンピュータも24時間以上応答がありません(応答のない期間が長い順に表示)",
    ),
    ("previous_page", "← Previous", "← 前へ"),
    ("next_page", "Next →", "次へ →"),
    ("page", "Page", "ページ"),
    ("hostname", "Host name", "ホスト名"),
    ("os", "OS", "OS"),
    ("arch", "Architecture", "アーキテクチャ"),
    ("lang", "Language", "言語"),
    ("state", "State", "状態"),
    ("group", "Group", "グループ"),
    ("groups", "Groups", "グループ"),
    ("labels", "Labels", "ラベル"),
    ("last_seen", "Last seen", "最終応答"),
    ("address", "Address", "アドレス"),
    ("search", "Search", "検索"),
    ("filter", "Filter", "絞り込み"),
    ("any", "(any)", "(すべて)"),
    ("export", "Export", "エクスポート"),
    ("inventory", "Inventory", "インベントリ"),
    ("os_version", "OS version", "OS バージョン"),
    ("service_pack", "Service pack", "サービスパック"),
    (
        "disk",
        "System drive free / total",
        "システムドライブ 空き / 合計",
    ),
    ("memory", "Memory", "メモリ"),
    ("agent", "Agent version", "エージェント バージョン"),
    ("agent_state", "Agent state", "エージェント状態"),
    ("boot_time", "Booted", "起動時刻"),
    ("pending_reboot", "Restart pending", "再起動待ち"),
    (
        "interfaces",
        "Network interfaces",
        "ネットワーク インターフェイス",
    ),
    (
        "installed_updates",
        "Installed updates",
        "適用済み更新プログラム",
    ),
    (
        "installed_packages",
        "Installed packages",
        "インストール済みパッケージ",
    ),
    (
        "packages_state",
        "Packages on this machine",
        "このコンピュータのパッケージ",
    ),
    ("history", "Delivery history", "配信履歴"),
    ("attempt", "Attempt", "試行"),
    ("attempts", "Attempts", "試行回数"),
    ("event", "Event", "イベント"),
    ("time", "Time (UTC)", "時刻 (UTC)"),
    ("scenario", "Scenario", "シナリオ"),
    ("exit_code", "Exit code", "終了コード"),
    ("output_tail", "Output (last part)", "出力(末尾)"),
    ("explanation", "Identification", "判定の根拠"),
    ("check", "Check", "確認項目"),
    ("outcome", "Outcome", "結果"),
    ("detail", "Detail", "詳細"),
    ("updated", "Updated", "更新"),
    ("progress", "Progress by state", "状態別の進捗"),
    ("total", "Total", "合計"),
    (
        "done",
        "All deliveries have finished.",
        "すべての配信が終了しました。",
    ),
    (
        "running",
        "Deliveries are still running; this page updates live.",
        "配信中です。このページは自動で更新されます。",
    ),
    ("deliveries", "Deliveries", "配信"),
    ("created", "Created", "作成"),
    ("waves", "Rollout waves", "ロールアウトのウェーブ"),
    ("wave", "Wave (group)", "ウェーブ(グループ)"),
    ("gate", "Gate", "ゲート"),
    ("yes", "yes", "はい"),
    ("no", "no", "いいえ"),
    ("not_found", "Not found", "見つかりません"),
    ("machine_count", "machines", "台"),
    // The FAQ's Q1: the main screen's banner when an auto-update failed.
    ("autoupdate_error", "Auto-update error", "自動更新エラー"),
    ("loop_stopped", "re-delivery stopped", "再配信停止"),
    ("mac", "MAC address", "MACアドレス"),
    ("source", "Source", "取得元"),
    (
        "emulated",
        "emulated endpoint",
        "エミュレートされたエンドポイント",
    ),
    // Actions (each a CSRF-protected form; every one is in the audit).
    ("actions", "Actions", "操作"),
    ("retry", "Retry", "再試行"),
    ("cancel", "Cancel", "キャンセル"),
    (
        "cancel_scenario",
        "Cancel waiting deliveries",
        "待機中の配信をキャンセル",
    ),
    ("rollout", "Rollout", "ロールアウト"),
    ("pause", "Pause", "一時停止"),
    ("resume", "Resume", "再開"),
    ("abort", "Abort", "中止"),
    (
        "start_scenario",
        "Start a scenario: a published package on a group",
        "シナリオを開始: 公開済みパッケージをグループへ",
    ),
    ("start", "Start", "開始"),
    ("autoupdate", "Automatic update", "自動更新"),
    ("assign", "Assign", "割り当て"),
    ("unassign", "Withdraw", "割り当て解除"),
    ("assigned", "Assigned", "割り当て済み"),
    ("audit", "Audit", "監査ログ"),
    ("when", "When (UTC)", "日時(UTC)"),
    ("who", "Who", "実行者"),
    ("action", "Action", "操作"),
    ("target", "Target", "対象"),
];

fn pick(lang: Lang, en: &'static str, ja: &'static str) -> &'static str {
    match lang {
        Lang::En => en,
        Lang::Ja => ja,
    }
}

/// Every console string in `lang`, for templates as `t`.
pub fn strings(lang: Lang) -> Value {
    let mut m = Map::new();
    for (k, en, ja) in STRINGS {
        m.insert((*k).into(), Value::from(pick(lang, en, ja)));
    }
    Value::Object(m)
}

/// One console string in `lang` (`key` must be in the table: a unit test checks the keys).
pub fn word(key: &str, lang: Lang) -> &'static str {
    STRINGS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or("", |(_, en, ja)| pick(lang, en, ja))
}

/// A state's label (`core::delivery::state_label`), owned for templates.
pub fn state_label(state: &str, lang: Lang) -> String {
    patchcast_core::delivery::state_label(state, lang).to_string()
}

/// A delivery's state label, naming the successor of a superseded package
/// ("Superseded by X", 置き換え済み(X)).
pub fn delivery_label(d: &patchcast_proto::admin_api::DeliveryRow, lang: Lang) -> String {
    let label = state_label(d.state_name(), lang);
    match &d.state {
        patchcast_core::delivery::State::Superseded { by } => match lang {
            Lang::En => format!("{label} by {by}"),
            Lang::Ja => format!("{label}({by})"),
        },
        _ => label,
    }
}

/// `?lang=` first (and whether to remember it), then the cookie, then Accept-Language.
pub fn lang_of(h: &HeaderMap, query: Option<&str>) -> (Lang, bool) {
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        return (Lang::from_tag(q), true);
    }
    if let Some(c) = super::auth::cookie(h, super::auth::LANG_COOKIE) {
        return (Lang::from_tag(c), false);
    }
    let accept = h
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (Lang::from_tag(accept), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_has_both_languages_and_keys_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (k, en, ja) in STRINGS {
            assert!(!en.is_empty() && !ja.is_empty(), "{k}");
            assert!(seen.insert(*k), "duplicate {k}");
        }
    }

    #[test]
    fn language_precedence() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, "ja-JP,ja;q=0.9".parse().unwrap());
        assert_eq!(lang_of(&h, None), (Lang::Ja, false), "browser language");
        assert_eq!(lang_of(&h, Some("en")), (Lang::En, true), "the switch wins");
        h.insert(header::COOKIE, "patchcast_lang=en".parse().unwrap());
        assert_eq!(
            lang_of(&h, None),
            (Lang::En, false),
            "the remembered switch"
        );
        assert_eq!(lang_of(&HeaderMap::new(), None), (Lang::En, false));
    }
}
