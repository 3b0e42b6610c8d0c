//! The login pages as a browser sees them, over real HTTP with a cookie
//! jar: single sign-on sessions, remembered consent, `prompt`, `max_age`,
//! `acr_values` step-up with TOTP enrolment, self-registration with an
//! email code, English pages, RP-initiated logout, and introspection.

use std::collections::HashMap;

use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_platform::auth::Environment;
use atiende_platform::storage::now_micros;
use atiende_proto::identity::v1 as pb;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use crate::citizens::PASSWORD;
use crate::oidc::{Flow, Rp, citizen, hidden, pkce, query};
use crate::support::{Engine, TestApp, authed};

const REDIRECT: &str = "http://127.0.0.1:4000/callback";

/// A browser: no redirects followed, cookies kept.
struct Browser<'a> {
    flow: &'a Flow<'a>,
    cookies: HashMap<String, String>,
}

/// A page or a redirect.
struct Seen {
    status: StatusCode,
    location: Option<String>,
    html: String,
}

impl Seen {
    fn params(&self) -> HashMap<String, String> {
        query(self.location.as_deref().unwrap_or("http://x/"))
    }

    fn code(&self) -> String {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.html);
        self.params()["code"].clone()
    }

    fn hidden(&self, name: &str) -> String {
        hidden(&self.html, name)
    }
}

impl<'a> Browser<'a> {
    fn new(flow: &'a Flow<'a>) -> Self {
        Self {
            flow,
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn absorb(&mut self, response: reqwest::Response) -> anyhow::Result<Seen> {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str()?;
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok(Seen {
            status,
            location,
            html: response.text().await?,
        })
    }

    async fn get(&mut self, url: &str) -> anyhow::Result<Seen> {
        let response = self
            .flow
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await?;
        self.absorb(response).await
    }

    /// `/oauth2/authorize` for the client, with extra parameters.
    async fn authorize(
        &mut self,
        rp: &Rp,
        challenge: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Seen> {
        let mut url = url::Url::parse(&format!("{}/oauth2/authorize", self.flow.base))?;
        url.query_pairs_mut().extend_pairs([
            ("response_type", "code"),
            ("client_id", rp.client.client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st-1"),
            ("nonce", "n-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]);
        url.query_pairs_mut().extend_pairs(extra);
        self.get(url.as_str()).await
    }

    /// Posts a form of the page (its hidden fields, plus these).
    async fn submit(
        &mut self,
        page: &Seen,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<Seen> {
        let mut body = vec![
            ("request_id".to_owned(), page.hidden("request_id")),
            ("csrf_token".to_owned(), page.hidden("csrf_token")),
            ("locale".to_owned(), page.hidden("locale")),
        ];
        body.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let response = self
            .flow
            .http
            .post(format!("{}{path}", self.flow.base))
            .header("cookie", self.cookie_header())
            .header("x-forwarded-for", "198.51.100.30")
            .form(&body)
            .send()
            .await?;
        self.absorb(response).await
    }

    async fn sign_in(&mut self, page: &Seen) -> anyhow::Result<Seen> {
        self.submit(
            page,
            "/oauth2/authorize",
            &[("national_id", "12.345.678-5"), ("password", PASSWORD)],
        )
        .await
    }

    fn session(&self) -> Option<&String> {
        self.cookies.get("atiende_session")
    }
}

fn is_sign_in(seen: &Seen) -> bool {
    seen.status == StatusCode::OK && seen.html.contains("name=\"password\"")
}

fn is_consent(seen: &Seen) -> bool {
    seen.status == StatusCode::OK && seen.html.contains("name=\"decision\"")
}

async fn id_claims(
    flow: &Flow<'_>,
    rp: &Rp,
    code: &str,
    verifier: &str,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let (status, tokens) = flow.exchange(rp, code, verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let claims = flow
        .verify_id_token(rp, tokens["id_token"].as_str().unwrap())
        .await?;
    Ok((tokens, claims))
}

/// The TOTP key an enrolment page shows.
fn totp_key(page: &Seen) -> String {
    let start = page.html.find("id=\"totp_secret\">").unwrap() + 17;
    page.html[start..]
        .split('<')
        .next()
        .unwrap()
        .replace(' ', "")
}

fn totp_now(secret: &TotpSecret, offset_steps: i64) -> String {
    let step = u64::try_from(now_micros() / 30_000_000 + offset_steps).unwrap();
    format!("{:06}", hotp(secret.expose(), step, 6))
}

pub async fn a_session_skips_sign_in_and_remembered_consent_skips_the_page(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let (rp, other) = (flow.rp().await?, flow.rp().await?);
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&flow);

    let page = browser
        .authorize(&rp, &challenge, "openid profile", &[])
        .await?;
    assert!(is_sign_in(&page));
    let consent = browser.sign_in(&page).await?;
    assert!(is_consent(&consent), "{}", consent.html);
    assert!(browser.session().is_some(), "signing in starts a session");
    let done = browser
        .submit(&consent, "/oauth2/consent", &[("decision", "allow")])
        .await?;
    let (_, first) = id_claims(&flow, &rp, &done.code(), &verifier).await?;
    assert!(first["sid"].is_string());

    // Again for the same client: no sign-in, no consent, a code at once,
    // from the same sign-in.
    let again = browser
        .authorize(&rp, &challenge, "openid profile", &[])
        .await?;
    let (_, second) = id_claims(&flow, &rp, &again.code(), &verifier).await?;
    assert_eq!(second["auth_time"], first["auth_time"]);
    assert_eq!(second["sid"], first["sid"]);
    assert_eq!(second["sub"], first["sub"]);
    // prompt=none works too, silently.
    let silent = browser
        .authorize(&rp, &challenge, "openid profile", &[("prompt", "none")])
        .await?;
    silent.code();

    // Another agency: no sign-in, but its own consent.
    let page = browser.authorize(&other, &challenge, "openid", &[]).await?;
    assert!(is_consent(&page), "{}", page.html);
    // prompt=none for it says consent is needed.
    let silent = browser
        .authorize(&other, &challenge, "openid", &[("prompt", "none")])
        .await?;
    assert_eq!(silent.params()["error"], "consent_required");
    // Asking for more than was allowed asks again.
    let wider = browser
        .authorize(&rp, &challenge, "openid profile email", &[])
        .await?;
    assert!(is_consent(&wider));
    // prompt=consent asks again; prompt=login and max_age=0 sign in again.
    let asked = browser
        .authorize(&rp, &challenge, "openid profile", &[("prompt", "consent")])
        .await?;
    assert!(is_consent(&asked));
    for extra in [[("prompt", "login")], [("max_age", "0")]] {
        let page = browser
            .authorize(&rp, &challenge, "openid profile", &extra)
            .await?;
        assert!(is_sign_in(&page), "{extra:?}");
    }
    let recent = browser
        .authorize(&rp, &challenge, "openid profile", &[("max_age", "3600")])
        .await?;
    recent.code();

    // Without a session, prompt=none is login_required; bad prompt or
    // max_age values are invalid_request.
    let mut stranger = Browser::new(&flow);
    let silent = stranger
        .authorize(&rp, &challenge, "openid", &[("prompt", "none")])
        .await?;
    assert_eq!(silent.params()["error"], "login_required");
    assert_eq!(silent.params()["state"], "st-1");
    for extra in [[("prompt", "none login")], [("max_age", "soon")]] {
        let refused = stranger
            .authorize(&rp, &challenge, "openid", &extra)
            .await?;
        assert_eq!(refused.params()["error"], "invalid_request", "{extra:?}");
    }
    // A made-up session cookie is no session.
    stranger
        .cookies
        .insert("atiende_session".into(), "made-up".into());
    assert!(is_sign_in(
        &stranger.authorize(&rp, &challenge, "openid", &[]).await?
    ));
    Ok(())
}

/// A sign-in on the page is recorded as the gRPC check's is: the audit
/// entry (in the chain), and the account's failures forgotten, in the
/// transaction that starts the session.
pub async fn a_page_sign_in_is_audited_and_forgets_the_account_failures(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_identity::config::CitizenConfig;
    use atiende_identity::store::citizens::verify_audit_chain;

    let options = crate::support::AppOptions {
        citizens: CitizenConfig {
            lockout_threshold: 3,
            lockout_ms: std::time::Duration::from_secs(600),
            ..CitizenConfig::default()
        },
        ..crate::support::AppOptions::default()
    };
    let app = TestApp::spawn_with(engine, options).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (_, challenge) = pkce();
    let locked = "Demasiados intentos fallidos";
    // Two wrong passwords, then the right one; then the right one again in
    // another browser. Were the account's failures (2, and the reservation
    // of the success) not forgotten, the second sign-in would be the
    // fourth attempt and be turned away (3). The source's failures stand.
    for wrong in [2, 0] {
        let mut browser = Browser::new(&flow);
        let mut page = browser.authorize(&rp, &challenge, "openid", &[]).await?;
        for _ in 0..wrong {
            page = browser
                .submit(
                    &page,
                    "/oauth2/authorize",
                    &[
                        ("national_id", "12.345.678-5"),
                        ("password", "not the password"),
                    ],
                )
                .await?;
            assert!(is_sign_in(&page) && !page.html.contains(locked));
        }
        let consent = browser.sign_in(&page).await?;
        assert!(is_consent(&consent), "{}", consent.html);
    }
    let db = app.database().await?;
    let report = verify_audit_chain(&db).await?;
    assert_eq!(report.broken, None);
    let successes: Vec<String> = atiende_platform::on_db!(&db, pool => {
        sqlx::query_scalar(
            "SELECT attributes FROM audit_events WHERE event_type = 'sign_in_success' ORDER BY seq",
        )
        .fetch_all(pool)
        .await?
    });
    assert_eq!(successes.len(), 2, "{successes:?}");
    assert!(successes.iter().all(|a| a.contains("pwd")), "{successes:?}");
    Ok(())
}

pub async fn acr_values_substantial_steps_up_with_totp_enrolment_on_the_pages(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&flow);

    // Signed in with a password only: acr low.
    let page = browser.authorize(&rp, &challenge, "openid", &[]).await?;
    let consent = browser.sign_in(&page).await?;
    let done = browser
        .submit(&consent, "/oauth2/consent", &[("decision", "allow")])
        .await?;
    let (_, claims) = id_claims(&flow, &rp, &done.code(), &verifier).await?;
    assert_eq!(claims["acr"], "low");

    // The agency asks for substantial: the citizen has no second factor,
    // so the session goes on to enrolment (QR code and typed key).
    let enrol = browser
        .authorize(&rp, &challenge, "openid", &[("acr_values", "substantial")])
        .await?;
    assert_eq!(enrol.status, StatusCode::OK);
    assert!(enrol.html.contains("<svg"), "a QR code");
    let key = totp_key(&enrol);
    // The consent form cannot be posted from here to skip the enrolment:
    // no code without the level asked for.
    let skipped = browser
        .submit(&enrol, "/oauth2/consent", &[("decision", "allow")])
        .await?;
    assert_eq!(skipped.status, StatusCode::BAD_REQUEST);
    assert!(skipped.location.is_none());
    let enrol = browser
        .authorize(&rp, &challenge, "openid", &[("acr_values", "substantial")])
        .await?;
    let again_key = totp_key(&enrol);
    assert_ne!(key, again_key, "a new secret every time the page is shown");
    // prompt=none cannot enrol.
    let silent = browser
        .authorize(
            &rp,
            &challenge,
            "openid",
            &[("acr_values", "substantial"), ("prompt", "none")],
        )
        .await?;
    assert_eq!(silent.params()["error"], "interaction_required");
    // A wrong code: a message, and a new key to scan.
    let wrong = browser
        .submit(&enrol, "/oauth2/enrol", &[("totp_code", "000000")])
        .await?;
    assert!(wrong.html.contains("role=\"alert\""));
    let secret = TotpSecret::from_base32(&totp_key(&wrong)).unwrap();
    let codes = browser
        .submit(
            &wrong,
            "/oauth2/enrol",
            &[("totp_code", &totp_now(&secret, 0))],
        )
        .await?;
    assert_eq!(codes.status, StatusCode::OK, "{}", codes.html);
    let listed = codes.html.matches("<li><code>").count();
    assert_eq!(listed, 10, "ten recovery codes, shown once");
    let next = browser.submit(&codes, "/oauth2/continue", &[]).await?;
    // Consent for "openid" was remembered: straight back with a code.
    let (_, claims) = id_claims(&flow, &rp, &next.code(), &verifier).await?;
    assert_eq!(claims["acr"], "substantial");
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));

    // The session is substantial now.
    let again = browser
        .authorize(&rp, &challenge, "openid", &[("acr_values", "substantial")])
        .await?;
    again.code();
    // High needs a proofed identity: an error the client can act on.
    let high = browser
        .authorize(&rp, &challenge, "openid", &[("acr_values", "high")])
        .await?;
    assert_eq!(high.params()["error"], "unmet_authentication_requirements");
    // Of a list, the lowest level is the least the client accepts.
    let either = browser
        .authorize(
            &rp,
            &challenge,
            "openid",
            &[("acr_values", "high substantial")],
        )
        .await?;
    either.code();
    Ok(())
}

pub async fn a_password_session_steps_up_with_the_second_factor_it_has(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let registered = citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&flow);
    let page = browser.authorize(&rp, &challenge, "openid", &[]).await?;
    let consent = browser.sign_in(&page).await?;
    browser
        .submit(&consent, "/oauth2/consent", &[("decision", "allow")])
        .await?
        .code();
    // The citizen enrols a second factor elsewhere after this sign-in.
    let service = app.identity.service();
    let enrolment = service
        .begin_totp_enrolment(Environment::Live, &registered.citizen_id)
        .await?;
    let secret = TotpSecret::from_base32(enrolment.secret_base32.expose_secret()).unwrap();
    let earlier = now_micros() - 60_000_000;
    let step = u64::try_from(earlier / 30_000_000).unwrap();
    service
        .confirm_totp_enrolment(
            Environment::Live,
            &registered.citizen_id,
            &format!("{:06}", hotp(secret.expose(), step, 6)),
            earlier,
        )
        .await?;
    // Asked for substantial, the password session is not enough: the
    // sign-in form asks for the code too.
    let step_up = browser
        .authorize(&rp, &challenge, "openid", &[("acr_values", "substantial")])
        .await?;
    assert!(step_up.html.contains("name=\"second_factor\""));
    assert!(step_up.html.contains("role=\"alert\""));
    let done = browser
        .submit(
            &step_up,
            "/oauth2/authorize",
            &[
                ("national_id", "12345678-5"),
                ("password", PASSWORD),
                ("second_factor", &totp_now(&secret, 0)),
            ],
        )
        .await?;
    let (_, claims) = id_claims(&flow, &rp, &done.code(), &verifier).await?;
    assert_eq!(claims["acr"], "substantial");
    Ok(())
}

pub async fn citizens_register_on_the_pages_in_english_and_verify_their_email(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&flow);
    let page = browser
        .authorize(
            &rp,
            &challenge,
            "openid email",
            &[("ui_locales", "en-GB es")],
        )
        .await?;
    assert!(page.html.contains("<html lang=\"en\">"));
    assert!(page.html.contains("Sign in with Atiende"));
    let link_start = page.html.find("href=\"/oauth2/register?").unwrap() + 6;
    let link = page.html[link_start..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let form = browser.get(&format!("{}{link}", flow.base)).await?;
    assert_eq!(form.status, StatusCode::OK, "{}", form.html);
    assert!(form.html.contains("Create an account"));

    // Every bad field is reported, tied to its input; what was typed is
    // kept, except the password.
    let bad = browser
        .submit(
            &form,
            "/oauth2/register",
            &[
                ("national_id", "12.345.678-9"),
                ("given_names", "Ana"),
                ("family_names", ""),
                ("email", "ana-at-example"),
                ("phone", ""),
                ("password", "short"),
            ],
        )
        .await?;
    assert_eq!(bad.status, StatusCode::OK);
    for field in ["national_id", "family_names", "email", "password"] {
        assert!(
            bad.html
                .contains(&format!("id=\"{field}\" name=\"{field}\"")),
            "{field}"
        );
        let input_start = bad.html.find(&format!("id=\"{field}\" name=")).unwrap();
        let input = bad.html[input_start..].split('>').next().unwrap();
        assert!(input.contains("aria-invalid=\"true\""), "{field}: {input}");
        assert!(
            input.contains(&format!("{field}-error")),
            "{field}: {input}"
        );
    }
    assert!(bad.html.contains("value=\"Ana\""));
    assert!(bad.html.contains("at least 8 characters"));
    assert!(!bad.html.contains("value=\"short\""));
    assert_eq!(app.mailbox.count(), 0);
    let common = browser
        .submit(
            &bad,
            "/oauth2/register",
            &[
                ("national_id", "11.111.111-1"),
                ("given_names", "Ana"),
                ("family_names", "Rojas"),
                ("email", "ana@ejemplo.cl"),
                ("password", "password123"),
            ],
        )
        .await?;
    assert!(common.html.contains("too common"), "{}", common.html);

    let verify = browser
        .submit(
            &common,
            "/oauth2/register",
            &[
                ("national_id", "11.111.111-1"),
                ("given_names", "Ana"),
                ("family_names", "Rojas"),
                ("email", "Ana@Ejemplo.cl"),
                ("phone", "+56 9 8765 4321"),
                ("password", "a long walk by the sea"),
            ],
        )
        .await?;
    assert!(
        verify.html.contains("name=\"email_code\""),
        "{}",
        verify.html
    );
    let code = app.mailbox.code_for("Ana@ejemplo.cl").unwrap();
    // Before the code, the registration cannot sign in.
    let mut early = Browser::new(&flow);
    let page = early.authorize(&rp, &challenge, "openid", &[]).await?;
    let refused = early
        .submit(
            &page,
            "/oauth2/authorize",
            &[
                ("national_id", "11.111.111-1"),
                ("password", "a long walk by the sea"),
            ],
        )
        .await?;
    assert!(is_sign_in(&refused));
    assert!(refused.html.contains("role=\"alert\""));
    let wrong = format!("{:06}", (code.parse::<u32>()? + 1) % 1_000_000);
    let again = browser
        .submit(&verify, "/oauth2/verify-email", &[("email_code", &wrong)])
        .await?;
    assert!(again.html.contains("not right"));
    assert!(browser.session().is_none(), "no session before the code");
    let consent = browser
        .submit(&again, "/oauth2/verify-email", &[("email_code", &code)])
        .await?;
    assert!(is_consent(&consent), "{}", consent.html);
    assert!(consent.html.contains("Allow access"));
    assert!(browser.session().is_some());
    let done = browser
        .submit(&consent, "/oauth2/consent", &[("decision", "allow")])
        .await?;
    let (tokens, claims) = id_claims(&flow, &rp, &done.code(), &verifier).await?;
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    let info: serde_json::Value = flow
        .userinfo(tokens["access_token"].as_str().unwrap())
        .await?
        .json()
        .await?;
    assert_eq!(info["email"], "Ana@ejemplo.cl");
    assert_eq!(info["email_verified"], true);

    // Registering a RUN that has an account looks the same, and sends no
    // code; the account is untouched.
    let mut other = Browser::new(&flow);
    let page = other.authorize(&rp, &challenge, "openid", &[]).await?;
    let form = other
        .get(&format!(
            "{}/oauth2/register?request_id={}&locale=es",
            flow.base,
            page.hidden("request_id")
        ))
        .await?;
    let sent = app.mailbox.count();
    let same = other
        .submit(
            &form,
            "/oauth2/register",
            &[
                ("national_id", "11111111-1"),
                ("given_names", "Intrusa"),
                ("family_names", "Rojas"),
                ("email", "intrusa@ejemplo.cl"),
                ("password", "another long passphrase"),
            ],
        )
        .await?;
    assert!(same.html.contains("name=\"email_code\""));
    assert_eq!(app.mailbox.count(), sent);
    let nothing = other
        .submit(&same, "/oauth2/verify-email", &[("email_code", &code)])
        .await?;
    assert!(nothing.html.contains("role=\"alert\""));
    assert!(other.session().is_none());

    // The registration is audited as self-registration by the agency.
    let token = app.token(&rp.client).await?;
    let events = app
        .citizens()
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                types: vec![pb::AuditEventType::Registration.into()],
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .audit_events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].attributes["via"], "self");
    Ok(())
}

pub async fn logout_ends_the_session_and_returns_to_a_registered_uri(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&flow);
    let page = browser.authorize(&rp, &challenge, "openid", &[]).await?;
    let consent = browser.sign_in(&page).await?;
    let done = browser
        .submit(&consent, "/oauth2/consent", &[("decision", "allow")])
        .await?;
    let (tokens, _) = id_claims(&flow, &rp, &done.code(), &verifier).await?;
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let old_session = browser.session().cloned().unwrap();

    let metadata: serde_json::Value = flow
        .http
        .get(format!("{}/.well-known/openid-configuration", flow.base))
        .send()
        .await?
        .json()
        .await?;
    let end_session = metadata["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let logout = |hint: &str, uri: &str| {
        let mut url = url::Url::parse(&end_session).unwrap();
        url.query_pairs_mut()
            .append_pair("id_token_hint", hint)
            .append_pair("post_logout_redirect_uri", uri)
            .append_pair("state", "bye");
        url.to_string()
    };
    // An unregistered return address, or a tampered hint: refused.
    let refused = browser
        .get(&logout(&id_token, "http://127.0.0.1:4000/elsewhere"))
        .await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let mut tampered = id_token.clone();
    tampered.pop();
    tampered.push(if id_token.ends_with('A') { 'B' } else { 'A' });
    let refused = browser.get(&logout(&tampered, REDIRECT)).await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(browser.session().is_some(), "still signed in");

    // Someone else's ID token (another session) does not end this one
    // without asking.
    let mut other = Browser::new(&flow);
    let page = other.authorize(&rp, &challenge, "openid", &[]).await?;
    let theirs = other.sign_in(&page).await?.code();
    let (their_tokens, _) = id_claims(&flow, &rp, &theirs, &verifier).await?;
    let asked = browser
        .get(&logout(
            their_tokens["id_token"].as_str().unwrap(),
            REDIRECT,
        ))
        .await?;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(asked.html.contains("name=\"confirm\""));
    assert!(browser.session().is_some());

    let out = browser.get(&logout(&id_token, REDIRECT)).await?;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.location.as_deref().unwrap().starts_with(REDIRECT));
    assert_eq!(out.params()["state"], "bye");
    assert!(browser.session().is_none(), "the cookie is cleared");
    // The session is gone on the server too: the old cookie is no use.
    browser
        .cookies
        .insert("atiende_session".into(), old_session);
    let page = browser.authorize(&rp, &challenge, "openid", &[]).await?;
    assert!(is_sign_in(&page));

    // Without a hint the citizen confirms first.
    browser.sign_in(&page).await?.code();
    assert!(browser.session().is_some());
    let confirm = browser.get(&end_session).await?;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(browser.session().is_some());
    let mut body = vec![("confirm", "yes".to_owned())];
    body.push(("csrf_token", confirm.hidden("csrf_token")));
    let response = flow
        .http
        .post(&end_session)
        .header("cookie", browser.cookie_header())
        .form(&body)
        .send()
        .await?;
    let done = browser.absorb(response).await?;
    assert_eq!(done.status, StatusCode::OK);
    assert!(browser.session().is_none());
    Ok(())
}

async fn introspect(
    flow: &Flow<'_>,
    rp: &Rp,
    token: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let response = flow
        .http
        .post(format!("{}/oauth2/introspect", flow.base))
        .basic_auth(&rp.client.client_id, Some(&rp.client.client_secret))
        .form(&[("token", token)])
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

pub async fn clients_introspect_their_own_citizen_tokens(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let (rp, other) = (flow.rp().await?, flow.rp().await?);
    let (verifier, challenge) = pkce();
    let code = flow.code(&rp, &challenge, "openid offline_access").await?;
    let (tokens, claims) = id_claims(&flow, &rp, &code, &verifier).await?;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    let (status, body) = introspect(&flow, &rp, access).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["sub"], claims["sub"]);
    assert_eq!(body["client_id"], rp.client.client_id.as_str());
    assert_eq!(body["scope"], "openid offline_access");
    let (_, body) = introspect(&flow, &rp, refresh).await?;
    assert_eq!(
        (body["active"].clone(), body["token_type"].clone()),
        (serde_json::json!(true), serde_json::json!("refresh_token"))
    );
    // Another client learns nothing; an unknown token is inactive.
    for (client, token) in [(&other, access), (&rp, "made-up")] {
        let (status, body) = introspect(&flow, client, token).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({ "active": false }));
    }
    // A wrong secret is invalid_client.
    let wrong = Rp {
        client: crate::support::Credentials {
            client_secret: "ats_wrong".into(),
            ..rp.client.clone()
        },
    };
    let (status, body) = introspect(&flow, &wrong, access).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Revoked: inactive.
    flow.http
        .post(format!("{}/oauth2/revoke", flow.base))
        .basic_auth(&rp.client.client_id, Some(&rp.client.client_secret))
        .form(&[("token", refresh)])
        .send()
        .await?;
    for token in [access, refresh] {
        let (_, body) = introspect(&flow, &rp, token).await?;
        assert_eq!(body["active"], false);
    }
    Ok(())
}
