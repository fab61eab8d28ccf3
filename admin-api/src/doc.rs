//! The OpenAPI document of the admin API, generated from the handlers'
//! annotations and the request and response types, served at
//! `GET /v1/openapi.json`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use herald_core::http::ApiError;
use herald_protocol::{ErrorBody, ErrorCode, ErrorDetail};
use utoipa::OpenApi;

use crate::AdminState;

use crate::routes::{
    __path_disconnect, __path_history, __path_presence, __path_publish, __path_publish_batch,
    __path_revoke, __path_stats, BatchMessage, BatchRequest, DisconnectRequest, DisconnectResponse,
    HistoryResponse, NodeStatsDoc, PresenceResponse, PublishRequest, PublishResponse,
    PublishResult, RevokeRequest, RevokeResponse, StatsResponse,
};

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald admin API",
        description = "Publish events to topics, read topic history and presence, disconnect users, revoke tokens and read cluster stats. Every route except this document needs `Authorization: Bearer <admin key>`."
    ),
    paths(publish, publish_batch, history, presence, disconnect, revoke, stats, openapi_json),
    components(schemas(
        PublishRequest, PublishResponse, PublishResult, BatchRequest, BatchMessage,
        HistoryResponse, PresenceResponse, herald_protocol::Member, DisconnectRequest, DisconnectResponse, RevokeRequest, RevokeResponse, StatsResponse, NodeStatsDoc,
        ErrorBody, ErrorDetail
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document this node serves: generated from the handlers, then made
/// exact for its configuration (see [`crate::exact`]).
pub fn document(presence: &herald_protocol::Permissions) -> serde_json::Value {
    let generated = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    crate::exact::refine(generated, presence)
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
pub(crate) async fn openapi_json(State(state): State<AdminState>) -> Response {
    match serde_json::to_vec(&document(&state.presence)) {
        Ok(json) => ([(http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => {
            ApiError::new(ErrorCode::Internal, "cannot render the OpenAPI document").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ROUTES;

    #[test]
    fn openapi_lists_every_route() {
        let doc = ApiDoc::openapi();
        for r in ROUTES {
            let item = doc
                .paths
                .paths
                .get(r.path)
                .unwrap_or_else(|| panic!("{} missing", r.path));
            let json = serde_json::to_value(item).unwrap();
            let op = json
                .get(r.method)
                .unwrap_or_else(|| panic!("{} {} missing", r.method, r.path));
            if r.scope.is_some() {
                assert!(
                    op["responses"].get("403").is_some(),
                    "{} {} does not list its 403",
                    r.method,
                    r.path
                );
            }
        }
        assert_eq!(
            doc.paths.paths.len(),
            ROUTES.len(),
            "a documented path is not routed"
        );
    }
}
