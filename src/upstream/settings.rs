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
                        lane.http1();
                    }
                    Ok(Watched {
                        io,
                        preface: h2.then(Preface::default),
                        lane,
                        allowed_none: false,
                    })
                }
                Err(e) => {
                    // A request waiting for this connection's SETTINGS may take the lane's slot
                    // (once this request gives it back) and connect itself.
                    lane.wake();
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
    lane: Arc<LaneState>,
    /// Its server allowed no streams at all.
    allowed_none: bool,
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        if self.preface.is_some() {
            // Closed before its server spoke: a waiting request may connect again.
            self.lane.wake();
        }
        if self.allowed_none {
            // The lane goes by its next connection's word, instead of shut for good.
            self.lane.closed();
        }
    }
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
        let n = PREFACE_READ.min(buf.remaining());
        let Some(preface) = this.preface.as_mut().filter(|_| n > 0) else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let mut space = [0u8; PREFACE_READ];
        let mut read = ReadBuf::new(&mut space[..n]);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, read.unfilled()))?;
        let got = read.filled();
        buf.put_slice(got);
        // The end of the stream (or an error, above) leaves the preface unread, and the lane
        // waiting for its next connection.
        if got.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // The whole first frame: nothing more to read for.
        if let Some(limit) = preface.feed(got, &this.lane) {
            this.preface = None;
            this.allowed_none = limit == Some(0);
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
/// A first SETTINGS frame longer than this is not read for a limit (the protocol defines 7
/// settings; a server that sends hundreds gets the configured limit).
const MAX_SETTINGS_LEN: usize = 6 * 256;

/// The server's first frame, as its bytes arrive; the lane learns its limit when it is complete.
#[derive(Default)]
struct Preface {
    bytes: Vec<u8>,
}

impl Preface {
    /// Takes the next bytes the server sent; once the first frame has been read, and `lane`
    /// told, the limit it announced (`Some(None)`: none). A first frame that is not SETTINGS
    /// ends the reading too (hyper answers it as the protocol error it is).
    fn feed(&mut self, got: &[u8], lane: &LaneState) -> Option<Option<u32>> {
        self.bytes.extend_from_slice(got);
        let header = self.bytes.get(..HEADER)?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if header[3] != SETTINGS || !len.is_multiple_of(6) {
            lane.wake();
            return Some(None);
        }
        if len > MAX_SETTINGS_LEN {
            lane.unlimited();
            return Some(None);
        }
        let payload = self.bytes.get(HEADER..HEADER + len)?;
        let limit = payload
            .chunks_exact(6)
            .filter(|s| u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            // Settings apply in order: the last one of a kind is the one in force.
            .next_back();
        match limit {
            Some(n) => lane.learn(n),
            // No limit announced: unlimited, so the configured one applies.
            None => lane.unlimited(),
        }
        Some(limit)
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
        let mut p = Preface::default();
        let mut done = false;
        for chunk in bytes.chunks(piece) {
            assert!(!done, "read past the first frame");
            done = p.feed(chunk, &lane).is_some();
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
        // The last of a kind is the one in force.
        let twice = settings(&[(MAX_CONCURRENT_STREAMS, 7), (MAX_CONCURRENT_STREAMS, 3)]);
        assert_eq!(feed_in_pieces(&twice, 4).0.server_limit(), Some(Some(3)));
    }

    #[test]
    fn no_limit_announced_leaves_the_configured_one() {
        let (lane, done) = feed_in_pieces(&settings(&[(0x4, 65535)]), 4);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
        let (lane, done) = feed_in_pieces(&settings(&[]), 4);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
    }

    #[test]
    fn a_first_settings_frame_too_long_to_read_leaves_the_configured_limit() {
        let entries: Vec<(u16, u32)> = (0..300).map(|i| (0x100 + i, 1)).collect();
        let (lane, done) = feed_in_pieces(&settings(&entries)[..512], 512);
        assert!(done);
        assert_eq!(lane.server_limit(), Some(None));
    }

    #[test]
    fn a_first_frame_that_is_not_settings_is_not_read_further() {
        // A GOAWAY first is a protocol error (hyper says so); the lane's next connection speaks.
        let (lane, done) = feed_in_pieces(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0], 3);
        assert!(done);
        assert_eq!(lane.server_limit(), None);
    }

    #[tokio::test]
    async fn a_connection_that_ends_before_its_first_frame_wakes_waiting_requests() {
        let lane = Arc::new(LaneState::default());
        let mut preface = Preface::default();
        assert!(
            preface
                .feed(&settings(&[(MAX_CONCURRENT_STREAMS, 3)])[..5], &lane)
                .is_none()
        );
        let conn = Watched {
            io: (),
            preface: Some(preface),
            lane: lane.clone(),
            allowed_none: false,
        };
        let woken = lane.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        drop(conn);
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("a waiting request is woken");
        assert_eq!(lane.server_limit(), None);
    }

    #[test]
    fn a_connection_whose_server_allowed_no_streams_leaves_the_lane_to_the_next_one() {
        let (lane, _) = feed_in_pieces(&settings(&[(MAX_CONCURRENT_STREAMS, 0)]), 100);
        assert_eq!(lane.server_limit(), Some(Some(0)));
        // Another connection of the lane closing (an old one, draining) changes nothing.
        drop(Watched {
            io: (),
            preface: None,
            lane: lane.clone(),
            allowed_none: false,
        });
        assert_eq!(lane.server_limit(), Some(Some(0)));
        drop(Watched {
            io: (),
            preface: None,
            lane: lane.clone(),
            allowed_none: true,
        });
        assert_eq!(lane.server_limit(), None);
    }
}
