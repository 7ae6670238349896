//! Listening sockets.

use std::io;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold for a listener before it accepts them (capped by
/// `net.core.somaxconn`). tokio's `TcpListener::bind` asks for 1 024: a burst of thousands of
/// clients connecting at once overflows that, and the kernel drops their SYNs (retried after
/// 1 s, 3 s, 7 s…: seconds of added latency, or a failed connect).
pub const BACKLOG: u32 = 8192;

/// Listens on the first address `host:port` resolves to that can be bound, with [`BACKLOG`].
pub async fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{host} has no address"),
        )
    }))
}
