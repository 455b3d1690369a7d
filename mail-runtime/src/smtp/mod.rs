//! SMTP: receiving on port 25 (MX and relay), submission on 587 (STARTTLS) and 465 (implicit
//! TLS). `codec` frames bytes, `session` is the protocol, `server` does the I/O.
pub mod checks;
pub mod codec;
pub mod policy;
pub mod reply;
pub mod rspamd;
pub mod scan;
pub mod screen;
pub mod server;
pub mod session;

pub use reply::Reply;
pub use session::{Output, Session, SessionInfo};
