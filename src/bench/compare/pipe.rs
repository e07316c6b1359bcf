//! A pipelined connection for protocols whose frames are `[size: i32 big-endian][payload]` and
//! whose server answers a connection's requests in the order it sent them: Kafka and
//! ZooKeeper. Many callers share one connection, each with one request in flight: a request
//! is queued with a channel for its answer, written (with whatever else is queued, in one
//! write), and the reader hands each answer to the oldest caller still waiting.

use crate::kafka::wire::read_frame;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<io::Result<Bytes>>;

/// One connection shared by many callers.
#[derive(Clone)]
pub struct Pipe {
    queue: mpsc::UnboundedSender<(Bytes, Waiter)>,
    timeout: Duration,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed")
}

impl Pipe {
    /// Connects to `addr`. `unsolicited` tells a frame the server sent without a request
    /// (a ZooKeeper ping answer or watch event) from an answer; such frames are dropped.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        unsolicited: fn(&[u8]) -> bool,
    ) -> io::Result<Pipe> {
        let stream = crate::kafka::client::connect_tcp(addr, timeout).await?;
        Ok(Self::over(stream, timeout, unsolicited))
    }

    /// A pipe over an established stream (after a handshake done by the caller).
    pub fn over(stream: TcpStream, timeout: Duration, unsolicited: fn(&[u8]) -> bool) -> Pipe {
        let (read, write) = stream.into_split();
        Self::over_halves(read, write, timeout, unsolicited)
    }

    /// A pipe over the two halves of a stream (a TLS one, split by `tokio::io::split`).
    pub fn over_halves<R, W>(
        mut read: R,
        mut write: W,
        timeout: Duration,
        unsolicited: fn(&[u8]) -> bool,
    ) -> Pipe
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let waiting: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();
        let (queue, mut requests) = mpsc::unbounded_channel::<(Bytes, Waiter)>();
        let w = waiting.clone();
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some(first) = requests.recv().await {
                let mut next = Some(first);
                while let Some((frame, waiter)) = next {
                    out.put_u32(frame.len() as u32);
                    out.put_slice(&frame);
                    w.lock().expect("pipe lock").push_back(waiter);
                    next = requests.try_recv().ok();
                }
                if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
                    break;
                }
                out.clear();
            }
            // Dropping the waiters answers their callers with "closed".
            w.lock().expect("pipe lock").clear();
        });
        tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut read, 64 << 20).await {
                    Ok(Some(f)) => f,
                    _ => break,
                };
                if unsolicited(&frame) {
                    continue;
                }
                let waiter = waiting.lock().expect("pipe lock").pop_front();
                match waiter {
                    Some(w) => {
                        let _ = w.send(Ok(frame));
                    }
                    None => break, // an answer to nothing: the stream is out of step.
                }
            }
            waiting.lock().expect("pipe lock").clear();
        });
        Pipe { queue, timeout }
    }

    /// Sends one request payload (without its size) and waits for its answer's payload.
    pub async fn call(&self, payload: Bytes) -> io::Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((payload, tx)).map_err(|_| closed())?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Many callers share one connection to a server that answers each frame with its own
    /// payload reversed, in order; every caller gets the answer to its own request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_caller_gets_the_answer_to_its_own_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut n = 0u32;
            while let Ok(Some(frame)) = read_frame(&mut s, 1 << 20).await {
                n += 1;
                // Now and then a frame nobody asked for, which the pipe must skip.
                if n.is_multiple_of(7) {
                    s.write_all(&[0, 0, 0, 1, b'!']).await.unwrap();
                }
                let mut answer: Vec<u8> = frame.to_vec();
                answer.reverse();
                let mut out = (answer.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&answer);
                s.write_all(&out).await.unwrap();
            }
        });
        let pipe = Pipe::connect(&addr, Duration::from_secs(10), |f| f == b"!")
            .await
            .unwrap();
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let pipe = pipe.clone();
                tokio::spawn(async move {
                    let asked = format!("request {i}");
                    let answer = pipe.call(Bytes::from(asked.clone())).await.unwrap();
                    let mut expected = asked.into_bytes();
                    expected.reverse();
                    assert_eq!(answer.as_ref(), expected.as_slice());
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
    }
}
