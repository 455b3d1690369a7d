//! What the in-memory transcript tests share: a valid config over a temporary directory.
use crate::config::{
    API_VERSION, Config, DomainConfig, KIND, Limits, Listener, ListenerProtocol, LoginProtocol,
    MailboxConfig, RawConfig, RelayConfig, Security, Storage, TlsFiles,
};

/// A mailbox that may use every protocol, with a cheap bcrypt hash of `password`.
pub fn mailbox(address: &str, password: &str) -> MailboxConfig {
    MailboxConfig {
        address: address.into(),
        display_name: None,
        password_hash: bcrypt::hash(password, 4).expect("bcrypt"),
        aliases: Vec::new(),
        forward_to: Vec::new(),
        keep_forwarded_copy: true,
        quota_bytes: None,
        protocols: vec![
            LoginProtocol::Smtp,
            LoginProtocol::Imap,
            LoginProtocol::Pop3,
        ],
        suspended: false,
        app_passwords: Vec::new(),
        auto_reply: None,
        sieve_script: None,
        spam: None,
    }
}

/// `example.test` (alias `example.org`) with these mailboxes and limits, its store in `tmp`,
/// one listener of `protocol`, 192.0.2.0/24 allowed to relay, no usable certificate.
pub fn config(
    tmp: &std::path::Path,
    mailboxes: Vec<MailboxConfig>,
    limits: Limits,
    protocol: ListenerProtocol,
) -> Config {
    Config::validate(RawConfig {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        revision: "t1".into(),
        hostname: "mail.example.test".into(),
        domains: vec![DomainConfig {
            name: "example.test".into(),
            aliases: vec!["example.org".into()],
            catch_all: None,
            ..Default::default()
        }],
        mailboxes,
        relay: RelayConfig {
            client_networks: vec!["192.0.2.0/24".into()],
            ..RelayConfig::default()
        },
        limits,
        tls: TlsFiles {
            cert_file: "/unused.crt".into(),
            key_file: "/unused.key".into(),
        },
        listeners: vec![Listener {
            protocol,
            address: "127.0.0.1:0".into(),
            proxy_protocol: false,
        }],
        storage: Storage {
            path: tmp.to_path_buf(),
            database: None,
        },
        security: Security::default(),
        advertised: Default::default(),
        dkim: None,
        inbound: Default::default(),
        nameservers: Vec::new(),
    })
    .expect("test config is valid")
}
