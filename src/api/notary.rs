//! The notary routes (Matrix Server-Server API, "Querying Keys Through Another Server").
//!
//! - `GET /_matrix/key/v2/query/{serverName}?minimum_valid_until_ts=<ms>`
//! - `POST /_matrix/key/v2/query` with
//!   `{"server_keys": {"<server>": {"<key id>": {"minimum_valid_until_ts": <ms>}}}}`
//!
//! Both answer `{"server_keys": [<the server's own response, co-signed by us>, …]}`; servers we
//! know nothing about are left out. A malformed body is 400 `SY_BAD_JSON`; a malformed server
//! name or `minimum_valid_until_ts` is 400 `SY_INVALID_PARAM`.

use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use serde_json::Value;

use crate::app::AppState;
use crate::core::ids;
use crate::error::{ApiError, ErrorKind};
use crate::federation::client::OutboundClient;

/// Most servers one POST may ask about.
const MAX_SERVERS_PER_QUERY: usize = 100;

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorKind::InvalidParam, message)
}

fn check_server(name: &str) -> Result<(), ApiError> {
    if ids::is_server_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{:?} is not a server name",
            name.chars().take(64).collect::<String>()
        )))
    }
}

#[derive(serde::Deserialize)]
pub struct QueryParams {
    minimum_valid_until_ts: Option<String>,
}

fn parse_minimum(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                invalid("minimum_valid_until_ts must be a non-negative integer (ms)".into())
            })
        })
        .transpose()
}

async fn answer(
    state: &AppState,
    client: &OutboundClient,
    wanted: Vec<(String, Option<i64>)>,
) -> HttpResponse {
    let answers = join_all(wanted.iter().map(|(server, minimum)| {
        state
            .notary
            .query(client, &state.key_server, server, *minimum)
    }))
    .await;
    // Each answer is already canonical JSON: the body is assembled, not re-serialised.
    let mut body = String::from("{\"server_keys\":[");
    for (i, answer) in answers.into_iter().flatten().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&answer);
    }
    body.push_str("]}");
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

pub async fn query_one(
    path: web::Path<String>,
    params: web::Query<QueryParams>,
    state: web::Data<AppState>,
    client: web::Data<OutboundClient>,
) -> Result<HttpResponse, ApiError> {
    let server = path.into_inner();
    check_server(&server)?;
    let minimum = parse_minimum(params.minimum_valid_until_ts.as_deref())?;
    Ok(answer(&state, &client, vec![(server, minimum)]).await)
}

pub async fn query_many(
    body: web::Json<Value>,
    state: web::Data<AppState>,
    client: web::Data<OutboundClient>,
) -> Result<HttpResponse, ApiError> {
    let bad = |message: &str| ApiError::new(ErrorKind::BadJson, message.to_owned());
    let servers = body
        .get("server_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad("the body must be {\"server_keys\": {<server name>: {<key id>: {…}}}}")
        })?;
    if servers.len() > MAX_SERVERS_PER_QUERY {
        return Err(bad("at most 100 servers per query"));
    }
    let mut wanted = Vec::with_capacity(servers.len());
    for (server, criteria) in servers {
        check_server(server)?;
        let criteria = criteria
            .as_object()
            .ok_or_else(|| bad("each server maps to an object of key ids"))?;
        let mut minimum: Option<i64> = None;
        for criterion in criteria.values() {
            let criterion = criterion
                .as_object()
                .ok_or_else(|| bad("each key id maps to an object"))?;
            if let Some(value) = criterion.get("minimum_valid_until_ts") {
                let n = value.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    invalid("minimum_valid_until_ts must be a non-negative integer (ms)".into())
                })?;
                minimum = Some(minimum.map_or(n, |m| m.max(n)));
            }
        }
        wanted.push((server.clone(), minimum));
    }
    Ok(answer(&state, &client, wanted).await)
}
