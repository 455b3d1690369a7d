//! POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and AUTH PLAIN (RFC 5034): download to
//! one device and delete from the server. Deletions take effect only at QUIT; a dropped
//! connection deletes nothing. One session per maildrop at a time.
pub mod server;
pub mod session;

pub use session::{Output, Session};
