//! WebhookService.

use super::*;

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Reply<pb::CreateWebhookEndpointResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let url = v.check(
            "url",
            parse_return_url(&req.url, tenant.environment).and_then(|url| {
                if tenant.environment == Environment::Live && !crate::webhook::is_public_url(&url) {
                    Err("must be an https:// URL of a host on the public internet".to_owned())
                } else {
                    Ok(url)
                }
            }),
        );
        let types = v.check(
            "event_types",
            parse_enum_list(&req.event_types, event_type_from_pb),
        );
        if req.description.chars().count() > 255 || req.description.chars().any(char::is_control) {
            v.add(
                "description",
                "must be at most 255 characters, without control characters",
            );
        }
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let ((url, mut types), key) = v.finish_with(url.zip(types).zip(key))?;
        types.sort_by_key(|t| t.as_str());
        types.dedup();
        let (endpoint, secret) = self
            .0
            .create_webhook_endpoint(&tenant, url, types, req.description, key.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateWebhookEndpointResponse {
            webhook_endpoint: Some(endpoint_to_pb(&endpoint)),
            signing_secret: secret,
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Reply<pb::ListWebhookEndpointsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, "", WEBHOOK_ENDPOINT_ID_PREFIX),
        );
        let (page_size, cursor) = v.finish_with(page_size.zip(cursor))?;
        let page = self
            .0
            .list_webhook_endpoints(&tenant, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            webhook_endpoints: page.items.iter().map(endpoint_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, ""))
                .unwrap_or_default(),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Reply<pb::DeleteWebhookEndpointResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let id = parse_id(
            WEBHOOK_ENDPOINT_ID_PREFIX,
            &request.get_ref().webhook_endpoint_id,
        )
        .map_err(|e| ApiError::invalid("webhook_endpoint_id", e))?;
        self.0
            .delete_webhook_endpoint(&tenant, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }
}
