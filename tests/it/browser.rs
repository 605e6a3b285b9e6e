//! A real browser for the Console's tests and benchmark: Debian's `chromium`, headless, driven
//! through `chromedriver` (WebDriver) by fantoccini. Calls block, so tests read as steps.
//!
//! `scripts/test.sh` installs both (`apt-get install chromium chromium-driver`).

#![allow(dead_code)] // the benchmark uses a part

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a step waits for the page to show what it expects.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    /// Where screenshots go.
    pub shots: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /session/{id}/se/log`'s command: what the page wrote to the browser's console.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    /// A fresh headless browser (its own profile) of `width` × `height` CSS pixels.
    pub fn open(shots: &Path, width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium and chromium-driver (scripts/test.sh installs them)"
        );
        std::fs::create_dir_all(shots).unwrap();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let began = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(began.elapsed() < PATIENCE, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a browser session");
        let b = Browser {
            rt,
            client: Some(client),
            driver,
            shots: shots.to_owned(),
        };
        b.resize(width, height);
        b
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).unwrap();
    }

    /// The viewport (not the window) made `width` × `height`.
    pub fn resize(&self, width: u32, height: u32) {
        self.rt
            .block_on(self.c().set_window_size(width, height))
            .unwrap();
        let inner = self.js("return [innerWidth, innerHeight]", vec![]);
        let (w, h) = (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
        let (dw, dh) = (width as i64 - w as i64, height as i64 - h as i64);
        if dw != 0 || dh != 0 {
            self.rt
                .block_on(
                    self.c()
                        .set_window_size((width as i64 + dw) as u32, (height as i64 + dh) as u32),
                )
                .unwrap();
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt.block_on(self.c().execute(script, args)).unwrap()
    }

    /// The element `css`, once it is on the page.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.c()
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Types `text` into the field `css`, as a person would (clearing it first).
    pub fn fill(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let el = self.find(css).await;
            el.clear().await.unwrap();
            el.send_keys(text).await.unwrap();
        });
    }

    /// Clicks `css` once it is on the page. A live update may rebuild the element between
    /// finding and clicking it; then the click goes to the one that replaced it.
    pub fn click(&self, css: &str) {
        self.rt.block_on(async {
            let began = Instant::now();
            loop {
                match self.find(css).await.click().await {
                    Ok(()) => return,
                    Err(e) if e.to_string().contains("stale") && began.elapsed() < PATIENCE => {}
                    Err(e) => panic!("clicking {css}: {e}"),
                }
            }
        });
    }

    /// Chooses the option `value` of the select `css`.
    pub fn select(&self, css: &str, value: &str) {
        let ok = self.js(
            "const s = document.querySelector(arguments[0]); if (!s) return false; \
             s.value = arguments[1]; s.dispatchEvent(new Event('change')); return s.value === arguments[1];",
            vec![json!(css), json!(value)],
        );
        assert_eq!(ok, json!(true), "{css} has no option {value}");
    }

    /// The text of `css`, or `None` while it is not on the page.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Waits until `css` shows a text that `ok` accepts; that text.
    pub fn until_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let began = Instant::now();
        loop {
            let t = self.text(css);
            if let Some(t) = t.as_deref().filter(|t| ok(t)) {
                return t.to_owned();
            }
            assert!(
                began.elapsed() < PATIENCE,
                "{css} never showed {what}; it shows {t:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `css` contains `needle`.
    pub fn until_contains(&self, css: &str, needle: &str) -> String {
        self.until_text(css, needle, |t| t.contains(needle))
    }

    /// Waits until `script` (a function body) returns `true`.
    pub fn until_js(&self, script: &str, what: &str) {
        let began = Instant::now();
        while self.js(script, vec![]) != serde_json::Value::Bool(true) {
            assert!(began.elapsed() < PATIENCE, "never {what}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until nothing matches `css`.
    pub fn until_gone(&self, css: &str) {
        let began = Instant::now();
        while self.text(css).is_some() {
            assert!(began.elapsed() < PATIENCE, "{css} stayed on the page");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Saves what the page looks like as `<shots>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.c().screenshot()).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// What the browser's console received since the last call, at level `SEVERE`
    /// (uncaught errors, refused resources, CSP violations, failed requests).
    pub fn console_errors(&self) -> Vec<String> {
        let log = self.rt.block_on(self.c().issue_cmd(BrowserLog)).unwrap();
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
