//! Kafka requests pipelined on one connection: many callers, each with one request in flight,
//! answered in the order sent (as Kafka answers a connection's requests).

use super::pipe::Pipe;
use crate::kafka::client::{decode_response, encode_request};
use kafka_protocol::protocol::{Request, StrBytes};
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// One connection to a broker.
pub struct KafkaPipe {
    pipe: Pipe,
    correlation: AtomicI32,
    client_id: StrBytes,
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

    /// Connects to the broker at `addr`, secured as `security` says (TLS, then SASL).
    pub async fn connect_secure(
        addr: &str,
        timeout: Duration,
        security: &crate::kafka::connect::ClientSecurity,
    ) -> io::Result<KafkaPipe> {
        let stream = crate::kafka::connect::connect(addr, timeout, security).await?;
        let (read, write) = tokio::io::split(stream);
        Ok(KafkaPipe {
            pipe: Pipe::over_halves(read, write, timeout, |_| false),
            correlation: AtomicI32::new(1),
            client_id: StrBytes::from_static_str("kmeta-bench-compare"),
        })
    }

    /// Sends `request` at `version` and decodes its answer.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> io::Result<R::Response> {
        let correlation_id = self.correlation.fetch_add(1, Ordering::Relaxed);
        let out = encode_request(request, version, correlation_id, &self.client_id)?;
        let answer = self.pipe.call(out.freeze()).await?;
        decode_response::<R>(answer, version, correlation_id)
    }
}
