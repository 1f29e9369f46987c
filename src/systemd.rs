//! systemd integration without libsystemd: `sd_notify` datagrams to `$NOTIFY_SOCKET`
//! (READY, STATUS, WATCHDOG, STOPPING) and the watchdog interval from `$WATCHDOG_USEC`.
//! Outside systemd (no socket) every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub(crate) fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&path).ok()?
            };
            let socket = UnixDatagram::unbound().ok()?;
            // Like libsystemd's MSG_DONTWAIT: a full receiver queue drops the message instead
            // of blocking a runtime thread.
            socket.set_nonblocking(true).ok()?;
            Some((socket, addr))
        });
        Notifier { socket }
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else {
            return;
        };
        // A full queue drops a watchdog ping (the next one follows soon), but READY, STATUS
        // and STOPPING get a few short retries: systemd acts on each of them.
        let tries = if message.starts_with("WATCHDOG") {
            1
        } else {
            25
        };
        for attempt in 1..=tries {
            match socket.send_to_addr(message.as_bytes(), addr) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && attempt < tries => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::debug!(error = %e, message, "sd_notify failed");
                    return;
                }
            }
        }
    }

    pub(crate) fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line status for `systemctl status`.
    pub(crate) fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// The watchdog interval systemd expects pings within, if it enabled one for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        notifier.ready();
        notifier.status("last cycle ok\nsecond line");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=last cycle ok second line");
    }
}
