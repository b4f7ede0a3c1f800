//! Request bodies read whole under a size limit: a longer one is a 413
//! ([`ApiError::ValueTooLarge`]), a broken one a 400.
//!
//! Read here rather than through axum's `Bytes` extractor and a
//! `DefaultBodyLimit` layer: that layer hands the limit to the extractor in
//! the request's extensions, so every request with a body allocated and
//! grew, then freed, the extensions' map for it: about 1,500 instructions
//! a PUT (`bench/kv-cost.sh`, 31,460 against 29,896). Here the limit is a
//! constant of the handler.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Read `body` whole, refusing one longer than `limit` bytes (whether its
/// `Content-Length` says so or its bytes do).
pub async fn read(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::ValueTooLarge),
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

/// A body of at most `LIMIT` bytes, as an extractor. Taken as
/// `Result<LimitedBody<N>, ApiError>` so that a handler reports a bad key
/// before a bad body, as for every other request.
pub struct LimitedBody<const LIMIT: usize>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for LimitedBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        read(request.into_body(), LIMIT).await.map(LimitedBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_up_to_the_limit_is_read_and_a_longer_one_refused() {
        let at_limit = read(Body::from(vec![b'x'; 8]), 8).await;
        assert_eq!(at_limit.ok().as_deref(), Some(&b"xxxxxxxx"[..]));
        let over = read(Body::from(vec![b'x'; 9]), 8).await;
        assert!(matches!(over, Err(ApiError::ValueTooLarge)), "{over:?}");
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_is_a_bad_body() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("connection reset")),
        ];
        let broken = Body::from_stream(futures::stream::iter(chunks));
        match read(broken, 8).await {
            Err(ApiError::BadBody(why)) => assert!(why.contains("connection reset"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
