//! The citizen sign-in scenarios, over the identity service's HTTP login
//! pages as a browser uses them:
//! - `identity.password-login`: `GET /oauth2/authorize` (the sign-in page
//!   and its CSRF cookie), then `POST` of RUN and password: the credential
//!   check behind the page (argon2id), answered with the consent page;
//! - `identity.code-exchange`: a citizen with a single sign-on session and
//!   remembered consent: `GET /oauth2/authorize` answers at once with a
//!   code, which `POST /oauth2/token` exchanges (PKCE, `client_secret_basic`)
//!   for an ID token and an access token;
//! - `identity.argon2-raw`: no server; argon2id hashes at the service's
//!   parameters on every core of this machine: the floor of a login's cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atiende_proto::identity::v1 as pb;
use tonic::transport::Channel;

const REDIRECT_URI: &str = "http://127.0.0.1:4000/bench-callback";
const PASSWORD: &str = "un largo paseo junto al mar";
/// PKCE: this verifier, and the base64url SHA-256 of it.
const VERIFIER: &str = "e2e-verifier-e2e-verifier-e2e-verifier-e2e-verifier";
const CHALLENGE: &str = "hKAziBtJFh_8a52ORTL6PsY5CrWAgF_49F4gPbk2t6U";

/// What the HTTP scenarios share.
pub struct Login {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: String,
    /// Citizens signed in in turn (one per worker: one citizen's
    /// concurrent sign-ins beyond the lockout threshold are turned away).
    national_ids: Vec<String>,
    next: AtomicU64,
    /// `/oauth2/authorize` with the scenario's parameters.
    authorize_url: String,
    /// `identity.code-exchange`: the session cookie.
    session: Option<String>,
}

fn error(message: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unknown(message.to_string())
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    Some(html.get(start..)?.split('"').next()?.to_owned())
}

fn first_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

impl Login {
    /// Registers a citizen (a random valid RUN) with the agency's client,
    /// and the bench's redirect URI on that client. `http_base` is the
    /// identity service's HTTP address (its issuer).
    pub async fn prepare(
        channel: &Channel,
        http_base: &str,
        client_id: String,
        client_secret: String,
        with_session: bool,
        citizens: usize,
    ) -> anyhow::Result<Self> {
        let token = pb::token_service_client::TokenServiceClient::new(channel.clone())
            .issue_token(pb::IssueTokenRequest {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scopes: vec![],
            })
            .await?
            .into_inner()
            .access_token;
        fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
            request
        }
        pb::agency_service_client::AgencyServiceClient::new(channel.clone())
            .set_client_redirect_uris(authed(
                pb::SetClientRedirectUrisRequest {
                    client_id: client_id.clone(),
                    redirect_uris: vec![REDIRECT_URI.to_owned()],
                },
                &token,
            ))
            .await
            .context("SetClientRedirectUris (needs identity.admin)")?;
        let mut national_ids = Vec::with_capacity(citizens.max(1));
        let mut citizens_client =
            pb::citizen_service_client::CitizenServiceClient::new(channel.clone());
        for i in 0..citizens.max(1) {
            let seed = u64::from(std::process::id()) * 7919 + i as u64 * 104_729;
            let digits = format!("{}", 10_000_000 + seed % 89_999_999);
            let check = atiende_identity::domain::national_id::run_check_digit(&digits)
                .context("check digit")?;
            let national_id = format!("{digits}-{check}");
            let registered = citizens_client
                .register_citizen(authed(
                    pb::RegisterCitizenRequest {
                        national_id: Some(pb::NationalId {
                            scheme: pb::NationalIdScheme::ClRun.into(),
                            value: national_id.clone(),
                        }),
                        given_names: "Carga".into(),
                        family_names: "De Prueba".into(),
                        email: "carga@ejemplo.cl".into(),
                        phone_number: String::new(),
                        password: PASSWORD.into(),
                    },
                    &token,
                ))
                .await;
            match registered {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::AlreadyExists => {}
                Err(status) => anyhow::bail!("RegisterCitizen: {status}"),
            }
            national_ids.push(national_id);
        }
        let base = http_base.trim_end_matches('/').to_owned();
        let mut authorize_url = reqwest::Url::parse(&format!("{base}/oauth2/authorize"))?;
        authorize_url.query_pairs_mut().extend_pairs([
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid profile"),
            ("state", "bench"),
            ("nonce", "bench"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]);
        let mut login = Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(512)
                .build()?,
            base,
            authorize_url: authorize_url.into(),
            client_id,
            client_secret,
            national_ids,
            next: AtomicU64::new(0),
            session: None,
        };
        if with_session {
            // One sign-in and consent: the session and the remembered
            // consent that every exchange then uses.
            let (cookie, html) = login.sign_in_page().await?;
            let consent = login.post_sign_in(&cookie, &html).await?;
            let session = first_cookie(&consent, "atiende_session").context("no session")?;
            let page = consent.text().await?;
            let allowed = login
                .http
                .post(format!("{}/oauth2/consent", login.base))
                .header("cookie", &cookie)
                .form(&[
                    (
                        "request_id",
                        hidden(&page, "request_id").unwrap_or_default(),
                    ),
                    (
                        "csrf_token",
                        hidden(&page, "csrf_token").unwrap_or_default(),
                    ),
                    ("decision", "allow".to_owned()),
                ])
                .send()
                .await?;
            anyhow::ensure!(allowed.status() == 303, "consent: {}", allowed.status());
            login.session = Some(session);
        }
        Ok(login)
    }

    fn citizen(&self) -> String {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let index = usize::try_from(turn).unwrap_or(0) % self.national_ids.len().max(1);
        self.national_ids.get(index).cloned().unwrap_or_default()
    }

    async fn sign_in_page(&self) -> anyhow::Result<(String, String)> {
        let page = self.http.get(&self.authorize_url).send().await?;
        anyhow::ensure!(page.status() == 200, "authorize: {}", page.status());
        let cookie = first_cookie(&page, "atiende_csrf").context("no CSRF cookie")?;
        Ok((cookie, page.text().await?))
    }

    async fn post_sign_in(&self, cookie: &str, html: &str) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .post(format!("{}/oauth2/authorize", self.base))
            .header("cookie", cookie)
            .form(&[
                ("request_id", hidden(html, "request_id").unwrap_or_default()),
                ("csrf_token", hidden(html, "csrf_token").unwrap_or_default()),
                ("national_id", self.citizen()),
                ("password", PASSWORD.to_owned()),
            ])
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "sign-in: {}", response.status());
        Ok(response)
    }

    /// One password login: the page, then the credential check.
    pub async fn password_login(&self) -> Result<(), tonic::Status> {
        let (cookie, html) = self.sign_in_page().await.map_err(error)?;
        let answer = self.post_sign_in(&cookie, &html).await.map_err(error)?;
        let page = answer.text().await.map_err(error)?;
        if !page.contains("name=\"decision\"") && !page.contains("name=\"request_id\"") {
            return Err(error("the sign-in was not accepted"));
        }
        if page.contains("role=\"alert\"") {
            return Err(error("the sign-in was refused (locked out?)"));
        }
        Ok(())
    }

    /// One code: authorize with the session (answered with a code), then
    /// the token endpoint.
    pub async fn code_exchange(&self) -> Result<(), tonic::Status> {
        let session = self.session.as_deref().unwrap_or_default();
        let answer = self
            .http
            .get(&self.authorize_url)
            .header("cookie", session)
            .send()
            .await
            .map_err(error)?;
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| error(format!("authorize answered {}", answer.status())))?;
        let code = reqwest::Url::parse(location)
            .map_err(error)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| error("no code"))?;
        let tokens = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .map_err(error)?;
        if tokens.status() != 200 {
            return Err(error(format!(
                "token endpoint answered {}",
                tokens.status()
            )));
        }
        Ok(())
    }
}

/// argon2id hashes per second at the service's parameters, on `threads`
/// threads for `duration`.
pub fn argon2_rate(threads: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let done = done.clone();
            scope.spawn(move || {
                while started.elapsed() < duration {
                    if atiende_identity::domain::password::hash_password(PASSWORD).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
