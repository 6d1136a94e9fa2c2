//! A real browser for dashboard tests: Debian's headless Chromium driven over WebDriver
//! (chromedriver + fantoccini). Screenshots land in `target/screenshots/` as artefacts.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session; the driver process dies with it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh Chromium profile, at a desktop
    /// (or, with `phone`, a phone) window size.
    pub async fn start(width: u32, height: u32) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/setup.sh (apt: chromium chromium-driver)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Types into the input with this CSS selector (clearing it first).
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Clicks a button that submits a form and waits for the next page to load (the old
    /// document goes stale), so the next step never reads the page being left.
    pub async fn submit(&self, css: &str) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "{css} did not load a new page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.client
            .wait()
            .for_element(Locator::Css("body"))
            .await
            .unwrap();
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap(),
            Err(e) => {
                let body = match self.client.find(Locator::Css("body")).await {
                    Ok(b) => b.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                panic!(
                    "no {css:?} on {}: {e}\n--- page ---\n{body}",
                    self.path().await
                )
            }
        }
    }

    /// The page's visible text.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// The current value of the input matching `css` (what was typed or kept).
    pub async fn value(&self, css: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
    }

    /// The attribute `name` of the first element matching `css`, if it has one.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .attr(name)
            .await
            .unwrap()
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// Waits until an element matching `css` is on the page.
    pub async fn wait_for(&self, css: &str) {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap();
    }

    /// Waits (up to 10 s) until the text of `css` starts with `prefix`: for what the
    /// page's own script updates after an edit.
    pub async fn wait_for_text(&self, css: &str, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text(css).await;
            if text.starts_with(prefix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} stuck at {text:?}, waiting for {prefix:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the page is wider than the window (it scrolls sideways).
    pub async fn scrolls_sideways(&self) -> bool {
        self.client
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap()
    }

    /// GETs `url` from inside the page (with the browser's cookies): (status, content
    /// type, body).
    pub async fn fetch(&self, url: &str) -> (u64, String, String) {
        let got = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 fetch(arguments[0]).then(r => r.text().then(t => done([r.status, r.headers.get('content-type') || '', t])));",
                vec![serde_json::Value::String(url.to_owned())],
            )
            .await
            .unwrap();
        (
            got[0].as_u64().unwrap(),
            got[1].as_str().unwrap().to_owned(),
            got[2].as_str().unwrap().to_owned(),
        )
    }

    /// A signed-in page's session: the `cookie` header value and the form's CSRF token.
    pub async fn session(&self) -> (String, String) {
        let csrf = self.value("input[name=csrf]").await.unwrap();
        let cookie = self.client.get_named_cookie("lm_session").await.unwrap();
        (format!("lm_session={}", cookie.value()), csrf)
    }

    /// Saves a PNG of the window as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots")
}
