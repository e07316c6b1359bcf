//! Just enough of ZooKeeper's client protocol (jute over TCP) for the comparison: a session,
//! then create, setData and getData, pipelined on the one connection.

use super::pipe::Pipe;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CREATE: i32 = 1;
const GET_DATA: i32 = 4;
const SET_DATA: i32 = 5;
/// `ZNODEEXISTS`.
pub const NODE_EXISTS: i32 = -110;
/// ZooKeeper's session timeout asked for (the load keeps the session alive).
const SESSION_TIMEOUT_MS: i32 = 30_000;

/// One ZooKeeper session.
pub struct Zk {
    pipe: Pipe,
    xid: AtomicI32,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_i32(s.len() as i32);
    out.put_slice(s);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A frame the server sends unasked: a watch event (xid -1) or a ping's answer (xid -2).
fn unsolicited(frame: &[u8]) -> bool {
    frame.len() >= 4
        && matches!(
            i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]),
            -1 | -2
        )
}

impl Zk {
    /// Opens a session on the server at `addr`.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Zk> {
        let mut stream = crate::kafka::client::connect_tcp(addr, timeout).await?;
        // ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly.
        let mut req = BytesMut::new();
        req.put_i32(0);
        req.put_i64(0);
        req.put_i32(SESSION_TIMEOUT_MS);
        req.put_i64(0);
        put_str(&mut req, &[0u8; 16]);
        req.put_u8(0);
        let mut framed = BytesMut::new();
        framed.put_u32(req.len() as u32);
        framed.put_slice(&req);
        stream.write_all(&framed).await?;
        let answer = tokio::time::timeout(
            timeout,
            crate::kafka::wire::read_frame(&mut stream, 1 << 16),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "ZooKeeper handshake"))??
        .ok_or_else(|| invalid("ZooKeeper closed the session handshake"))?;
        let mut a = answer;
        if a.remaining() < 16 {
            return Err(invalid("short ZooKeeper handshake answer"));
        }
        let _protocol = a.get_i32();
        let negotiated = a.get_i32();
        let session = a.get_i64();
        if negotiated <= 0 || session == 0 {
            return Err(invalid("ZooKeeper refused the session"));
        }
        Ok(Zk {
            pipe: Pipe::over(stream, timeout, unsolicited),
            xid: AtomicI32::new(1),
        })
    }

    /// Sends one request; its error code and the rest of its answer.
    async fn op(&self, op: i32, body: impl FnOnce(&mut BytesMut)) -> io::Result<(i32, Bytes)> {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut req = BytesMut::with_capacity(160);
        req.put_i32(xid);
        req.put_i32(op);
        body(&mut req);
        let mut answer = self.pipe.call(req.freeze()).await?;
        if answer.remaining() < 16 {
            return Err(invalid("short ZooKeeper answer"));
        }
        let got = answer.get_i32();
        let _zxid = answer.get_i64();
        let err = answer.get_i32();
        if got != xid {
            return Err(invalid("ZooKeeper answer out of order"));
        }
        Ok((err, answer))
    }

    /// Creates a persistent znode open to all; ZooKeeper's error code (0: created).
    pub async fn create(&self, path: &str, data: &[u8]) -> io::Result<i32> {
        let (err, _) = self
            .op(CREATE, |b| {
                put_str(b, path.as_bytes());
                put_str(b, data);
                b.put_i32(1); // one ACL: world:anyone, all permissions.
                b.put_i32(31);
                put_str(b, b"world");
                put_str(b, b"anyone");
                b.put_i32(0); // persistent.
            })
            .await?;
        Ok(err)
    }

    /// Sets a znode's data whatever its version; ZooKeeper's error code (0: set).
    pub async fn set_data(&self, path: &str, data: &[u8]) -> io::Result<i32> {
        let (err, _) = self
            .op(SET_DATA, |b| {
                put_str(b, path.as_bytes());
                put_str(b, data);
                b.put_i32(-1);
            })
            .await?;
        Ok(err)
    }

    /// A znode's data, or ZooKeeper's error code.
    pub async fn get_data(&self, path: &str) -> io::Result<Result<Bytes, i32>> {
        let (err, mut rest) = self
            .op(GET_DATA, |b| {
                put_str(b, path.as_bytes());
                b.put_u8(0);
            })
            .await?;
        if err != 0 {
            return Ok(Err(err));
        }
        if rest.remaining() < 4 {
            return Err(invalid("short getData answer"));
        }
        let len = rest.get_i32().max(0) as usize;
        if rest.remaining() < len {
            return Err(invalid("short getData answer"));
        }
        Ok(Ok(rest.split_to(len)))
    }
}
