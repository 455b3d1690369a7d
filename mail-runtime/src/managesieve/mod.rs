//! ManageSieve (RFC 5804): users upload, list, activate and delete their Sieve scripts on port
//! 4190. `session` is the protocol, `server` its I/O and the store's script commands.
pub mod server;
pub mod session;
