//! A minimal HTTP/1.1 client connection: keep-alive, `TCP_NODELAY`, one request at a time,
//! Content-Length and chunked bodies handed to a sink as they arrive, each piece stamped with
//! the time of the read that brought it.
//!
//! Written by hand (like wrk's) so that the client costs little CPU on a 2-core machine and
//! its timestamps are taken right at the socket reads.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Receives the response body as it arrives.
pub trait BodySink: Send {
    fn data(&mut self, bytes: &[u8], at: Instant);
}

/// The parsed response head.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub status: u16,
    /// When the whole head had arrived.
    pub at: Instant,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    last_read: Instant,
    /// The server said `connection: close` (or the body ran to EOF): do not reuse.
    pub closed: bool,
}

const MAX_HEAD: usize = 64 * 1024;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 64 * 1024],
            pos: 0,
            len: 0,
            last_read: Instant::now(),
            closed: false,
        })
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.len..]).await?;
        self.last_read = Instant::now();
        self.len += n;
        Ok(n)
    }

    async fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill().await? == 0 {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        Ok(())
    }

    /// Reads one line (without CRLF) and returns its bounds in the buffer.
    async fn line(&mut self) -> io::Result<(usize, usize)> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf[self.pos..self.len], b"\r\n") {
                let start = self.pos;
                self.pos += i + 2;
                return Ok((start, start + i));
            }
            if self.len - self.pos > MAX_HEAD {
                return Err(bad("line too long"));
            }
            self.fill_or_eof().await?;
        }
    }

    /// Delivers exactly `n` body bytes to the sink as they arrive.
    async fn body_bytes(&mut self, mut n: usize, sink: &mut dyn BodySink) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.len {
                self.fill_or_eof().await?;
            }
            let take = n.min(self.len - self.pos);
            sink.data(&self.buf[self.pos..self.pos + take], self.last_read);
            self.pos += take;
            n -= take;
        }
        Ok(())
    }

    /// Sends one complete request (head and body in `req`) and reads the whole response.
    pub async fn roundtrip(&mut self, req: &[u8], sink: &mut dyn BodySink) -> io::Result<Head> {
        self.stream.write_all(req).await?;
        let head_end = self.head_end().await?;
        let at = self.last_read;
        let head = std::str::from_utf8(&self.buf[self.pos..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let (status, framing, close) = parse_head(head)?;
        if close {
            self.closed = true;
        }
        self.pos = head_end + 4;
        match framing {
            Framing::Chunked => self.chunked_body(sink).await?,
            Framing::Length(n) => self.body_bytes(n, sink).await?,
            Framing::ToEof if status != 204 && status != 304 => self.body_to_eof(sink).await?,
            Framing::ToEof => {}
        }
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        }
        Ok(Head { status, at })
    }

    /// Reads until the buffer holds the whole response head; returns where it ends (at its
    /// closing CRLF CRLF).
    async fn head_end(&mut self) -> io::Result<usize> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf[self.pos..self.len], b"\r\n\r\n") {
                return Ok(self.pos + i);
            }
            if self.len - self.pos > MAX_HEAD {
                return Err(bad("response head too large"));
            }
            self.fill_or_eof().await?;
        }
    }

    /// Delivers a chunked body to the sink (trailers skipped).
    async fn chunked_body(&mut self, sink: &mut dyn BodySink) -> io::Result<()> {
        loop {
            let (s, e) = self.line().await?;
            let size_txt = std::str::from_utf8(&self.buf[s..e]).map_err(|_| bad("chunk size"))?;
            let size_txt = size_txt.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_txt, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let (s, e) = self.line().await?;
                    if s == e {
                        return Ok(());
                    }
                }
            }
            self.body_bytes(size, sink).await?;
            let (s, e) = self.line().await?;
            if s != e {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }

    /// Delivers a body that runs to EOF; the connection is closed afterwards.
    async fn body_to_eof(&mut self, sink: &mut dyn BodySink) -> io::Result<()> {
        loop {
            if self.pos < self.len {
                sink.data(&self.buf[self.pos..self.len], self.last_read);
                self.pos = self.len;
            }
            if self.fill().await? == 0 {
                break;
            }
        }
        self.closed = true;
        Ok(())
    }
}

/// How a response body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    /// Neither: the body (if the status has one) runs to EOF.
    ToEof,
}

/// The status, the body framing, and whether the server said `connection: close`.
fn parse_head(head: &str) -> io::Result<(u16, Framing, bool)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::ToEof,
    };
    Ok((status, framing, close))
}

/// Host, port and path of an `http://` URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .map_err(|e| anyhow::anyhow!("{authority}: {e} (use an IP address and a port)"))?;
        Ok(Target {
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// A complete HTTP/1.1 request, serialized once and sent as is every time.
pub fn request_bytes(target: &Target, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(body.len() + 512);
    r.extend_from_slice(
        format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\n",
            target.path, target.authority
        )
        .as_bytes(),
    );
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}
