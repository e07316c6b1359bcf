//! Kafka requests pipelined on one connection: many callers, each with one request in flight,
//! answered in the order sent (as Kafka answers a connection's requests).

use super::pipe::Pipe;
use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// One connection to a broker.
pub struct KafkaPipe {
    pipe: Pipe,
    correlation: AtomicI32,
    client_id: StrBytes,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl KafkaPipe {
    /// Connects to the broker at `addr`.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<KafkaPipe> {
        Ok(KafkaPipe {
            pipe: Pipe::connect(addr, timeout, |_| false).await?,
            correlation: AtomicI32::new(1),
            client_id: StrBytes::from_static_str("kmeta-bench-compare"),
        })
    }

    /// Sends `request` at `version` and decodes its answer.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> io::Result<R::Response> {
        let api_key = ApiKey::try_from(R::KEY).map_err(|_| invalid("unknown api key"))?;
        let correlation_id = self.correlation.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::with_capacity(256);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()))
            .encode(&mut out, api_key.request_header_version(version))
            .map_err(invalid)?;
        request.encode(&mut out, version).map_err(invalid)?;
        let mut answer = self.pipe.call(out.freeze()).await?;
        let header = ResponseHeader::decode(&mut answer, api_key.response_header_version(version))
            .map_err(invalid)?;
        if header.correlation_id != correlation_id {
            return Err(invalid("answer out of order"));
        }
        R::Response::decode(&mut answer, version).map_err(invalid)
    }
}
