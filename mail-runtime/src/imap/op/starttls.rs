//! STARTTLS (RFC 3501 s6.2.1): the OK goes out in the clear, the handshake is the driver's.
use crate::imap::session::{Session, Step};

impl Session {
    pub(in crate::imap) fn start_tls(&mut self, tag: &str) -> Step {
        let config = match self.runtime.tls().get() {
            Some(c) if !self.tls => c,
            _ => {
                self.send(format!("{tag} BAD STARTTLS is not available now\r\n"));
                return Step::Next;
            }
        };
        self.send(format!("{tag} OK begin TLS negotiation now\r\n"));
        Step::StartTls(config)
    }

    /// The handshake after STARTTLS succeeded. The driver drops what the client sent in the
    /// clear meanwhile (RFC 3501 s6.2.1), so a man in the middle cannot add commands.
    pub fn tls_started(&mut self) {
        self.tls = true;
    }
}
