//! IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051, through ENABLE) for multi-device sync.
//!
//! imap-codec parses every command (its fragmentizer splits lines and literals with a size
//! bound, so a literal over the limit is refused before its bytes are read). Responses are
//! written by [`write`], [`message`] and [`selected`]: they are plain text built from the
//! store's index and mail-parser's view of a message, checked in tests by imap-codec's own
//! response parser and by real clients.
pub mod esearch;
pub mod list_extended;
pub mod message;
pub mod search;
pub mod selected;
pub mod server;
pub mod sort;
pub mod write;
