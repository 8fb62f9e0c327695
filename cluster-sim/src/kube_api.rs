//! The Kubernetes API subset: discovery, CRUD, patches, watches, eviction.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::patch::{self, PatchKind};
use crate::resource::{Kind, RESOURCES, ResourceDef};
use crate::selector::Selectors;
use crate::store::{Event, Keep, Obj};

type Params = HashMap<String, String>;

fn json_response(code: StatusCode, body: Vec<u8>, warnings: &[String]) -> Response {
    let mut r = (code, [("content-type", "application/json")], body).into_response();
    for w in warnings {
        if let Ok(v) = format!("299 - \"unknown field \\\"{}\\\"\"", w.trim_start_matches('.')).parse() {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, v.to_string().into_bytes(), &[])
}

fn obj_response(code: StatusCode, obj: &Obj, warnings: &[String]) -> Response {
    json_response(code, obj.json.to_vec(), warnings)
}

/// The request target after path parsing.
struct Target {
    def: &'static ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return None,
    };
    let def = RESOURCES.iter().find(|d| d.group == group && d.version == version && d.plural == plural)?;
    if namespace.is_some() && !def.namespaced {
        return None;
    }
    if let Some(s) = &sub
        && !def.subresources.iter().any(|x| x.0 == s)
    {
        return None;
    }
    Some(Target { def, namespace, name, sub })
}

/// The Kubernetes API router: every path goes to [`handle`], which reads at
/// most `max_request_body_bytes` of a body.
pub(crate) fn router(cluster: Cluster) -> axum::Router {
    let body_limit = cluster.config().limits.max_request_body_bytes;
    axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(body_limit))
        // One span and one DEBUG line per request (RUST_LOG=tower_http=debug).
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(cluster)
}

/// The fallback handler serving every Kubernetes path.
async fn handle(
    State(cluster): State<Cluster>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The router's `DefaultBodyLimit` stops reading at `max_request_body_bytes`.
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = cluster.config().limits.max_request_body_bytes;
            return ApiError::entity_too_large(&format!("limit is {limit} (max_request_body_bytes)")).into_response();
        }
        Err(r) => return ApiError::bad_request(&r.body_text()).into_response(),
    };
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if cluster.api_down() && segs.first() != Some(&"sim") {
        return ApiError::service_unavailable("the API server is down (simulated outage)").into_response();
    }
    if method == Method::GET
        && let Some(doc) = discovery(&segs, &headers)
    {
        return value_response(StatusCode::OK, &doc);
    }
    if method == Method::GET && segs == ["sim", "requests"] {
        let counts: Vec<Value> = cluster
            .kube_requests()
            .into_iter()
            .map(|(r, n)| serde_json::json!({"client": r.client, "verb": r.verb, "resource": r.resource, "count": n}))
            .collect();
        return value_response(StatusCode::OK, &Value::Array(counts));
    }
    // A per-node sidecar: healthz answers 503 until it is marked ready.
    if let ["sim", "v1", "nodes", node, "sidecar", op] = segs[..] {
        return match (op, &method) {
            ("healthz", &Method::GET) => match cluster.sidecar_ready(node) {
                Some(true) => value_response(StatusCode::OK, &serde_json::json!({"ready": true})),
                Some(false) => value_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"ready": false, "reason": "not marked ready since the pod started"}),
                ),
                None => ApiError::not_found("nodes", node).into_response(),
            },
            ("mark-ready", &Method::POST) => match cluster.mark_ready(node) {
                Some(was) => value_response(StatusCode::OK, &serde_json::json!({"ready": true, "fixed": was})),
                None => ApiError::not_found("nodes", node).into_response(),
            },
            _ => ApiError::method_not_allowed(&format!("{method} {}", uri.path())).into_response(),
        };
    }
    // The simulated host: what an operator's script does over SSH.
    if let ["sim", "v1", "nodes", node, "restart", service] = segs[..] {
        if method != Method::POST {
            return ApiError::method_not_allowed(&format!("{method} {}", uri.path())).into_response();
        }
        return match cluster.restart_service(node, service) {
            Some(fixed) => {
                let fixed: Vec<Value> = fixed.iter().map(|f| serde_json::to_value(f).unwrap_or(Value::Null)).collect();
                value_response(StatusCode::OK, &serde_json::json!({"node": node, "service": service, "fixed": fixed}))
            }
            None => ApiError::not_found("nodes", node).into_response(),
        };
    }
    let Some(t) = parse_target(&segs) else {
        return ApiError::no_route(uri.path()).into_response();
    };
    let request = crate::cluster::KubeRequest {
        client: headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split(['/', ' ']).next())
            .filter(|p| !p.is_empty() && p.len() <= 64)
            .unwrap_or("unknown")
            .to_owned(),
        verb: match (&method, t.name.is_some()) {
            (&Method::GET, false) if query_bool(&params, "watch").unwrap_or(false) => "watch",
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, false) => "deletecollection",
            (&Method::DELETE, true) => "delete",
            _ => "other",
        },
        resource: match &t.sub {
            Some(sub) => format!("{}/{sub}", t.def.plural),
            None => t.def.plural.to_owned(),
        },
    };
    // RBAC as a test asked for it (`Cluster::forbid`): 403, as the API server words it.
    if cluster.forbidden(request.verb, &request.resource) {
        let user = "system:serviceaccount:kube-system:node-agent";
        let e = ApiError::forbidden(user, request.verb, &request.resource, t.name.as_deref(), t.namespace.as_deref());
        cluster.count_request(request);
        return e.into_response();
    }
    cluster.count_request(request);
    match serve(&cluster, &method, t, &params, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&format!("the request body is not valid JSON: {e}")))
}

fn strict(params: &Params) -> bool {
    params.get("fieldValidation").is_some_and(|v| v.eq_ignore_ascii_case("Strict"))
}

/// A boolean query parameter, parsed the way the API server parses them
/// (Go's `strconv.ParseBool`); absent is false, anything else is a 400.
pub(crate) fn query_bool(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
        Some(v) => Err(ApiError::bad_request(&format!(
            "invalid value {v:?} for query parameter {name}: expected true or false (1, t, T, TRUE, True, 0, f, F, FALSE, False)"
        ))),
    }
}

async fn serve(
    cluster: &Cluster,
    method: &Method,
    t: Target,
    params: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let kind = t.def.kind;
    let ns = t.namespace.as_deref();
    match (method.as_str(), t.name.as_deref(), t.sub.as_deref()) {
        ("GET", None, None) => {
            let sel = Selectors::parse(
                kind,
                params.get("labelSelector").map(String::as_str),
                params.get("fieldSelector").map(String::as_str),
            )?;
            let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
            let table =
                crate::table::wants_table(accept).then(|| params.get("includeObject").is_some_and(|i| i == "Object"));
            let metadata_only = crate::table::wants_metadata(accept);
            if query_bool(params, "watch")? {
                watch(cluster, kind, t.namespace, sel, params, table, metadata_only)
            } else {
                list(cluster, kind, ns, &sel, params, table, metadata_only)
            }
        }
        ("POST", None, None) => {
            let mut v = parse_body(body)?;
            check_type(&v, t.def)?;
            if let Some(ns) = ns {
                let body_ns = v.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
                if body_ns.is_some_and(|b| b != ns) {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                if let Some(m) = v.as_object_mut().map(|o| o.entry("metadata").or_insert(json!({}))) {
                    m["namespace"] = json!(ns);
                }
            } else if t.def.namespaced {
                return Err(ApiError::method_not_allowed("create requires a namespace"));
            }
            let (obj, unknown) = cluster.create_obj(kind, v, strict(params))?;
            Ok(obj_response(StatusCode::CREATED, &obj, &unknown))
        }
        ("GET", Some(name), sub) if sub != Some("eviction") => {
            let obj = cluster.get_obj(kind, ns.unwrap_or(""), name);
            let obj = obj.ok_or_else(|| ApiError::not_found(t.def.plural, name))?;
            let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
            if sub.is_none() && crate::table::wants_table(accept) {
                let include = params.get("includeObject").is_some_and(|i| i == "Object");
                let meta = json!({"resourceVersion": obj.rv.to_string()});
                return Ok(value_response(StatusCode::OK, &crate::table::table(kind, &[obj], meta, include)));
            }
            if sub.is_none() && crate::table::wants_metadata(accept) {
                return Ok(json_response(StatusCode::OK, crate::table::partial(&obj), &[]));
            }
            Ok(obj_response(StatusCode::OK, &obj, &[]))
        }
        ("PUT", Some(name), sub) if sub != Some("eviction") => {
            let v = parse_body(body)?;
            check_type(&v, t.def)?;
            let keep = keep_for(t.def, sub);
            let (obj, unknown) = cluster.replace_obj(kind, ns.unwrap_or(""), name, v, keep, strict(params))?;
            Ok(obj_response(StatusCode::OK, &obj, &unknown))
        }
        ("PATCH", Some(name), sub) if sub != Some("eviction") => {
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            let pk = PatchKind::from_content_type(ct)?;
            let p = parse_body(body)?;
            if pk == PatchKind::Apply {
                return server_side_apply(cluster, t.def, kind, ns, name, sub, &p, params);
            }
            let keep = keep_for(t.def, sub);
            let limits = &cluster.config().limits;
            let (obj, unknown, _) =
                cluster.write_obj(kind, ns.unwrap_or(""), name, keep, strict(params), |current| {
                    let mut v = current.ok_or_else(|| ApiError::not_found(t.def.plural, name))?;
                    patch::apply(pk, &mut v, &p, limits)?;
                    if v.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str) != Some(name) {
                        return Err(ApiError::invalid_field(
                            t.def.kind_name,
                            name,
                            "metadata.name",
                            "field is immutable",
                        ));
                    }
                    Ok(v)
                })?;
            Ok(obj_response(StatusCode::OK, &obj, &unknown))
        }
        ("DELETE", Some(name), None) => {
            let opts: Value = if body.is_empty() { Value::Null } else { parse_body(body)? };
            let rv = opts.get("preconditions").and_then(|p| p.get("resourceVersion")).and_then(Value::as_str);
            let obj = cluster.delete_obj(kind, ns.unwrap_or(""), name, rv)?;
            Ok(obj_response(StatusCode::OK, &obj, &[]))
        }
        ("POST", Some(name), Some("eviction")) => evict(cluster, ns.unwrap_or(""), name, body),
        _ => Err(ApiError::method_not_allowed(&format!("{method} {}", t.def.plural))),
    }
}

/// `PATCH` with `application/apply-patch+yaml`: creates or updates the
/// object from the applied configuration as its field manager.
#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    cluster: &Cluster,
    def: &ResourceDef,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    config: &Value,
    params: &Params,
) -> Result<Response, ApiError> {
    let manager = params.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::invalid_field(
            def.kind_name,
            name,
            "metadata.managedFields.fieldManager",
            "is required for apply patch",
        )
    })?;
    let force = query_bool(params, "force")?;
    check_type(config, def)?;
    if config["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::invalid_field(
            def.kind_name,
            name,
            "metadata.name",
            "the applied configuration must name the object of the URL",
        ));
    }
    let api_version = def.kind.api_version();
    let now = crate::store::now_rfc3339();
    let (obj, unknown, created) =
        cluster.write_obj(kind, ns.unwrap_or(""), name, keep_for(def, sub), strict(params), |current| {
            let created = current.is_none();
            let mut v = crate::apply::apply(current, config, manager, force, &api_version, &now)?;
            if created && let Some(ns) = ns {
                v["metadata"]["namespace"] = Value::String(ns.to_owned());
            }
            Ok(v)
        })?;
    Ok(obj_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &obj, &unknown))
}

fn keep_for(def: &ResourceDef, sub: Option<&str>) -> Keep {
    let has_status = def.subresources.iter().any(|s| s.0 == "status");
    match (has_status, sub) {
        (true, Some("status")) => Keep::Spec,
        (true, _) => Keep::Status,
        (false, _) => Keep::Nothing,
    }
}

fn check_type(v: &Value, def: &ResourceDef) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    let api_version = def.kind.api_version();
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && k != def.kind_name
    {
        return Err(ApiError::bad_request(&format!("the body is a {k}, not a {}", def.kind_name)));
    }
    if let Some(a) = v.get("apiVersion").and_then(Value::as_str)
        && a != api_version
    {
        return Err(ApiError::bad_request(&format!("apiVersion {a:?} does not match {api_version:?}")));
    }
    Ok(())
}

fn list(
    cluster: &Cluster,
    kind: Kind,
    ns: Option<&str>,
    sel: &Selectors,
    params: &Params,
    table: Option<bool>,
    metadata_only: bool,
) -> Result<Response, ApiError> {
    let limit = match params.get("limit") {
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(ApiError::bad_request(&format!("limit must be a non-negative integer, got {l:?}"))),
        },
        None => None,
    };
    let cont = params.get("continue").map(String::as_str).filter(|c| !c.is_empty());
    let page = cluster.list_objs(kind, ns, sel, limit, cont)?;
    let def = kind.def();
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(page.remaining);
    }
    if let Some(include_object) = table {
        return Ok(value_response(StatusCode::OK, &crate::table::table(kind, &page.items, meta, include_object)));
    }
    if metadata_only {
        let head = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta});
        let out = list_bytes(&head, page.items.iter().map(|o| crate::table::partial(o)));
        return Ok(json_response(StatusCode::OK, out, &[]));
    }
    let head = json!({"kind": format!("{}List", def.kind_name), "apiVersion": kind.api_version(), "metadata": meta});
    let out = list_bytes(&head, page.items.iter().map(|o| &o.json[..]));
    Ok(json_response(StatusCode::OK, out, &[]))
}

/// A list as JSON: `head` (kind, apiVersion, metadata) with `items` written
/// in as they are (already JSON), so a page of stored objects is copied,
/// not parsed.
fn list_bytes<I: AsRef<[u8]>>(head: &Value, items: impl Iterator<Item = I>) -> Vec<u8> {
    let mut out = head.to_string().into_bytes();
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

/// The longest watch the simulator grants (longer requests are capped).
const MAX_WATCH_SECONDS: u64 = 86_400;

fn event_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": kind.def().kind_name, "apiVersion": kind.api_version(), "metadata": meta});
    event_line("BOOKMARK", obj.to_string().as_bytes())
}

struct WatchState {
    kind: Kind,
    /// Table output: Some(include the full object).
    table: Option<bool>,
    /// PartialObjectMetadata objects (`as=PartialObjectMetadata`).
    metadata_only: bool,
    columns_sent: bool,
    namespace: Option<String>,
    sel: Selectors,
    pending: std::collections::VecDeque<Bytes>,
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    last_rv: u64,
    bookmarks: Option<tokio::time::Interval>,
    deadline: tokio::time::Instant,
    done: bool,
    /// Ends the watch when an API outage starts.
    outage: tokio::sync::watch::Receiver<Option<String>>,
}

/// The event type a watch of (`kind`, `namespace`, `sel`) reports for `e`,
/// if any: a modification that moves an object into (out of) the selection
/// is ADDED (DELETED), as the API server's watch cache does.
fn reported_type(kind: Kind, namespace: Option<&str>, sel: &Selectors, e: &Event) -> Option<&'static str> {
    if e.kind != kind || namespace.is_some_and(|ns| ns != e.obj.namespace) {
        return None;
    }
    let now = sel.matches(e.obj.as_ref());
    let before = e.prev.as_ref().map(|p| sel.matches(p.as_ref()));
    match (e.event_type, before, now) {
        ("MODIFIED", Some(false), true) => Some("ADDED"),
        ("MODIFIED", Some(true), false) => Some("DELETED"),
        (_, _, true) => Some(e.event_type),
        _ => None,
    }
}

fn watch(
    cluster: &Cluster,
    kind: Kind,
    namespace: Option<String>,
    sel: Selectors,
    params: &Params,
    table: Option<bool>,
    metadata_only: bool,
) -> Result<Response, ApiError> {
    let from_rv = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(&format!("invalid resourceVersion {rv:?}: expected an integer")))?,
        ),
    };
    let send_initial = query_bool(params, "sendInitialEvents")?;
    let timeout = match params.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| {
                    ApiError::bad_request(&format!("invalid timeoutSeconds {t:?}: expected a whole number of seconds"))
                })?
                .min(MAX_WATCH_SECONDS),
        ),
        None => Duration::from_secs(1800),
    };
    let from_rv = if send_initial { None } else { from_rv };
    let mut pending = std::collections::VecDeque::new();
    let started = cluster.watch_objs(kind, namespace.as_deref(), &sel, from_rv);
    let start = match started {
        Ok(s) => s,
        Err(e) if e.code == 410 => {
            // A watch from a compacted version: 200 with one ERROR event, as the API server does.
            pending.push_back(event_line("ERROR", e.status_json().to_string().as_bytes()));
            let stream = futures_util::stream::iter(pending.into_iter().map(Ok::<_, Infallible>));
            return Ok(
                (StatusCode::OK, [("content-type", "application/json")], Body::from_stream(stream)).into_response()
            );
        }
        Err(e) => return Err(e),
    };
    let mut last_rv = from_rv.unwrap_or(start.rv);
    let mut columns_sent = false;
    for e in &start.initial {
        if let Some(event_type) = reported_type(kind, namespace.as_deref(), &sel, e) {
            pending.push_back(render_event(kind, event_type, &e.obj, table, metadata_only, &mut columns_sent));
        }
        last_rv = last_rv.max(e.obj.rv);
    }
    last_rv = last_rv.max(start.rv);
    if send_initial {
        pending.push_back(bookmark(kind, last_rv, true));
    }
    let bookmarks = query_bool(params, "allowWatchBookmarks")?.then(|| {
        let every = cluster.inner.config.bookmark_interval;
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    let state = WatchState {
        kind,
        table,
        metadata_only,
        columns_sent,
        namespace,
        sel,
        pending,
        rx: start.rx,
        last_rv,
        bookmarks,
        deadline: tokio::time::Instant::now() + timeout,
        done: false,
        outage: cluster.inner.outage.subscribe(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(line), st));
            }
            if st.done {
                return None;
            }
            let tick = async {
                match st.bookmarks.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = st.rx.recv() => match r {
                    Ok(e) => {
                        if e.obj.rv > st.last_rv {
                            st.last_rv = e.obj.rv;
                            if let Some(event_type) = reported_type(st.kind, st.namespace.as_deref(), &st.sel, &e) {
                                let line = render_event(st.kind, event_type, &e.obj, st.table, st.metadata_only, &mut st.columns_sent);
                                st.pending.push_back(line);
                            }
                        }
                    }
                    // Too slow to keep up, or the server is going away: end the
                    // watch; the client resumes from its last version.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => st.done = true,
                },
                () = tick => st.pending.push_back(bookmark(st.kind, st.last_rv, false)),
                () = tokio::time::sleep_until(st.deadline) => st.done = true,
                r = st.outage.changed() => {
                    if r.is_err() || st.outage.borrow().is_some() {
                        st.done = true;
                    }
                }
            }
        }
    });
    Ok((StatusCode::OK, [("content-type", "application/json")], Body::from_stream(stream)).into_response())
}

fn render_event(
    kind: Kind,
    event_type: &str,
    obj: &Obj,
    table: Option<bool>,
    metadata_only: bool,
    columns_sent: &mut bool,
) -> Bytes {
    match table {
        Some(include_object) => {
            let with_columns = !*columns_sent;
            *columns_sent = true;
            event_line(event_type, &crate::table::table_event(kind, obj, include_object, with_columns))
        }
        None if metadata_only => event_line(event_type, &crate::table::partial(obj)),
        None => event_line(event_type, &obj.json),
    }
}

fn evict(cluster: &Cluster, ns: &str, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let ev = parse_body(body)?;
    if ev.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Eviction") {
        return Err(ApiError::bad_request("the body must be an Eviction"));
    }
    cluster.evict_pod(ns, name)?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(value_response(StatusCode::CREATED, &status))
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES.iter().filter(|d| d.group == group && d.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        resources.push(json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind_name,
            "verbs": d.verbs, "shortNames": d.short_names,
        }));
        for (sub, kind, g, v, verbs) in d.subresources {
            let mut r = json!({"name": format!("{}/{sub}", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": kind, "verbs": verbs});
            if !g.is_empty() {
                r["group"] = json!(g);
                r["version"] = json!(v);
            }
            resources.push(r);
        }
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn groups() -> Vec<Value> {
    let mut names: Vec<&str> = RESOURCES.iter().map(|d| d.group).filter(|g| !g.is_empty()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect()
}

fn discovery(segs: &[&str], headers: &HeaderMap) -> Option<Value> {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    match segs {
        ["version"] => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.1+k3s1", "gitCommit": "99d91538b1327da933356c318dc8040335fbb66c",
            "gitTreeState": "clean", "buildDate": "2025-05-20T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
            "platform": "linux/amd64"
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]
        })),
        ["api", "v1"] => resource_list("", "v1"),
        ["apis"] => Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups()})),
        ["apis", g] => groups().into_iter().find(|x| x["name"] == *g).map(|mut x| {
            x["kind"] = json!("APIGroup");
            x["apiVersion"] = json!("v1");
            x
        }),
        ["apis", g, v] => resource_list(g, v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        let t = parse_target(&["api", "v1", "namespaces", "default", "pods", "p", "eviction"]).unwrap();
        assert_eq!(
            (t.def.kind, t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            (Kind::Pod, Some("default"), Some("p"), Some("eviction"))
        );
        assert!(parse_target(&["api", "v1", "namespaces", "default", "nodes"]).is_none(), "nodes are not namespaced");
        assert!(parse_target(&["api", "v1", "nodes", "n", "proxy"]).is_none());
        let t = parse_target(&["apis", "coordination.k8s.io", "v1", "leases"]).unwrap();
        assert_eq!(t.def.kind, Kind::Lease);
        assert!(resource_list("policy", "v1").is_some());
        assert!(resource_list("batch", "v1").is_none());
    }
}
