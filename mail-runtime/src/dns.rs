//! The DNS resolver for MX lookups and sender checks: mail-auth's (hickory underneath), using
//! the config's `nameservers` when given and the system's otherwise. One resolver is kept per
//! list of servers, so its cache lives across messages.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mail_auth::{
    MessageAuthenticator,
    hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts},
};

/// Resolvers by nameserver list.
#[derive(Default)]
pub struct Resolvers {
    current: Mutex<Option<(Vec<SocketAddr>, Arc<MessageAuthenticator>)>>,
}

impl std::fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolvers")
    }
}

impl Resolvers {
    /// The resolver for these servers (empty: the system's).
    pub fn get(&self, nameservers: &[SocketAddr]) -> Result<Arc<MessageAuthenticator>, String> {
        let mut current = self.current.lock().expect("resolver lock");
        if let Some((servers, resolver)) = current.as_ref()
            && servers == nameservers
        {
            return Ok(resolver.clone());
        }
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        let resolver = if nameservers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
        }
        .map_err(|e| format!("cannot build a DNS resolver: {e}"))?;
        let resolver = Arc::new(resolver);
        *current = Some((nameservers.to_vec(), resolver.clone()));
        Ok(resolver)
    }
}
