//! The hosted payment page in a real headless Chromium, driven through
//! chromedriver with the W3C WebDriver protocol (plain HTTP and JSON, so
//! no WebDriver crate is needed). Debian: `apt-get install chromium
//! chromium-driver`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;
use serde_json::{Value, json};

use crate::support::{ALL, DECLINED, Engine, TestApp, agency_token, payment_request};

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
struct Browser {
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
    async fn start() -> anyhow::Result<Self> {
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
    async fn call(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
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

    async fn go(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
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

    async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
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

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await
            .map(drop)
    }

    async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/url", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .call("GET", "/source", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits until the page's source satisfies `ready` (a click that
    /// submits a form may return before the next page has loaded).
    async fn wait_for_page(&self, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        for _ in 0..100 {
            let source = self.source().await?;
            if ready(&source) {
                return Ok(source);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the expected page did not load within 10 s")
    }

    async fn fill_card(&self, number: &str) -> anyhow::Result<()> {
        self.type_into("#card_number", number).await?;
        self.type_into("#expiry_month", "12").await?;
        self.type_into("#expiry_year", "2099").await?;
        self.type_into("#cvc", "123").await?;
        self.type_into("#cardholder_name", "Ana Pérez").await
    }
}

/// The agency's site the payer returns to.
async fn agency_site() -> anyhow::Result<String> {
    let router = axum::Router::new().route(
        "/vuelta",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>Municipio</title><h1>Gracias</h1>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/vuelta", listener.local_addr()?.port());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

pub async fn payer_pays_and_is_declined_in_a_real_browser(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let return_url = agency_site().await?;
    let browser = Browser::start().await?;
    let request = |amount| pb::CreatePaymentRequest {
        return_url: return_url.clone(),
        ..payment_request(amount, "CLP")
    };

    // Success, after correcting a mistyped number.
    let payment = app.create(&token, request(15_000)).await;
    browser.go(&payment.next_url).await?;
    let page = browser
        .wait_for_page(|p| p.contains("Número de la tarjeta"))
        .await?;
    assert!(page.contains("CLP 15.000"));
    browser.fill_card("4242 4242 4242 4241").await?;
    browser.click("button[value=pay]").await?;
    // The error summary shows, and the error is tied to its field.
    let page = browser
        .wait_for_page(|p| p.contains("Hay un problema"))
        .await?;
    assert!(page.contains("card_number-error"));
    browser.fill_card("4242 4242 4242 4242").await?;
    browser.click("button[value=pay]").await?;
    browser.wait_for_page(|p| p.contains("Gracias")).await?;
    assert_eq!(browser.url().await?, return_url);
    assert_eq!(
        app.get(&token, &payment.payment_id).await.state(),
        S::Success
    );

    // Declined: the payer is sent back all the same.
    let payment = app.create(&token, request(2_000)).await;
    browser.go(&payment.next_url).await?;
    browser
        .wait_for_page(|p| p.contains("Número de la tarjeta"))
        .await?;
    browser.fill_card(DECLINED).await?;
    browser.click("button[value=pay]").await?;
    browser.wait_for_page(|p| p.contains("Gracias")).await?;
    assert_eq!(browser.url().await?, return_url);
    let declined = app.get(&token, &payment.payment_id).await;
    assert_eq!(
        (declined.state(), declined.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Rejected)
    );
    browser.call("DELETE", "", Value::Null).await?;
    Ok(())
}
