//! A W3C WebDriver client for browser tests (feature `testing`): starts
//! `chromedriver` on a free port and one headless Chromium session, and
//! speaks the protocol as plain HTTP and JSON. Debian: `apt-get install
//! chromium chromium-driver`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether chromedriver can be started here.
pub fn available() -> bool {
    Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A chromedriver process and one headless Chromium session; both end on
/// drop.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let http = reqwest::Client::new();
        let mut browser = Browser {
            driver,
            http,
            session: format!("http://127.0.0.1:{port}"),
        };
        // chromedriver takes a moment to listen.
        let status = format!("{}/status", browser.session);
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(response) = browser.http.get(&status).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(ready, "chromedriver did not start");
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        });
        if let Some(binary) = binary {
            options["binary"] = json!(binary);
        }
        let created = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome", "goog:chromeOptions": options
                }}}),
            )
            .await?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session: {created}"))?;
        browser.session = format!("{}/session/{id}", browser.session);
        Ok(browser)
    }

    /// One WebDriver command; its `value`.
    pub async fn call(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response: Value = request.send().await?.json().await?;
        if response["value"]["error"].is_string() {
            anyhow::bail!("WebDriver {path}: {}", response["value"]);
        }
        Ok(response["value"].clone())
    }

    pub async fn go(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no element {css}"))
    }

    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.call("POST", &format!("/element/{element}/clear"), json!({}))
            .await?;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await
            .map(drop)
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/url", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/source", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits until the page's source satisfies `ready` (a click that
    /// submits a form may return before the next page has loaded).
    pub async fn wait_for_page(&self, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        for _ in 0..100 {
            let source = self.source().await?;
            if ready(&source) {
                return Ok(source);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the expected page did not load within 10 s")
    }
}
