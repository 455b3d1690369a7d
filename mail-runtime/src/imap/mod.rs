//! IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051, through ENABLE) for multi-device sync.
//!
//! ```text
//!   server.rs   the driver: socket, TLS, DEFLATE, timeouts, IDLE's wait
//!   codec.rs    bytes -> commands (imap-codec's fragmentizer; every length bounded)
//!   session.rs  the state machine without I/O: command in, answers and a Step out
//!   op/*.rs     one handler per command (fetch.rs, store.rs, select.rs, ...)
//!   selected.rs the selected folder as this session knows it, and what changed elsewhere
//!   write.rs, message.rs, search.rs, sort.rs, esearch.rs, list_extended.rs: what they say
//! ```
//!
//! Responses are plain text built from the store's index and mail-parser's view of a
//! message, checked in tests by imap-codec's own response parser and by real clients.
pub mod codec;
pub mod esearch;
pub mod list_extended;
pub mod message;
pub mod mutf7;
pub mod op;
pub mod search;
pub mod selected;
pub mod server;
pub mod session;
pub mod sort;
#[cfg(test)]
mod transcripts;
pub mod write;
