//! Kafka request and response frames: reading with a size cap, decoding without trusting the
//! wire, and encoding replies.
//!
//! A frame is `[size: i32 big-endian][payload]`. Before kafka-protocol sees a payload kmeta
//! checks that it can hold a request header (the crate's header decoder panics on fewer than
//! four bytes), that the API key is known and one this listener serves, and that the version
//! is one it advertises. Decoding runs under `catch_unwind`, and the crate's habit of
//! pre-allocating arrays from wire counts is made harmless by [`crate::alloc`].

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{
    decode_request_header_from_buffer, Encodable, Message, StrBytes, VersionRange,
};
use kafka_protocol::ResponseError;
use std::io;
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The default cap on one request frame (`socket.request.max.bytes`). Kafka's default is
/// 100 MiB; kmeta's requests are metadata, and the cap bounds what one connection can make
/// the decoder allocate.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The cap on one response frame read by kmeta's own client (a metadata snapshot chunk or a
/// large Metadata response).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Appends `n` as an unsigned LEB128 varint, seven bits a byte, low first: Kafka's
/// UNSIGNED_VARINT (a compact array's length plus one), the body of its zigzag VARINT, and
/// postcard's length prefix alike.
pub fn put_unsigned_varint(out: &mut impl bytes::BufMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// A `StrBytes` (the crate's string type) from anything that becomes a `String`.
pub fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The versions of a message the crate can decode: what kmeta advertises for it (never
/// `ApiKey::valid_versions()`, which over-reports OffsetCommit and OffsetFetch).
pub fn versions<M: Message>() -> VersionRange {
    M::VERSIONS
}

/// Reads one frame. `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (the limit is {max})"),
        ));
    }
    // Read into spare capacity: a zero-filled buffer would touch every page twice.
    let mut payload = Vec::with_capacity(len as usize);
    (&mut *r).take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() != len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a frame",
        ));
    }
    Ok(Some(Bytes::from(payload)))
}

/// Appends one frame to `out`: the payload's size (a big-endian i32), then the payload.
pub fn put_frame(out: &mut impl bytes::BufMut, payload: &[u8]) {
    out.put_i32(payload.len() as i32);
    out.put_slice(payload);
}

/// Writes several frames (each with its size in front) with one write: answers ready
/// together leave in one system call.
pub async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, payloads: &[Bytes]) -> io::Result<()> {
    let mut out = Vec::with_capacity(payloads.iter().map(|p| p.len() + 4).sum());
    for payload in payloads {
        put_frame(&mut out, payload);
    }
    w.write_all(&out).await?;
    // A no-op on TCP; TLS sends its buffered records here.
    w.flush().await
}

/// Writes one frame (the payload without its size prefix).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    // The size and the payload in one vectored write: one system call (two, before, and two
    // packets), and a payload of megabytes is not copied to put four bytes in front of it.
    let size = (payload.len() as i32).to_be_bytes();
    let (mut head, mut body): (&[u8], &[u8]) = (&size, payload);
    while !head.is_empty() || !body.is_empty() {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    w.flush().await
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The request header (correlation id, client id).
    pub header: RequestHeader,
    /// The API.
    pub api_key: ApiKey,
    /// The version it was sent at.
    pub version: i16,
    /// The body.
    pub body: RequestKind,
    /// The whole payload as received (header included), for forwarding.
    pub raw: Bytes,
    /// The client's address as Kafka shows it ("/127.0.0.1"), set by the listener.
    pub client_host: String,
    /// Who sent it (`User:alice`, or `User:ANONYMOUS` on an unauthenticated listener), set
    /// by the listener.
    pub principal: std::sync::Arc<str>,
}

/// Who sent a request, as authorization sees it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `User:alice`.
    pub principal: std::sync::Arc<str>,
    /// The client's address, without Kafka's leading '/'.
    pub host: String,
}

impl Caller {
    /// The caller of a request with `principal` from `client_host` ("/127.0.0.1").
    pub fn new(principal: std::sync::Arc<str>, client_host: &str) -> Caller {
        Caller {
            principal,
            host: client_host.trim_start_matches('/').to_string(),
        }
    }
}

/// Takes out of `items` those `allowed` refuses, returning `denied` of each (what the answer
/// needs to refuse them by name).
pub fn take_denied<T, D>(
    items: &mut Vec<T>,
    allowed: impl Fn(&T) -> bool,
    denied: impl Fn(&T) -> D,
) -> Vec<D> {
    let mut out = Vec::new();
    items.retain(|item| {
        let ok = allowed(item);
        if !ok {
            out.push(denied(item));
        }
        ok
    });
    out
}

/// The principal of a client that did not authenticate (Kafka's `KafkaPrincipal.ANONYMOUS`).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// What to do with a frame that is not a request this listener serves.
#[derive(Debug)]
pub enum Rejected {
    /// Answer with this frame, then carry on (ApiVersions at a newer version, KIP-511).
    Reply(Bytes),
    /// Close the connection; the reason is logged.
    Close(String),
}

/// The APIs a listener serves, with the versions it advertises.
#[derive(Clone, Debug)]
pub struct ApiSet(Vec<(ApiKey, VersionRange)>);

impl ApiSet {
    /// A set from `(api, versions)` pairs.
    pub fn new(apis: Vec<(ApiKey, VersionRange)>) -> Self {
        ApiSet(apis)
    }

    /// The versions of `key` served, if it is served.
    pub fn versions(&self, key: ApiKey) -> Option<VersionRange> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The ApiVersions reply listing exactly these APIs.
    pub fn api_versions_response(&self) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            self.0
                .iter()
                .map(|(k, v)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(v.min)
                        .with_max_version(v.max)
                })
                .collect(),
        )
    }
}

/// Runs a crate decoder, turning a panic into an error.
/// `what` names the decoded thing in the error; it is formatted only on failure.
fn guarded<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("malformed {what}: {e:#}")),
        Err(_) => Err(format!("malformed {what}: the decoder panicked")),
    }
}

/// "`Produce v9 request`", for errors: written out only when one is reported.
struct RequestLabel(ApiKey, i16);

impl std::fmt::Display for RequestLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} v{} request", self.0, self.1)
    }
}

/// Decodes one request payload for a listener serving `apis`.
pub fn decode_request(payload: Bytes, apis: &ApiSet) -> Result<Request, Rejected> {
    if payload.len() < 8 {
        return Err(Rejected::Close(format!(
            "a {}-byte frame cannot hold a request header",
            payload.len()
        )));
    }
    let raw_key = i16::from_be_bytes([payload[0], payload[1]]);
    let version = i16::from_be_bytes([payload[2], payload[3]]);
    let api_key = ApiKey::try_from(raw_key)
        .map_err(|_| Rejected::Close(format!("unknown API key {raw_key}")))?;
    let Some(range) = apis.versions(api_key) else {
        return Err(Rejected::Close(format!(
            "API {api_key:?} is not served on this listener"
        )));
    };
    let mut frame = payload.clone();
    let header = guarded("request header", || {
        decode_request_header_from_buffer(&mut frame)
    })
    .map_err(Rejected::Close)?;
    if version < range.min || version > range.max {
        if api_key == ApiKey::ApiVersions && version > range.max {
            // KIP-511: a newer client learns our versions from a v0 reply.
            let reply = apis
                .api_versions_response()
                .with_error_code(ResponseError::UnsupportedVersion.code());
            let bytes = encode_response(header.correlation_id, api_key, 0, &reply.into())
                .map_err(Rejected::Close)?;
            return Err(Rejected::Reply(bytes));
        }
        return Err(Rejected::Close(format!(
            "{api_key:?} v{version} is not supported (v{}-{})",
            range.min, range.max
        )));
    }
    let body = guarded(RequestLabel(api_key, version), || {
        RequestKind::decode(api_key, &mut frame, version)
    })
    .map_err(Rejected::Close)?;
    Ok(Request {
        header,
        api_key,
        version,
        body,
        raw: payload,
        client_host: String::new(),
        principal: std::sync::Arc::from(ANONYMOUS),
    })
}

/// Encodes a response payload (header and body, without the size prefix).
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(64);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, api_key.response_header_version(version))
        .map_err(|e| format!("encoding a response header: {e:#}"))?;
    response
        .encode(&mut out, version)
        .map_err(|e| format!("encoding a {api_key:?} v{version} response: {e:#}"))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::protocol::Message;

    fn metadata_only() -> ApiSet {
        ApiSet::new(vec![(ApiKey::Metadata, MetadataRequest::VERSIONS)])
    }

    #[test]
    fn an_array_count_beyond_the_frame_is_refused_without_aborting() {
        // Metadata v4, correlation id 7, null client id, then i32::MAX topics and nothing more.
        let mut payload = vec![0, 3, 0, 4, 0, 0, 0, 7, 0xff, 0xff];
        payload.extend_from_slice(&i32::MAX.to_be_bytes());
        match decode_request(Bytes::from(payload), &metadata_only()) {
            Err(Rejected::Close(reason)) => assert!(reason.contains("Metadata"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn short_unknown_and_unserved_frames_are_refused() {
        for payload in [
            vec![0u8, 3],
            vec![3, 231, 0, 0, 0, 0, 0, 1],
            vec![0, 19, 0, 7, 0, 0, 0, 1],
        ] {
            assert!(matches!(
                decode_request(Bytes::from(payload), &metadata_only()),
                Err(Rejected::Close(_))
            ));
        }
    }
}
