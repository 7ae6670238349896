//! The stream limit an HTTP/2 upstream announces, read off each lane's connection.
//!
//! A server's first frame on an HTTP/2 connection is its SETTINGS (RFC 9113 §3.4), which says
//! how many streams it takes at once on the connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
//! hyper-util's pooled client acts on it but does not tell: past the limit, its requests wait on
//! the connection for a stream to end. [`LaneConnector`] wraps each lane's connector and reads
//! the limit from that first frame as the bytes go by ([`Watched`]); the lane then carries at
//! most that many requests (or `upstream_h2_max_streams`, if smaller) and another lane opens for
//! more. After its first frame a connection's bytes pass untouched. A SETTINGS frame that
//! changes the limit later in the connection's life is not followed (servers announce it once);
//! the next connection's first frame is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower::Service;

use super::lanes::LaneState;
use crate::http::UpstreamConnector;

type Inner = <UpstreamConnector as Service<Uri>>::Response;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A lane's connector: the upstream connector, and the lane told what its connection allows.
#[derive(Clone)]
pub(super) struct LaneConnector {
    pub(super) inner: UpstreamConnector,
    pub(super) lane: Arc<LaneState>,
    /// Every connection speaks HTTP/2 (prior knowledge), whatever TLS negotiated.
    pub(super) h2c: bool,
}

impl Service<Uri> for LaneConnector {
    type Response = Watched<Inner>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Watched<Inner>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let lane = self.lane.clone();
        let h2c = self.h2c;
        Box::pin(async move {
            match connecting.await {
                Ok(io) => {
                    let h2 = h2c || io.connected().is_negotiated_h2();
                    if !h2 {
                        // HTTP/1.1: one request per connection, and the pool opens what it needs.
                        lane.settle();
                    }
                    Ok(Watched {
                        io,
                        preface: h2.then(|| Preface::new(lane)),
                    })
                }
                Err(e) => {
                    // The requests waiting for this connection's SETTINGS go ahead (each tries
                    // to connect, as before lanes learned limits).
                    lane.settle();
                    Err(e)
                }
            }
        })
    }
}

/// A connection whose first HTTP/2 frame from the server is read for its stream limit.
pub(super) struct Watched<T> {
    io: T,
    /// Until the server's first frame has been read.
    preface: Option<Preface>,
}

/// At most this much is read at once while the first frame is still incomplete (it is a few
/// dozen bytes); the bytes go to hyper as they came.
const PREFACE_READ: usize = 512;

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(preface) = this.preface.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let mut space = [0u8; PREFACE_READ];
        let n = PREFACE_READ.min(buf.remaining());
        let mut read = ReadBuf::new(&mut space[..n]);
        if let Err(e) = std::task::ready!(Pin::new(&mut this.io).poll_read(cx, read.unfilled())) {
            this.preface = None;
            return Poll::Ready(Err(e));
        }
        let got = read.filled();
        buf.put_slice(got);
        // The end of the stream, or the whole first frame: nothing more to read for.
        if got.is_empty() || preface.feed(got) {
            this.preface = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Watched<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// An HTTP/2 frame header's length.
const HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// A first SETTINGS frame longer than this is not read (the protocol defines 7 settings; a server
/// that sends hundreds is not one whose limit we guess at).
const MAX_SETTINGS_LEN: usize = 6 * 64;

/// The server's first frame, as its bytes arrive; the lane learns its limit when it is complete.
struct Preface {
    bytes: Vec<u8>,
    lane: Arc<LaneState>,
    done: bool,
}

impl Preface {
    fn new(lane: Arc<LaneState>) -> Preface {
        Preface {
            bytes: Vec::new(),
            lane,
            done: false,
        }
    }

    /// Takes the next bytes the server sent; true once the first frame has been read (or is
    /// not a SETTINGS frame, which hyper will answer as the protocol error it is).
    fn feed(&mut self, got: &[u8]) -> bool {
        self.bytes.extend_from_slice(got);
        let Some(header) = self.bytes.get(..HEADER) else {
            return false;
        };
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if header[3] != SETTINGS || !len.is_multiple_of(6) || len > MAX_SETTINGS_LEN {
            return self.unlimited();
        }
        let Some(payload) = self.bytes.get(HEADER..HEADER + len) else {
            return false;
        };
        let limit = payload
            .chunks_exact(6)
            .filter(|s| u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            // Settings apply in order: the last one of a kind is the one in force.
            .next_back();
        match limit {
            Some(n) => {
                self.lane.learn(n);
                self.done = true;
                true
            }
            // No limit announced: unlimited, so the configured one applies.
            None => self.unlimited(),
        }
    }

    fn unlimited(&mut self) -> bool {
        self.lane.settle();
        self.done = true;
        true
    }
}

impl Drop for Preface {
    fn drop(&mut self) {
        // A connection that ended (or failed) before its first frame: waiting requests go ahead.
        if !self.done {
            self.lane.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let len = entries.len() * 6;
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            SETTINGS,
            0,
            0,
            0,
            0,
            0,
        ];
        for (id, v) in entries {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f
    }

    fn feed_in_pieces(bytes: &[u8], piece: usize) -> (Arc<LaneState>, bool) {
        let lane = Arc::new(LaneState::default());
        let mut p = Preface::new(lane.clone());
        let mut done = false;
        for chunk in bytes.chunks(piece) {
            assert!(!done, "read past the first frame");
            done = p.feed(chunk);
        }
        (lane, done)
    }

    #[test]
    fn the_limit_is_read_from_the_first_settings_frame_however_it_is_split() {
        // Initial window, then the stream limit, then a frame that follows (a WINDOW_UPDATE).
        let mut bytes = settings(&[(0x4, 1 << 20), (MAX_CONCURRENT_STREAMS, 7), (0x5, 16384)]);
        bytes.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        for piece in [1, 2, 5, 9, 10, 27, bytes.len()] {
            let (lane, done) = feed_in_pieces(&bytes[..HEADER + 18], piece);
            assert!(done, "piece {piece}");
            assert_eq!(lane.server_limit(), Some(Some(7)), "piece {piece}");
        }
        let (lane, _) = feed_in_pieces(&bytes, bytes.len());
        assert_eq!(lane.server_limit(), Some(Some(7)));
    }

    #[test]
    fn no_limit_announced_or_no_settings_frame_first_leaves_the_configured_one() {
        let (lane, done) = feed_in_pieces(&settings(&[(0x4, 65535)]), 4);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
        let (lane, done) = feed_in_pieces(&settings(&[]), 4);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
        // A GOAWAY first is a protocol error (hyper says so); the lane does not wait on it.
        let (lane, done) = feed_in_pieces(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0], 3);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
    }

    #[test]
    fn a_connection_that_ends_before_its_first_frame_lets_waiting_requests_go() {
        let lane = Arc::new(LaneState::default());
        assert_eq!(lane.server_limit(), None);
        let mut p = Preface::new(lane.clone());
        assert!(!p.feed(&settings(&[(MAX_CONCURRENT_STREAMS, 3)])[..5]));
        assert_eq!(lane.server_limit(), None);
        drop(p);
        assert_eq!(lane.server_limit(), Some(None));
    }

    #[test]
    fn a_limit_of_zero_is_kept() {
        let (lane, _) = feed_in_pieces(&settings(&[(MAX_CONCURRENT_STREAMS, 0)]), 100);
        assert_eq!(lane.server_limit(), Some(Some(0)));
    }
}
