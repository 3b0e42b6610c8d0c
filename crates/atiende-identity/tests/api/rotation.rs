//! Signing key rotation without a restart.

use std::time::{Duration, Instant};

use atiende_platform::auth::{AuthError, HttpJwks, TokenVerifier, VerifierSettings};
use atiende_proto::identity::v1 as pb;

use crate::support::{AppOptions, Engine, TestApp, authed};

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Issues tokens until one is signed by `kid` (the key activates after the
/// configured lead); gives up after 20 seconds.
async fn wait_for_signing_key(app: &TestApp, wanted: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let token = app.token(&app.operator).await?;
        if kid(&token) == wanted {
            return Ok(token);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "key {wanted} never signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_verifier(app: &TestApp, min_refresh_interval: Duration) -> TokenVerifier {
    TokenVerifier::new(
        VerifierSettings {
            issuer: app.identity.service().issuer().to_owned(),
            audience: "atiende".to_owned(),
            max_age: Duration::from_secs(3600),
            min_refresh_interval,
        },
        HttpJwks::new(format!("http://{}/.well-known/jwks.json", app.http_addr)).unwrap(),
    )
}

pub async fn next_key_is_published_before_it_signs_and_old_tokens_keep_verifying(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(
        engine,
        AppOptions {
            next_key_lead: Duration::from_secs(1),
            ..AppOptions::default()
        },
    )
    .await?;
    let before = app.token(&app.operator).await?;
    let old_kid = kid(&before);

    let rotated = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &before))
        .await?
        .into_inner();
    let next_kid = rotated.next_kid.clone();
    assert_ne!(next_kid, old_kid);
    assert!(rotated.activate_time.unwrap().seconds >= atiende_platform::auth::unix_now());
    // Published at once, over gRPC and HTTP, next to the current key.
    let published: Vec<String> = rotated
        .published_keys
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(published, [next_kid.clone(), old_kid.clone()]);
    let http: serde_json::Value =
        reqwest::get(format!("http://{}/.well-known/jwks.json", app.http_addr))
            .await?
            .json()
            .await?;
    let http_kids: Vec<&str> = http["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(http_kids, [next_kid.as_str(), old_kid.as_str()]);

    let after = wait_for_signing_key(&app, &next_kid).await?;
    // Both tokens work; the old key stays published until its tokens expire.
    for token in [&before, &after] {
        app.agencies()
            .list_clients(authed(pb::ListClientsRequest::default(), token))
            .await?;
    }
    let jwks = app
        .tokens()
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner();
    assert!(jwks.keys.iter().any(|k| k.kid == old_kid));
    Ok(())
}

pub async fn verifier_with_stale_cache_picks_up_new_key_without_restart(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(
        engine,
        AppOptions {
            next_key_lead: Duration::from_secs(1),
            ..AppOptions::default()
        },
    )
    .await?;
    let eager = http_verifier(&app, Duration::ZERO);
    let rate_limited = http_verifier(&app, Duration::from_secs(3600));
    let before = app.token(&app.operator).await?;
    // Both verifiers now cache the one key there is.
    eager.verify(&before).await?;
    rate_limited.verify(&before).await?;

    let rotated = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &before))
        .await?
        .into_inner();
    let after = wait_for_signing_key(&app, &rotated.next_kid).await?;

    // An unknown kid makes the verifier fetch the keys again...
    let caller = eager.verify(&after).await?;
    assert_eq!(caller.client_id, app.operator.client_id);
    eager.verify(&before).await?;
    // ...but no more often than its minimum refresh interval allows.
    assert_eq!(
        rate_limited.verify(&after).await.unwrap_err(),
        AuthError::UnknownKey
    );
    Ok(())
}
