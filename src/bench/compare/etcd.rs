//! Just enough of etcd's v3 API for the comparison: `KV/Put` and `KV/Range` of one key, as
//! gRPC calls (HTTP/2, one stream per call, many in flight on one connection), with the two
//! protobuf messages written and read by hand.

use crate::kafka::wire::put_unsigned_varint;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use std::time::Duration;

/// One HTTP/2 connection to an etcd member.
#[derive(Clone)]
pub struct Etcd {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    timeout: Duration,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn put_field(out: &mut BytesMut, field: u64, bytes: &[u8]) {
    put_unsigned_varint(out, field << 3 | 2);
    put_unsigned_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn get_varint(b: &mut Bytes) -> io::Result<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            break;
        }
        let byte = b.get_u8();
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(other("bad protobuf varint"))
}

/// The fields of one protobuf message: `(number, bytes)` of each length-delimited field;
/// varint fields are skipped (the comparison needs none).
fn fields(mut b: Bytes) -> io::Result<Vec<(u64, Bytes)>> {
    let mut out = Vec::new();
    while b.has_remaining() {
        let key = get_varint(&mut b)?;
        match key & 7 {
            0 => {
                get_varint(&mut b)?;
            }
            1 if b.remaining() >= 8 => b.advance(8),
            5 if b.remaining() >= 4 => b.advance(4),
            2 => {
                let len = get_varint(&mut b)? as usize;
                if b.remaining() < len {
                    return Err(other("short protobuf field"));
                }
                out.push((key >> 3, b.split_to(len)));
            }
            _ => return Err(other("unknown protobuf wire type")),
        }
    }
    Ok(out)
}

impl Etcd {
    /// Connects to the member whose client URL is `http://{addr}`.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Etcd> {
        let stream = crate::kafka::client::connect_tcp(addr, timeout).await?;
        let (send, connection) = h2::client::handshake(stream).await.map_err(other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Etcd {
            send,
            authority: addr.to_string(),
            timeout,
        })
    }

    /// One unary gRPC call: the answer's message.
    async fn unary(&self, method: &str, message: &[u8]) -> io::Result<Bytes> {
        let call = async {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!(
                    "http://{}/etcdserverpb.KV/{method}",
                    self.authority
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .map_err(other)?;
            let mut send = self.send.clone().ready().await.map_err(other)?;
            let (answer, mut body) = send.send_request(request, false).map_err(other)?;
            let mut framed = BytesMut::with_capacity(5 + message.len());
            framed.put_u8(0);
            framed.put_u32(message.len() as u32);
            framed.put_slice(message);
            body.send_data(framed.freeze(), true).map_err(other)?;
            let answer = answer.await.map_err(other)?;
            let (head, mut body) = answer.into_parts();
            let status_of = |h: &http::HeaderMap| {
                h.get("grpc-status").map(|v| {
                    (
                        v.to_str().unwrap_or("?").to_string(),
                        h.get("grpc-message").cloned(),
                    )
                })
            };
            if let Some((status, message)) = status_of(&head.headers) {
                if status != "0" {
                    return Err(other(format!(
                        "etcd {method}: grpc-status {status} {message:?}"
                    )));
                }
            }
            let mut data = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(other)?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.put_slice(&chunk);
            }
            if let Some(trailers) = body.trailers().await.map_err(other)? {
                if let Some((status, message)) = status_of(&trailers) {
                    if status != "0" {
                        return Err(other(format!(
                            "etcd {method}: grpc-status {status} {message:?}"
                        )));
                    }
                }
            }
            let mut data = data.freeze();
            if data.remaining() < 5 {
                return Err(other(format!("etcd {method}: empty answer")));
            }
            data.advance(1);
            let len = data.get_u32() as usize;
            if data.remaining() < len {
                return Err(other(format!("etcd {method}: short answer")));
            }
            Ok(data.split_to(len))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }

    /// Puts `value` at `key`; returns once etcd acknowledged it (committed on a majority).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let mut m = BytesMut::with_capacity(key.len() + value.len() + 8);
        put_field(&mut m, 1, key);
        put_field(&mut m, 2, value);
        self.unary("Put", &m).await.map(|_| ())
    }

    /// The value at `key` (a linearizable read), if any.
    pub async fn get(&self, key: &[u8]) -> io::Result<Option<Bytes>> {
        let mut m = BytesMut::new();
        put_field(&mut m, 1, key);
        let answer = self.unary("Range", &m).await?;
        // RangeResponse.kvs = 2; KeyValue.value = 5.
        for (n, kv) in fields(answer)? {
            if n == 2 {
                for (n, v) in fields(kv)? {
                    if n == 5 {
                        return Ok(Some(v));
                    }
                }
                return Ok(Some(Bytes::new()));
            }
        }
        Ok(None)
    }
}
