//! The coordinator's HTTP endpoints: the web UI ([`crate::ui`]), the JSON REST API
//! ([`crate::rest`]) with its generated OpenAPI document, Prometheus metrics and a
//! health check.
//!
//! The UI renders the REST API's own types, built from the same status the gRPC API
//! returns, so the UI, the REST API and `drove status` never disagree.

use axum::Extension;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use drove_core::JobId;
use drove_core::access::Identity;

use crate::Error;
use crate::auth::{self, Credential};
use crate::rest::{api_error, parse_id};
use crate::state::Coordinator;
use crate::{rest, ui};

/// The HTTP routes.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/", get(ui_overview))
        .route("/jobs/{id}", get(ui_job))
        .route("/workers/{id}", get(ui_worker))
        .route(
            ui::STYLESHEET,
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    ui::STYLE,
                )
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(ui::SIGN_IN, get(sign_in_page).post(sign_in))
        .route("/metrics", get(metrics))
        .merge(rest::router())
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such page".into()) })
        // After the routes: it applies to those registered before it. Axum still sets
        // the Allow header.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            coordinator.clone(),
            authenticate,
        ))
        .with_state(coordinator)
        .layer(axum::middleware::from_fn(web_surface))
        // A panic in a handler is a bug; it fails that request, not the server.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "internal error: {}",
                        drove_core::panic_message(panic.as_ref())
                    ),
                )
            },
        ))
}

/// What every response carries, for browsers: the pages load nothing but the
/// stylesheet from here (no script, no inline style), and no other site may frame
/// them.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// The content types an HTML form sends, which a browser lets any site post across
/// origins without asking first.
const FORM_CONTENT_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// Refuses a request that would change something (any method but GET and HEAD) when
/// a browser says another site sent it, or it is shaped as a form post: a page
/// elsewhere cannot cancel jobs through a visitor's browser. Adds
/// [`SECURITY_HEADERS`] to every response.
async fn web_surface(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = match cross_site(&request) {
        Some(why) => api_error(
            StatusCode::FORBIDDEN,
            format!(
                "{why}: requests that change something must come from this origin and not as a form (curl -X POST works)"
            ),
        ),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// Pages anyone may fetch: the health check, the sign-in page, and the stylesheet.
const OPEN_PATHS: [&str; 3] = ["/health", ui::SIGN_IN, ui::STYLESHEET];

/// The peer of an HTTPS connection: its address, and what its certificate says.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    pub credential: Credential,
}

/// Identifies the caller of every request but [`OPEN_PATHS`] (see
/// [`Coordinator::identify`]) and hands its [`Identity`] to the handler; refuses an
/// unknown caller with 401.
async fn authenticate(
    State(coordinator): State<Coordinator>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let connection = (request.extensions().get::<ConnectInfo<Peer>>())
        .map_or(Credential::None, |peer| peer.0.credential.clone());
    let credential = Credential::of_http(request.headers(), connection);
    match coordinator.identify(credential).await {
        Ok(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        Err(Error::Unauthenticated(message)) => {
            let mut response = api_error(StatusCode::UNAUTHORIZED, message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        Err(e @ Error::NotLeader { .. }) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The sign-in page's anti-forgery cookie, whose value the form sends back.
const CSRF_COOKIE: &str = "drove_csrf";

/// How long the UI keeps a token.
const TOKEN_COOKIE_SECONDS: u32 = 12 * 3600;

/// A cookie for this server only, over HTTPS only, never sent cross-site nor
/// readable by scripts. (Without TLS the cluster authenticates nobody, and the UI
/// needs no sign-in.)
fn set_cookie(name: &str, value: &str, path: &str, max_age: u32) -> header::HeaderValue {
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    );
    header::HeaderValue::from_str(&text).unwrap_or_else(|_| header::HeaderValue::from_static(""))
}

/// The sign-in page, with a fresh anti-forgery value in its form and a cookie.
async fn sign_in_page() -> Response {
    sign_in_form(StatusCode::OK, None)
}

fn sign_in_form(status: StatusCode, error: Option<&str>) -> Response {
    let csrf = match drove_exec::token::nonce() {
        Ok(csrf) => csrf,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let cookie = set_cookie(CSRF_COOKIE, &csrf, ui::SIGN_IN, 3600);
    let page = Html(ui::sign_in(&csrf, error).into_string());
    (status, [(header::SET_COOKIE, cookie)], page).into_response()
}

/// Takes the sign-in form: with the page's anti-forgery value and a token the
/// cluster knows, keeps the token in a cookie and goes to the overview.
async fn sign_in(
    State(coordinator): State<Coordinator>,
    headers: header::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = form_fields(&body);
    let field = |name: &str| form.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let expected = auth::cookie(&headers, CSRF_COOKIE);
    if field("csrf").is_none() || field("csrf").map(str::to_string) != expected {
        return sign_in_form(
            StatusCode::FORBIDDEN,
            Some("the form is stale or came from another page; sign in again here"),
        );
    }
    let token = field("token").unwrap_or_default().to_string();
    let signed_in = coordinator.identify(Credential::Token(token.clone())).await;
    if let Ok(who) = &signed_in {
        auth::audit(who, "sign-in", &"the web UI", &signed_in);
    }
    match signed_in {
        Ok(_) => {
            let cookie = set_cookie(auth::TOKEN_COOKIE, &token, "/", TOKEN_COOKIE_SECONDS);
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, header::HeaderValue::from_static("/")),
                ],
            )
                .into_response()
        }
        Err(e) => sign_in_form(StatusCode::UNAUTHORIZED, Some(&e.to_string())),
    }
}

/// The fields of a form body. Tokens and anti-forgery values are plain letters,
/// digits and '_': a field with anything to decode is kept as it came, and fails.
fn form_fields(body: &[u8]) -> Vec<(&str, &str)> {
    std::str::from_utf8(body)
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect()
}

/// Why `request` looks like a cross-site write, if it does.
fn cross_site(request: &axum::extract::Request) -> Option<&'static str> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return Some("the browser says another site sent this request");
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if host.is_empty() || origin_host != host {
            return Some("the request's Origin is another site");
        }
    }
    if let Some(kind) = text(header::CONTENT_TYPE) {
        let kind = kind.split(';').next().unwrap_or_default().trim();
        // The sign-in form is the one form: it carries an anti-forgery field.
        let sign_in = request.uri().path() == ui::SIGN_IN
            && kind.eq_ignore_ascii_case("application/x-www-form-urlencoded");
        if !sign_in
            && FORM_CONTENT_TYPES
                .iter()
                .any(|f| kind.eq_ignore_ascii_case(f))
        {
            return Some("the request is a form post");
        }
    }
    None
}

/// A request with a method the path does not take: 405 with a JSON error, like every
/// other error of the API, beside the Allow header axum adds.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

/// The metrics in OpenMetrics text, which Prometheus scrapes.
async fn metrics(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        coordinator.metrics_text(&who).await,
    )
        .into_response()
}

async fn ui_overview(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
) -> Html<String> {
    Html(ui::overview(&rest::cluster_view(&coordinator, &who).await).into_string())
}

async fn ui_job(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let job = match parse_id("job", raw) {
        Ok(id) => rest::job_view(&coordinator, &who, JobId(id))
            .await
            .map_err(|e| e.to_string()),
        Err(m) => Err(m),
    };
    ui_page(job.map(|j| ui::job(&j)))
}

async fn ui_worker(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let worker = match parse_id("worker", raw) {
        Ok(id) => rest::worker_view(&coordinator, &who, id).await,
        Err(m) => Err(m),
    };
    ui_page(worker.map(|w| ui::worker(&w)))
}

/// A page, or a 404 page that says what was not found.
fn ui_page(page: Result<maud::Markup, String>) -> Response {
    match page {
        Ok(page) => Html(page.into_string()).into_response(),
        Err(message) => (
            StatusCode::NOT_FOUND,
            Html(ui::not_found(&message).into_string()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use serde_json::Value;

    use super::*;
    use crate::CoordinatorConfig;

    /// The router of a coordinator with no workers and no jobs, on a loopback port.
    async fn serve() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Coordinator::new(CoordinatorConfig::default()).unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// One HTTP/1.1 request: the status, the head (lower case) and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        request_with(addr, method, path, "").await
    }

    /// [`request`] with more header lines (each ending in CRLF).
    async fn request_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String, String) {
        exchange(addr, &format!("{method} {path}"), headers, "").await
    }

    /// A form post to `path` with more header lines.
    async fn post_form(
        addr: SocketAddr,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String, String) {
        let headers = format!("{headers}Content-Type: application/x-www-form-urlencoded\r\n");
        exchange(addr, &format!("POST {path}"), &headers, body).await
    }

    /// One HTTP/1.1 exchange: `METHOD PATH`, header lines and a body.
    async fn exchange(
        addr: SocketAddr,
        request: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{request} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    /// `request` ("METHOD PATH") answers `status` with a JSON `{"error": ...}` (or, for
    /// the UI's pages, HTML) whose message contains `message`. Returns the head.
    async fn check(addr: SocketAddr, (request, status, message): (&str, u16, &str)) -> String {
        let (method, path) = request.split_once(' ').unwrap();
        let (code, head, body) = self::request(addr, method, path).await;
        let what = format!("{request}: {code}\n{head}\n{body}");
        assert_eq!(code, status, "{what}");
        if path.starts_with("/api/") {
            assert!(head.contains("content-type: application/json"), "{what}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {what}"));
            let fields = v.as_object().unwrap();
            assert_eq!(fields.len(), 1, "only the documented field: {what}");
            assert!(
                fields["error"].as_str().unwrap().contains(message),
                "{what}"
            );
            assert!(body.len() < 400, "the message repeats no long id: {what}");
        } else {
            assert!(head.contains("content-type: text/html"), "{what}");
            assert!(body.contains(message), "{what}");
        }
        assert_eq!(head.contains("\r\nallow: "), code == 405, "{what}");
        head
    }

    /// The router of a coordinator with TLS, so with authentication (served here
    /// over plain HTTP, so requests carry no certificate), and its CA's admin token.
    async fn serve_with_tls() -> (SocketAddr, Coordinator, String, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("ca");
        drove_exec::tls::init(&ca).unwrap();
        let node = root.path().join("node");
        drove_exec::tls::issue(&ca, "node", drove_exec::tls::Role::Node, &[], 1, &node).unwrap();
        let admin = std::fs::read_to_string(ca.join(drove_exec::token::ADMIN_TOKEN)).unwrap();
        let coordinator = Coordinator::new(CoordinatorConfig {
            tls: Some(drove_exec::tls::ClusterTls::load(&node).unwrap()),
            ..Default::default()
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(coordinator.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, coordinator, admin.trim().to_string(), root)
    }

    /// The UI's sign-in form keeps a token the cluster knows in a cookie scoped to
    /// this server; the form must carry the anti-forgery value its page set, and
    /// come from this origin.
    #[tokio::test]
    async fn the_sign_in_form_keeps_a_known_token_and_refuses_forgeries() {
        let (addr, _coordinator, admin, _dir) = serve_with_tls().await;
        let (code, head, page) = request(addr, "GET", ui::SIGN_IN).await;
        assert_eq!(code, 200);
        let set = head
            .lines()
            .find(|l| l.starts_with("set-cookie: drove_csrf="))
            .unwrap();
        assert!(
            set.contains("httponly") && set.contains("samesite=strict") && set.contains("secure"),
            "{set}"
        );
        let csrf = set["set-cookie: drove_csrf=".len()..]
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(page.contains(&format!("value=\"{csrf}\"")), "{page}");
        assert!(head.contains("form-action 'self'"), "{head}");

        let cookie = format!("Cookie: drove_csrf={csrf}\r\n");
        // Signed in: the token is kept, and the overview shows.
        let (code, head, _) = post_form(
            addr,
            ui::SIGN_IN,
            &cookie,
            &format!("csrf={csrf}&token={admin}"),
        )
        .await;
        assert_eq!(code, 303, "{head}");
        assert!(head.contains("location: /"), "{head}");
        let kept = head
            .lines()
            .find(|l| l.starts_with("set-cookie: __host-drove_token="))
            .unwrap();
        assert!(
            kept.contains("httponly")
                && kept.contains("samesite=strict")
                && kept.contains("path=/;"),
            "{kept}"
        );
        // A wrong token, a missing or mismatched anti-forgery value, or another
        // site's post: refused, nothing kept.
        for (headers, body, status) in [
            (
                cookie.clone(),
                format!("csrf={csrf}&token=drove_guess"),
                401,
            ),
            (cookie.clone(), format!("token={admin}"), 403),
            (
                "Cookie: drove_csrf=other\r\n".to_string(),
                format!("csrf={csrf}&token={admin}"),
                403,
            ),
            (
                format!("{cookie}Origin: http://evil.example\r\n"),
                format!("csrf={csrf}&token={admin}"),
                403,
            ),
            (
                format!("{cookie}Sec-Fetch-Site: cross-site\r\n"),
                format!("csrf={csrf}&token={admin}"),
                403,
            ),
        ] {
            let (code, head, _) = post_form(addr, ui::SIGN_IN, &headers, &body).await;
            assert_eq!(code, status, "{headers} {body}: {head}");
            assert!(!head.contains("set-cookie: __host-drove_token"), "{head}");
        }
        // Other forms are still refused.
        let (code, _, _) = post_form(addr, "/api/v1/jobs/1/cancel", &cookie, "").await;
        assert_eq!(code, 403);
    }

    /// With TLS (so with authentication), every page but the health check and the
    /// stylesheet needs a token: the `Authorization` header or the UI's cookie. An
    /// unknown, malformed or revoked token gets 401 naming the fix, and a tenant's
    /// token sees only its tenant's jobs.
    #[tokio::test]
    async fn with_tls_every_page_needs_a_token_and_tenants_see_their_own() {
        let (addr, coordinator, admin, _dir) = serve_with_tls().await;
        let admin = admin.as_str();

        for path in ["/health", ui::STYLESHEET, ui::SIGN_IN] {
            assert_eq!(request(addr, "GET", path).await.0, 200, "{path}");
        }
        let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
        let forged = format!("{}_{}", &admin[..admin.rfind('_').unwrap()], "0".repeat(64));
        for path in [
            "/",
            "/metrics",
            "/api/v1/jobs",
            "/api/v1/cluster",
            "/jobs/1",
        ] {
            let (code, head, body) = request(addr, "GET", path).await;
            assert_eq!(code, 401, "{path}: {body}");
            assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
            assert!(body.contains("--token"), "{path}: {body}");
            for wrong in ["nonsense", forged.as_str()] {
                let (code, _, body) = request_with(addr, "GET", path, &bearer(wrong)).await;
                assert_eq!(code, 401, "{path} with {wrong}: {body}");
                assert!(body.contains("drove token create"), "{path}: {body}");
                assert!(!body.contains(wrong), "the token is not echoed: {body}");
            }
            let (code, _, body) = request_with(addr, "GET", path, &bearer(admin)).await;
            assert_eq!(
                code,
                if path == "/jobs/1" { 404 } else { 200 },
                "{path}: {body}"
            );
            let cookie = format!("Cookie: theme=dark; __Host-drove_token={admin}\r\n");
            let (code, _, _) = request_with(addr, "GET", path, &cookie).await;
            assert_eq!(
                code,
                if path == "/jobs/1" { 404 } else { 200 },
                "{path} with the cookie"
            );
        }

        // No way to submit a job over HTTP, with or without a credential (Spark's
        // unauthenticated REST submission): refused before any route without one.
        let (code, _, _) = request(addr, "POST", "/api/v1/jobs").await;
        assert_eq!(code, 401);
        let (code, _, _) = request_with(addr, "POST", "/api/v1/jobs", &bearer(admin)).await;
        assert_eq!(code, 405);

        // A read token of another tenant sees no jobs but its own, and cannot cancel.
        let ops = Identity {
            tenant: "ops".into(),
            role: drove_core::access::Role::Admin,
            principal: "the test".into(),
        };
        let (reader, id) = coordinator
            .create_token(&ops, "team-a".into(), drove_core::access::Role::Read)
            .await
            .unwrap();
        let (code, _, body) = request_with(addr, "GET", "/api/v1/jobs", &bearer(&reader)).await;
        assert_eq!((code, body.as_str()), (200, "[]"));
        let (code, _, body) =
            request_with(addr, "POST", "/api/v1/jobs/1/cancel", &bearer(&reader)).await;
        assert_eq!(code, 404, "{body}");
        // Revoked, it is refused at once.
        coordinator.revoke_token(&ops, id).await.unwrap();
        let (code, _, _) = request_with(addr, "GET", "/api/v1/jobs", &bearer(&reader)).await;
        assert_eq!(code, 401);
        // So is the CA's admin token, once revoked.
        let admin_id = drove_exec::token::parse(admin).unwrap().id;
        coordinator.revoke_token(&ops, admin_id).await.unwrap();
        let (code, _, _) = request_with(addr, "GET", "/api/v1/jobs", &bearer(admin)).await;
        assert_eq!(code, 401);
    }

    /// A page elsewhere cannot cancel jobs through a visitor's browser (a form post,
    /// or a request its browser marks as cross-site), while the same request from
    /// curl reaches the handler; every response forbids framing and inline script.
    #[tokio::test]
    async fn cross_site_writes_are_refused_and_pages_carry_a_content_security_policy() {
        let addr = serve().await;
        for headers in [
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "Content-Type: text/plain;charset=UTF-8\r\n",
            "Content-Type: multipart/form-data; boundary=x\r\n",
            "Origin: http://evil.example\r\n",
            "Origin: null\r\n",
            "Sec-Fetch-Site: cross-site\r\n",
            "Sec-Fetch-Site: same-site\r\n",
        ] {
            let (code, _, body) =
                request_with(addr, "POST", "/api/v1/jobs/7/cancel", headers).await;
            assert_eq!(code, 403, "{headers}: {body}");
            assert!(body.contains("curl -X POST works"), "{headers}: {body}");
        }
        // Not refused: curl, and the page's own origin; the handler answers.
        for headers in [
            "",
            &format!("Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n"),
        ] {
            let (code, _, body) =
                request_with(addr, "POST", "/api/v1/jobs/7/cancel", headers).await;
            assert_eq!(code, 404, "{headers}: {body}");
        }
        // A cross-site GET changes nothing and is answered.
        let (code, _, _) = request_with(
            addr,
            "GET",
            "/api/v1/jobs",
            "Sec-Fetch-Site: cross-site\r\n",
        )
        .await;
        assert_eq!(code, 200);

        for path in ["/", "/jobs/1", "/api/v1/cluster", "/metrics", "/health"] {
            let (_, head, _) = request(addr, "GET", path).await;
            for (name, value) in SECURITY_HEADERS {
                assert!(
                    head.contains(&format!("\r\n{name}: {}", value.to_lowercase())),
                    "{path}: {head}"
                );
            }
        }
        let (code, head, css) = request(addr, "GET", ui::STYLESHEET).await;
        assert_eq!(code, 200);
        assert!(head.contains("content-type: text/css"), "{head}");
        assert_eq!(css, ui::STYLE);
        let (_, _, page) = request(addr, "GET", "/").await;
        assert!(
            !page.contains("style=") && !page.contains("<style"),
            "{page}"
        );
        assert!(!page.contains("<script"), "{page}");
    }

    #[tokio::test]
    async fn bad_ids_and_methods_get_json_errors_as_documented() {
        let addr = serve().await;
        let long = format!("GET /api/v1/jobs/{}", "9".repeat(1000));
        let cases = [
            ("GET /api/v1/jobs/1", 404, "job-1 does not exist"),
            (
                "GET /api/v1/jobs/18446744073709551615",
                404,
                "does not exist",
            ),
            (
                "GET /api/v1/jobs/18446744073709551616",
                400,
                "from 0 to 18446744073709551615",
            ),
            ("GET /api/v1/jobs/-1", 400, "'-1' is not a job id"),
            ("GET /api/v1/jobs/+1", 400, "'+1' is not a job id"),
            ("GET /api/v1/jobs/%201", 400, "' 1' is not a job id"),
            ("GET /api/v1/jobs/1.0", 400, "'1.0' is not a job id"),
            (
                "GET /api/v1/jobs/%FF",
                400,
                "the job id is not valid: Invalid URL",
            ),
            (&long, 400, "99...' is not a job id"),
            (
                "POST /api/v1/jobs/%FF/cancel",
                400,
                "the job id is not valid",
            ),
            ("POST /api/v1/jobs/7/cancel", 404, "job-7 does not exist"),
            ("POST /api/v1/jobs/x/cancel", 400, "'x' is not a job id"),
            ("GET /api/v1/workers/%FF", 400, "the worker id is not valid"),
            ("GET /api/v1/workers/w1", 400, "'w1' is not a worker id"),
            ("GET /api/v1/workers/1", 404, "worker-1 is not registered"),
            ("POST /api/v1/jobs", 405, "/api/v1/jobs does not take POST"),
            ("DELETE /api/v1/cluster", 405, "does not take DELETE"),
            ("GET /api/v1/jobs/1/cancel", 405, "does not take GET"),
            ("GET /api/v1/nope", 404, "no such page"),
            ("GET /jobs/%FF", 404, "the job id is not valid"),
            ("GET /jobs/abc", 404, "'abc' is not a job id"),
            ("GET /workers/%FF", 404, "the worker id is not valid"),
            ("GET /workers/3", 404, "worker-3 is not registered"),
        ];
        for case in cases {
            check(addr, case).await;
        }
        let head = check(addr, ("POST /api/v1/jobs", 405, "")).await;
        assert!(head.contains("\r\nallow: get,head"), "{head}");
        let head = check(addr, ("GET /api/v1/jobs/1/cancel", 405, "")).await;
        assert!(head.contains("\r\nallow: post"), "{head}");
    }
}
