//! An HTTPS client for console tests: pinned to the test server's certificate, no redirects
//! followed (tests look at them), cookies kept by hand so each one's attributes can be checked.

use patchcast::web::pages::enc;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use std::collections::BTreeMap;

pub struct WebClient {
    pub base: String,
    http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The full `Set-Cookie` line for cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
}

/// The value of `name="…"` in the first form field with that name.
pub fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

impl WebClient {
    pub fn new(url: &str, fingerprint: &str) -> WebClient {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                patchcast::transport::tls::pinned_client_config(fingerprint).unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        WebClient {
            base: url.to_string(),
            http,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, rb: reqwest::RequestBuilder) -> Reply {
        let rb = if self.cookies.is_empty() {
            rb
        } else {
            rb.header(reqwest::header::COOKIE, self.cookie_header())
        };
        let res = rb.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        for v in headers.get_all(SET_COOKIE).iter() {
            let line = v.to_str().unwrap();
            let (kv, attrs) = line.split_once(';').unwrap_or((line, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if val.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
        Reply {
            status,
            headers,
            body: res.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let rb = self.http.get(format!("{}{path}", self.base));
        self.finish(rb).await
    }

    pub async fn get_lang(&mut self, path: &str, accept_language: &str) -> Reply {
        let rb = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT_LANGUAGE, accept_language);
        self.finish(rb).await
    }

    pub async fn get_bearer(&mut self, path: &str, token: &str) -> Reply {
        let rb = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        self.finish(rb).await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let rb = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        self.finish(rb).await
    }

    /// Opens the sign-in page and signs in; returns the sign-in reply.
    pub async fn sign_in(&mut self, account: &str, password: &str) -> Reply {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let token = hidden(&page.body, "csrf");
        self.post_form(
            "/login",
            &[
                ("account", account),
                ("password", password),
                ("csrf", &token),
                ("next", "/"),
            ],
        )
        .await
    }
}

/// Adds a console account with the real CLI, the password on stdin.
pub fn add_account(data: &std::path::Path, name: &str, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_patchcast"))
        .args(["admin", "add", name])
        .env("PATCHCAST_DATA", data)
        .env_remove("PATCHCAST_SERVER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
