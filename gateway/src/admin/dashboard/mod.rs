//! The dashboard at `/dashboard`: one HTML page, one script and one style
//! sheet, embedded in the binary with `include_str!` (no CDN, no build step).
//!
//! The script (`dashboard.js`) opens `/api/v1/stream` and redraws on every
//! snapshot. It builds the page with `textContent` and `setAttribute` only,
//! never `innerHTML`, so registry text (ids, versions, labels, event
//! reasons) always shows as text.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Same-origin only; no inline script or style, no plugins, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /dashboard`.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "The live dashboard", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/dashboard.js`.
#[utoipa::path(get, path = "/dashboard/dashboard.js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/dashboard.css`.
#[utoipa::path(get, path = "/dashboard/dashboard.css", tag = "dashboard",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String)))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_never_writes_html() {
        let script = super::SCRIPT;
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(forbidden), "dashboard.js uses {forbidden}");
        }
        assert!(super::PAGE.contains("/dashboard/dashboard.js"));
    }
}
