//! The OpenID Connect provider over real HTTP: the sign-in page and its
//! form, the code exchange with PKCE, the ID token checked against the
//! published JWKS with `jsonwebtoken`, userinfo, and what is refused.

use std::collections::HashMap;

use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_platform::auth::{Environment, Scope};
use atiende_platform::storage::now_micros;
use atiende_proto::identity::v1 as pb;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use crate::citizens::PASSWORD;
use crate::support::{Credentials, Engine, TestApp, authed};

const REDIRECT: &str = "http://127.0.0.1:4000/callback";

pub struct Flow<'a> {
    pub app: &'a TestApp,
    pub http: reqwest::Client,
    pub base: String,
}

pub struct Rp {
    pub client: Credentials,
}

pub struct Form {
    pub request_id: String,
    pub csrf: String,
    pub cookie: String,
}

pub fn pkce() -> (String, String) {
    let verifier = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

pub fn query(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl<'a> Flow<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: format!("http://{}", app.http_addr),
        }
    }

    pub async fn rp(&self) -> anyhow::Result<Rp> {
        self.rp_with(REDIRECT).await
    }

    /// A new agency's client with `redirect_uri` registered.
    pub async fn rp_with(&self, redirect_uri: &str) -> anyhow::Result<Rp> {
        let client = self
            .app
            .agency_with_client(&[Scope::IdentityCitizensRead], Environment::Live)
            .await?;
        self.app
            .identity
            .service()
            .register_redirect_uri(&client.client_id, redirect_uri)
            .await?;
        Ok(Rp { client })
    }

    pub async fn authorize(&self, params: &[(&str, &str)]) -> anyhow::Result<reqwest::Response> {
        let mut url = url::Url::parse(&format!("{}/oauth2/authorize", self.base))?;
        url.query_pairs_mut().extend_pairs(params);
        Ok(self.http.get(url).send().await?)
    }

    pub async fn form(&self, rp: &Rp, challenge: &str, scope: &str) -> anyhow::Result<Form> {
        let response = self
            .authorize(&[
                ("response_type", "code"),
                ("client_id", &rp.client.client_id),
                ("redirect_uri", REDIRECT),
                ("scope", scope),
                ("state", "st-123"),
                ("nonce", "n-456"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()["set-cookie"]
            .to_str()?
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let html = response.text().await?;
        assert!(html.contains("Municipalidad") || html.contains("Backend"));
        Ok(Form {
            request_id: hidden(&html, "request_id"),
            csrf: hidden(&html, "csrf_token"),
            cookie,
        })
    }

    /// Posts the sign-in form.
    pub async fn post(
        &self,
        form: &Form,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        self.post_to("/oauth2/authorize", form, fields).await
    }

    /// Posts one of the flow's forms (request id and CSRF token added).
    pub async fn post_to(
        &self,
        path: &str,
        form: &Form,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut body = vec![
            ("request_id", form.request_id.as_str()),
            ("csrf_token", form.csrf.as_str()),
        ];
        body.extend_from_slice(fields);
        Ok(self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &form.cookie)
            .header("x-forwarded-for", "198.51.100.20")
            .form(&body)
            .send()
            .await?)
    }

    /// The citizen's answer on the consent page: `allow` or `deny`.
    pub async fn consent(&self, form: &Form, decision: &str) -> anyhow::Result<reqwest::Response> {
        self.post_to("/oauth2/consent", form, &[("decision", decision)])
            .await
    }

    /// Signs in with the password, consents (unless this client's consent
    /// is remembered), and returns the code from the redirect.
    pub async fn code(&self, rp: &Rp, challenge: &str, scope: &str) -> anyhow::Result<String> {
        let form = self.form(rp, challenge, scope).await?;
        let mut response = self
            .post(
                &form,
                &[("national_id", "12.345.678-5"), ("password", PASSWORD)],
            )
            .await?;
        if response.status() == StatusCode::OK {
            assert!(response.text().await?.contains("Autorizar"));
            response = self.consent(&form, "allow").await?;
        }
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let location = response.headers()["location"].to_str()?.to_owned();
        assert!(location.starts_with(REDIRECT));
        let params = query(&location);
        assert_eq!(params["state"], "st-123");
        assert_eq!(params["iss"], self.app.identity.service().issuer());
        Ok(params["code"].clone())
    }

    pub async fn exchange(
        &self,
        rp: &Rp,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let response = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth(&rp.client.client_id, Some(&rp.client.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await?;
        Ok((response.status(), response.json().await?))
    }

    pub async fn userinfo(&self, token: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}/oauth2/userinfo", self.base))
            .bearer_auth(token)
            .send()
            .await?)
    }

    pub async fn verify_id_token(
        &self,
        rp: &Rp,
        id_token: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let jwks: JwkSet = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.base))
            .send()
            .await?
            .json()
            .await?;
        let header = jsonwebtoken::decode_header(id_token)?;
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[&rp.client.client_id]);
        validation.set_issuer(&[self.app.identity.service().issuer()]);
        Ok(jsonwebtoken::decode::<serde_json::Value>(
            id_token,
            &DecodingKey::from_jwk(jwk)?,
            &validation,
        )?
        .claims)
    }
}

pub async fn citizen(app: &TestApp) -> anyhow::Result<pb::Citizen> {
    let agency = app
        .agency_with_client(&[Scope::IdentityCitizensWrite], Environment::Live)
        .await?;
    let token = app.token(&agency).await?;
    Ok(app
        .citizens()
        .register_citizen(authed(
            pb::RegisterCitizenRequest {
                national_id: Some(pb::NationalId {
                    scheme: pb::NationalIdScheme::ClRun.into(),
                    value: "12.345.678-5".into(),
                }),
                given_names: "María José".into(),
                family_names: "Pérez Soto".into(),
                email: "maria.perez@ejemplo.cl".into(),
                phone_number: String::new(),
                password: PASSWORD.into(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap())
}

pub async fn code_flow_with_pkce_gives_a_verified_id_token_and_userinfo(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let registered = citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;

    let discovery: serde_json::Value = flow
        .http
        .get(format!("{}/.well-known/openid-configuration", flow.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{}/oauth2/authorize", app.identity.service().issuer())
    );
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        discovery["subject_types_supported"],
        serde_json::json!(["pairwise"])
    );

    let (verifier, challenge) = pkce();
    // A wrong password shows the form again, with a message and no code.
    let form = flow.form(&rp, &challenge, "openid profile email").await?;
    let wrong = flow
        .post(
            &form,
            &[
                ("national_id", "12.345.678-5"),
                ("password", "not the password"),
            ],
        )
        .await?;
    assert_eq!(wrong.status(), StatusCode::OK);
    let wrong = wrong.text().await?;
    assert!(wrong.contains("no son correctos"));
    assert!(
        wrong.contains("<strong>Backend</strong>"),
        "the client's name"
    );
    let ok = flow
        .post(
            &form,
            &[("national_id", "12345678-5"), ("password", PASSWORD)],
        )
        .await?;
    // Consent: the page names what the agency asked for.
    assert_eq!(ok.status(), StatusCode::OK);
    let consent = ok.text().await?;
    assert!(consent.contains("Su nombre y su RUN"));
    assert!(consent.contains("Su correo electrónico"));
    assert!(!consent.contains("teléfono"));
    let ok = flow.consent(&form, "allow").await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let code = query(ok.headers()["location"].to_str()?)["code"].clone();

    let (status, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["nonce"], "n-456");
    assert_eq!(claims["acr"], "low");
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert!(claims["auth_time"].as_i64().unwrap() > 0);
    let sub = claims["sub"].as_str().unwrap().to_owned();
    assert!(!sub.contains("ctz_"));

    let info: serde_json::Value = flow
        .userinfo(tokens["access_token"].as_str().unwrap())
        .await?
        .json()
        .await?;
    assert_eq!(info["sub"], sub.as_str());
    assert_eq!(info["given_name"], "María José");
    assert_eq!(info["national_id"], "12345678-5");
    assert_eq!(info["email"], "maria.perez@ejemplo.cl");
    assert!(info.get("phone_number").is_none());
    assert_eq!(
        flow.userinfo("made-up").await?.status(),
        StatusCode::UNAUTHORIZED
    );

    // Nothing secret reached the logs: not the code, the verifier, the
    // tokens, the CSRF token or the password.
    let logs = crate::support::captured_logs();
    let id_token = tokens["id_token"].as_str().unwrap();
    let signature = id_token.rsplit('.').next().unwrap();
    for secret in [
        code.as_str(),
        verifier.as_str(),
        tokens["access_token"].as_str().unwrap(),
        signature,
        form.csrf.as_str(),
        PASSWORD,
    ] {
        assert!(
            !logs.contains(secret),
            "a code, token or password was logged"
        );
    }

    // A citizen disabled since no longer answers userinfo.
    let operator = app.token(&app.operator).await?;
    app.citizens()
        .disable_citizen(authed(
            pb::DisableCitizenRequest {
                citizen_id: registered.citizen_id.clone(),
            },
            &operator,
        ))
        .await?;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        flow.userinfo(access).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

pub async fn pkce_redirect_uri_csrf_and_code_replay_are_refused(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let id = rp.client.client_id.as_str();

    // An unregistered redirect URI: an error page, never a redirect.
    let response = flow
        .authorize(&[
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", "http://127.0.0.1:4000/elsewhere"),
            ("scope", "openid"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());
    // Without PKCE, or with the plain method: back to the client with an error.
    for method in [None, Some("plain")] {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
            ("state", "s1"),
            ("code_challenge", challenge.as_str()),
        ];
        if let Some(method) = method {
            params.push(("code_challenge_method", method));
        }
        let response = flow.authorize(&params).await?;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let params = query(response.headers()["location"].to_str()?);
        assert_eq!(
            (params["error"].as_str(), params["state"].as_str()),
            ("invalid_request", "s1")
        );
    }
    // A form posted without its cookie (cross-site) is refused.
    let form = flow.form(&rp, &challenge, "openid").await?;
    let forged = Form {
        cookie: String::new(),
        ..form
    };
    let response = flow
        .post(
            &forged,
            &[("national_id", "12345678-5"), ("password", PASSWORD)],
        )
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A wrong verifier, then a wrong redirect URI: invalid_grant, and the
    // code is spent either way.
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (other_verifier, _) = pkce();
    let (status, body) = flow.exchange(&rp, &code, &other_verifier, REDIRECT).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, _) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (status, body) = flow
        .exchange(&rp, &code, &verifier, "http://127.0.0.1:4000/elsewhere")
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Another client cannot use the code, nor spend it: its own client
    // still can.
    let other = flow.rp().await?;
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (status, _) = flow.exchange(&other, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::OK);

    // Replaying a code that worked revokes the access token it gave.
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (status, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::OK);
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(flow.userinfo(&access).await?.status(), StatusCode::OK);
    let (status, body) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(
        flow.userinfo(&access).await?.status(),
        StatusCode::UNAUTHORIZED
    );

    // A wrong client secret is invalid_client.
    let wrong_secret = Rp {
        client: Credentials {
            client_secret: format!("{}x", rp.client.client_secret),
            ..rp.client.clone()
        },
    };
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (status, body) = flow
        .exchange(&wrong_secret, &code, &verifier, REDIRECT)
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    Ok(())
}

pub async fn pairwise_subjects_differ_across_agencies_and_are_stable(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let (a, b) = (flow.rp().await?, flow.rp().await?);
    let (verifier, challenge) = pkce();
    let mut subs = Vec::new();
    let mut access = String::new();
    for rp in [&a, &a, &b] {
        let code = flow.code(rp, &challenge, "openid").await?;
        let (status, tokens) = flow.exchange(rp, &code, &verifier, REDIRECT).await?;
        assert_eq!(status, StatusCode::OK);
        let claims = flow
            .verify_id_token(rp, tokens["id_token"].as_str().unwrap())
            .await?;
        subs.push(claims["sub"].as_str().unwrap().to_owned());
        access = tokens["access_token"].as_str().unwrap().to_owned();
    }
    assert_eq!(subs[0], subs[1], "stable for one agency");
    assert_ne!(subs[0], subs[2], "different for another agency");

    // Pruning keeps what is still valid and forgets what has expired.
    let db = app.database().await?;
    let keep = atiende_identity::service::oidc::KEEP_CODES_MICROS;
    atiende_identity::store::oidc::prune(&db, now_micros(), keep).await?;
    assert_eq!(flow.userinfo(&access).await?.status(), StatusCode::OK);
    let codes = |db: &atiende_platform::storage::Database| {
        let db = db.clone();
        async move {
            let count: i64 = atiende_platform::on_db!(&db, pool => {
                sqlx::query_scalar("SELECT COUNT(*) FROM authorization_codes")
                    .fetch_one(pool)
                    .await?
            });
            anyhow::Ok(count)
        }
    };
    assert_eq!(codes(&db).await?, 3);
    atiende_identity::store::oidc::prune(&db, now_micros() + 2 * keep, keep).await?;
    assert_eq!(
        flow.userinfo(&access).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(codes(&db).await?, 0);
    db.close().await;
    Ok(())
}

pub async fn a_citizen_with_totp_is_asked_for_a_code_and_reaches_substantial(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let registered = citizen(&app).await?;
    let service = app.identity.service();
    let enrolment = service
        .begin_totp_enrolment(Environment::Live, &registered.citizen_id)
        .await?;
    let secret = TotpSecret::from_base32(enrolment.secret_base32.expose_secret()).unwrap();
    let code_at = |micros: i64| {
        format!(
            "{:06}",
            hotp(
                secret.expose(),
                u64::try_from(micros / 30_000_000).unwrap(),
                6
            )
        )
    };
    let t0 = now_micros() - 60_000_000;
    service
        .confirm_totp_enrolment(Environment::Live, &registered.citizen_id, &code_at(t0), t0)
        .await?;

    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();
    let form = flow.form(&rp, &challenge, "openid").await?;
    let asked = flow
        .post(
            &form,
            &[("national_id", "12345678-5"), ("password", PASSWORD)],
        )
        .await?;
    assert_eq!(asked.status(), StatusCode::OK);
    assert!(asked.text().await?.contains("name=\"second_factor\""));
    let now_code = code_at(now_micros());
    let done = flow
        .post(
            &form,
            &[
                ("national_id", "12345678-5"),
                ("password", PASSWORD),
                ("second_factor", &now_code),
            ],
        )
        .await?;
    assert_eq!(done.status(), StatusCode::OK);
    let done = flow.consent(&form, "allow").await?;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let code = query(done.headers()["location"].to_str()?)["code"].clone();
    let (_, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["acr"], "substantial");
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
    Ok(())
}

pub async fn agencies_set_their_clients_redirect_uris(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let flow = Flow::new(&app);
    let admin = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Live)
        .await?;
    let token = app.token(&admin).await?;
    let set = |client_id: &str, uris: &[&str], token: &str| {
        let mut agencies = app.agencies();
        let request = authed(
            pb::SetClientRedirectUrisRequest {
                client_id: client_id.to_owned(),
                redirect_uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            },
            token,
        );
        async move { agencies.set_client_redirect_uris(request).await }
    };
    let done = set(
        &admin.client_id,
        &["https://tramites.muni.cl/cb", REDIRECT],
        &token,
    )
    .await?
    .into_inner();
    assert_eq!(
        done.redirect_uris,
        [REDIRECT, "https://tramites.muni.cl/cb"]
    );

    let status = set(
        &admin.client_id,
        &[REDIRECT, "http://tramites.muni.cl/cb"],
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(
        crate::support::violated_fields(&status),
        ["redirect_uris[1]"]
    );
    let other = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Live)
        .await?;
    let other_token = app.token(&other).await?;
    let status = set(&admin.client_id, &[REDIRECT], &other_token)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let (_, challenge) = pkce();
    let request = |client_id: &str| {
        vec![
            ("response_type", "code".to_owned()),
            ("client_id", client_id.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("scope", "openid".to_owned()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".to_owned()),
        ]
    };
    let params = request(&admin.client_id);
    let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(flow.authorize(&borrowed).await?.status(), StatusCode::OK);
    set(&admin.client_id, &[], &token).await?;
    assert_eq!(
        flow.authorize(&borrowed).await?.status(),
        StatusCode::BAD_REQUEST
    );
    Ok(())
}

async fn refresh(
    flow: &Flow<'_>,
    rp: &Rp,
    token: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let response = flow
        .http
        .post(format!("{}/oauth2/token", flow.base))
        .basic_auth(&rp.client.client_id, Some(&rp.client.client_secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await?;
    Ok((response.status(), response.json().await?))
}

pub async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (verifier, challenge) = pkce();

    // Without offline_access there is no refresh token.
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (_, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert!(tokens.get("refresh_token").is_none());

    let code = flow.code(&rp, &challenge, "openid offline_access").await?;
    let (status, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    assert_eq!(status, StatusCode::OK);
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = refresh(&flow, &rp, &first).await?;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(flow.userinfo(&access).await?.status(), StatusCode::OK);

    // Another client cannot use it.
    let other = flow.rp().await?;
    let (status, body) = refresh(&flow, &other, &second).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // The first token again: a reuse. The family is revoked: the second
    // refresh token and the access tokens stop working.
    let (status, body) = refresh(&flow, &rp, &first).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(
        flow.userinfo(&access).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = refresh(&flow, &rp, &second).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = refresh(&flow, &rp, "made-up").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

pub async fn a_citizen_who_does_not_consent_sends_back_access_denied(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let registered = citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let (_, challenge) = pkce();
    let form = flow.form(&rp, &challenge, "openid phone").await?;
    // Consent cannot be given before signing in.
    let early = flow.consent(&form, "allow").await?;
    assert_eq!(early.status(), StatusCode::BAD_REQUEST);
    let page = flow
        .post(
            &form,
            &[("national_id", "12345678-5"), ("password", PASSWORD)],
        )
        .await?;
    assert!(page.text().await?.contains("Su número de teléfono"));
    let denied = flow.consent(&form, "deny").await?;
    assert_eq!(denied.status(), StatusCode::SEE_OTHER);
    let params = query(denied.headers()["location"].to_str()?);
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st-123");
    assert!(!params.contains_key("code"));
    // The request is gone: no second answer.
    assert_eq!(
        flow.consent(&form, "allow").await?.status(),
        StatusCode::BAD_REQUEST
    );

    // Both decisions are in the agency's audit trail.
    flow.code(&rp, &challenge, "openid").await?;
    let token = app.token(&rp.client).await?;
    let events = app
        .citizens()
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                types: vec![pb::AuditEventType::Consent.into()],
                citizen_id: registered.citizen_id.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .audit_events;
    let decisions: Vec<_> = events
        .iter()
        .map(|e| e.attributes["decision"].as_str())
        .collect();
    assert_eq!(decisions, ["granted", "denied"]);
    assert_eq!(events[1].attributes["scope"], "openid phone");
    Ok(())
}

async fn revoke(flow: &Flow<'_>, rp: &Rp, token: &str) -> anyhow::Result<StatusCode> {
    Ok(flow
        .http
        .post(format!("{}/oauth2/revoke", flow.base))
        .basic_auth(&rp.client.client_id, Some(&rp.client.client_secret))
        .form(&[("token", token)])
        .send()
        .await?
        .status())
}

pub async fn clients_revoke_their_own_citizen_tokens(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let (rp, other) = (flow.rp().await?, flow.rp().await?);
    let (verifier, challenge) = pkce();
    let code = flow.code(&rp, &challenge, "openid offline_access").await?;
    let (_, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();

    // Another client's revocation is ignored; an unknown token is fine.
    assert_eq!(revoke(&flow, &other, &access).await?, StatusCode::OK);
    assert_eq!(flow.userinfo(&access).await?.status(), StatusCode::OK);
    assert_eq!(revoke(&flow, &rp, "made-up").await?, StatusCode::OK);
    let wrong = Rp {
        client: Credentials {
            client_secret: "ats_wrong".into(),
            ..rp.client.clone()
        },
    };
    assert_eq!(
        revoke(&flow, &wrong, &access).await?,
        StatusCode::UNAUTHORIZED
    );

    // Revoking the refresh token takes its access tokens with it.
    assert_eq!(revoke(&flow, &rp, &refresh_token).await?, StatusCode::OK);
    assert_eq!(
        flow.userinfo(&access).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = refresh(&flow, &rp, &refresh_token).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An access token alone.
    let code = flow.code(&rp, &challenge, "openid").await?;
    let (_, tokens) = flow.exchange(&rp, &code, &verifier, REDIRECT).await?;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(revoke(&flow, &rp, access).await?, StatusCode::OK);
    assert_eq!(
        flow.userinfo(access).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}
