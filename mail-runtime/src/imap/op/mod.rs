//! One file per IMAP command (or family of commands): each adds its handler to [`Session`].
//!
//! [`Session`]: super::session::Session
pub mod append;
pub mod basic;
pub mod compress;
pub mod copy;
pub mod enable;
pub mod expunge;
pub mod fetch;
pub mod folders;
pub mod idle;
pub mod learn;
pub mod list;
pub mod login;
pub mod quota;
pub mod search;
pub mod select;
pub mod starttls;
pub mod status;
pub mod store;
