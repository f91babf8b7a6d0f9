//! Bounded status messages. Errors show a refused value by a short prefix
//! (`domain::shown`), so a status message is short at its source; this is
//! the safety net for every other path. [`BoundedStatus`], a tower layer
//! around the whole gRPC server, cuts any `grpc-message` — in a
//! trailers-only response (an error answered at once) or in a stream's
//! trailers — to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary, so no
//! client ever refuses a status for the size of its metadata (common
//! clients do beyond 16 KiB) and callers always learn the real code.
//! [`capped`] does the same for a `Status` built in process.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tonic::Status;
use tonic::codegen::http;

use crate::edge::limits::{MAX_ERROR_MESSAGE_BYTES, capped_message};

const GRPC_MESSAGE: &str = "grpc-message";

/// `status` with its message cut to [`MAX_ERROR_MESSAGE_BYTES`].
pub fn capped(status: Status) -> Status {
    if status.message().len() <= MAX_ERROR_MESSAGE_BYTES {
        return status;
    }
    let message = capped_message(status.message()).into_owned();
    Status::with_details_and_metadata(
        status.code(),
        message,
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

/// Cuts the `grpc-message` in `headers` (percent-encoded, as the wire has
/// it) if its text is longer than [`MAX_ERROR_MESSAGE_BYTES`].
fn cap_headers(headers: &mut http::HeaderMap) {
    let Some(raw) = headers.get(GRPC_MESSAGE) else {
        return;
    };
    // An encoded message is never shorter than its text.
    if raw.len() <= MAX_ERROR_MESSAGE_BYTES {
        return;
    }
    let decoded = percent_decode(raw.as_bytes());
    let text = String::from_utf8_lossy(&decoded);
    let capped = capped_message(&text);
    if capped.len() == text.len() {
        return;
    }
    // Encoded the way tonic encodes every status message.
    let mut encoded = http::HeaderMap::new();
    match Status::new(tonic::Code::Unknown, capped.into_owned()).add_header(&mut encoded) {
        Ok(()) => {
            if let Some(value) = encoded.remove(GRPC_MESSAGE) {
                headers.insert(GRPC_MESSAGE, value);
            }
        }
        Err(_) => {
            headers.insert(
                GRPC_MESSAGE,
                http::HeaderValue::from_static("error message withheld (too long)"),
            );
        }
    }
}

/// `%XX` sequences as bytes; anything else as it is.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// The tower layer: see the module doc.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundedStatus;

impl<S> tower_layer::Layer<S> for BoundedStatus {
    type Service = BoundedStatusService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundedStatusService { inner }
    }
}

/// The service [`BoundedStatus`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct BoundedStatusService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for BoundedStatusService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<BoundedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoundedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        BoundedFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`BoundedStatusService`].
    pub struct BoundedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for BoundedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<BoundedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        // A trailers-only response (an error) carries its status here.
        cap_headers(response.headers_mut());
        Poll::Ready(Ok(response.map(|inner| BoundedBody { inner })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers' status message is capped.
    pub struct BoundedBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: http_body::Body> http_body::Body for BoundedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut frame = ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
        {
            cap_headers(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: &Status) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        status.add_header(&mut h).unwrap();
        h
    }

    #[test]
    fn a_long_status_message_is_cut_and_keeps_its_code() {
        for message in [
            "x".repeat(200_000),
            "é \"quoted\" {}".repeat(20_000),
            format!("name {}", "日".repeat(70_000)),
        ] {
            let mut h = headers_of(&Status::invalid_argument(message.clone()));
            cap_headers(&mut h);
            let back = Status::from_header_map(&h).unwrap();
            assert_eq!(back.code(), tonic::Code::InvalidArgument);
            assert!(
                back.message().len() <= MAX_ERROR_MESSAGE_BYTES,
                "{}",
                back.message().len()
            );
            let kept = back.message().split('…').next().unwrap_or_default();
            assert!(message.starts_with(kept), "{kept:.40}");
            assert!(
                back.message()
                    .ends_with(&format!("({} bytes)", message.len()))
            );
        }
    }

    #[test]
    fn a_short_status_message_is_left_as_it_is() {
        for message in ["", "name: \"a b\" contains ' '", "100% sure"] {
            let status = Status::not_found(message);
            let mut h = headers_of(&status);
            let before = h.clone();
            cap_headers(&mut h);
            assert_eq!(h, before);
        }
        let s = capped(Status::not_found("fleet x not found"));
        assert_eq!(s.message(), "fleet x not found");
    }

    #[test]
    fn a_status_built_in_process_is_capped_too() {
        let s = capped(Status::invalid_argument("y".repeat(50_000)));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().len() <= MAX_ERROR_MESSAGE_BYTES);
    }

    #[test]
    fn percent_sequences_decode_and_stray_percents_stay() {
        let cases: [(&str, &[u8]); 4] = [
            ("a%20b", b"a b"),
            ("%C3%A9", "é".as_bytes()),
            ("100%", b"100%"),
            ("%zz%4", b"%zz%4"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw.as_bytes()), want, "{raw}");
        }
    }
}
