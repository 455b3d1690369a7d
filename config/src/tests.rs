use super::*;

fn valid() -> String {
    let hash = password::hash_password("pw");
    format!(
        r#"
apiVersion: runtime.kubemail.io/v1
kind: RuntimeConfig
revision: r1
hostname: mail.example.com
domains:
  - name: example.com
    aliases: [example.org]
    catchAll: info@example.com
mailboxes:
  - address: jane@example.com
    passwordHash: "{hash}"
    aliases: [j.doe@example.com]
  - address: info@example.com
    passwordHash: "{hash}"
relay:
  clientNetworks: [10.0.0.0/8]
tls: {{certFile: /tls/tls.crt, keyFile: /tls/tls.key}}
listeners:
  - {{protocol: smtp, address: "0.0.0.0:25"}}
storage: {{path: /data}}
"#
    )
}

#[test]
fn a_valid_file_resolves_addresses() {
    let config = Config::parse(&valid()).expect("valid");
    assert_eq!(config.resolve("jane@example.com"), Recipient::Local(0));
    assert_eq!(config.resolve("JANE@Example.COM"), Recipient::Local(0));
    assert_eq!(config.resolve("j.doe@example.com"), Recipient::Local(0));
    assert_eq!(
        config.resolve("jane@example.org"),
        Recipient::Local(0),
        "alias domain"
    );
    assert_eq!(
        config.resolve("jane+lists@example.com"),
        Recipient::Local(0),
        "subaddress"
    );
    assert_eq!(
        config.resolve("nobody@example.com"),
        Recipient::Local(1),
        "catch-all"
    );
    assert_eq!(config.resolve("jane@example.net"), Recipient::Remote);
    assert!(config.relay_network_allows("10.1.2.3".parse().expect("ip")));
    assert!(!config.relay_network_allows("192.0.2.1".parse().expect("ip")));
    assert!(config.relay_network_allows("::ffff:10.1.2.3".parse().expect("ip")));
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = valid()
        .replace("kind: RuntimeConfig", "kind: Nope")
        .replace(
            "aliases: [j.doe@example.com]",
            "aliases: [jane@example.com, not-an-address]",
        )
        .replace("catchAll: info@example.com", "catchAll: ghost@example.com")
        .replace("10.0.0.0/8", "10.0.0.0/99")
        .replace("passwordHash: \"$argon2", "passwordHash: \"plain$argon2")
        .replace("0.0.0.0:25", "nowhere");
    let Err(Invalid(problems)) = Config::parse(&text) else {
        panic!("accepted an invalid config");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for expected in [
        "kind",
        "mailboxes[0].aliases[0]",
        "mailboxes[0].aliases[1]",
        "mailboxes[0].passwordHash",
        "domains[0].catchAll",
        "relay.clientNetworks[0]",
        "listeners[0].address",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} missing from {problems:#?}"
        );
    }
}

#[test]
fn unknown_fields_and_bad_yaml_are_errors_with_a_location() {
    let err = Config::parse(&valid().replace("hostname:", "hostnmae:")).expect_err("typo");
    assert!(err.to_string().contains("hostnmae"), "{err}");
    let err = Config::parse("apiVersion: [").expect_err("bad yaml");
    assert!(err.0[0].field.starts_with("line "), "{err}");
}

#[test]
fn routing_tricks_are_not_addresses_of_other_domains() {
    let config = Config::parse(&valid()).expect("valid");
    // The domain after the last @ decides. None of these names another domain as the target.
    for trick in [
        "user%example.net@example.com",
        "example.net!user@example.com",
        "\"user@example.net\"@example.com",
    ] {
        assert_ne!(config.resolve(trick), Recipient::Remote, "{trick}");
    }
}

#[test]
fn the_readme_example_uses_the_real_field_names() {
    let dir: std::path::PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into();
    let readme = std::fs::read_to_string(dir.join("../README.md")).expect("README.md");
    let start = readme
        .find("apiVersion: runtime.kubemail.io/v1")
        .expect("the example");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the example")];
    let raw: RawConfig = serde_yaml_ng::from_str(block).expect("the README's example parses");
    assert_eq!(raw.listeners.len(), 8);
    assert!(raw.dkim.is_some() && raw.relay.rate_limits.per_sender.is_some());
}

#[test]
fn proxy_listeners_need_trusted_proxies_that_leave_the_probes_out() {
    let proxied = valid().replace(
        r#"address: "0.0.0.0:25"}"#,
        r#"address: "0.0.0.0:25", proxyProtocol: true}"#,
    );
    let fields = |text: &str| match Config::parse(text) {
        Ok(_) => Vec::new(),
        Err(Invalid(problems)) => problems.into_iter().map(|p| p.field).collect(),
    };
    assert_eq!(fields(&proxied), ["security.trustedProxies"]);
    let text = format!(
        "{proxied}security: {{trustedProxies: [10.0.0.0/8, 0.0.0.0/0, \"::/0\", 127.0.0.0/8, nope]}}\n"
    );
    assert_eq!(
        fields(&text),
        [
            "security.trustedProxies[1]",
            "security.trustedProxies[2]",
            "security.trustedProxies[3]",
            "security.trustedProxies[4]",
        ]
    );
    let text = format!("{proxied}security: {{trustedProxies: [10.0.0.0/8, 127.0.0.2/32]}}\n");
    let config = Config::parse(&text).expect("valid");
    assert!(config.trusts_proxy("10.1.2.3".parse().expect("ip")));
    assert!(config.trusts_proxy("::ffff:10.1.2.3".parse().expect("ip")));
    assert!(config.trusts_proxy("127.0.0.2".parse().expect("ip")));
    assert!(!config.trusts_proxy("127.0.0.1".parse().expect("ip")));
    assert!(!config.trusts_proxy("192.0.2.1".parse().expect("ip")));
}

#[test]
fn an_app_password_opens_only_its_protocols_and_is_checked_like_a_password() {
    let phone = password::hash_password("phone-pw");
    let text = valid().replace(
        "  - address: info@example.com\n",
        &format!(
            "    appPasswords:\n      - {{name: phone, passwordHash: \"{phone}\", protocols: [imap]}}\n  - address: info@example.com\n"
        ),
    );
    let config = Config::parse(&text).expect("valid");
    let jane = config.mailbox(0);
    let own = jane.password_hash.clone();
    let names: Vec<Option<&str>> = jane.credentials().map(|c| c.app_password).collect();
    assert_eq!(names, [None, Some("phone")], "the own password comes first");
    assert!(jane.opens(&phone, LoginProtocol::Imap));
    assert!(
        !jane.opens(&phone, LoginProtocol::Smtp),
        "declared for IMAP only"
    );
    assert!(jane.opens(&own, LoginProtocol::Smtp));
    // A session opened with the phone's password ends when it is revoked; one opened with the
    // own password goes on.
    let revoked = Config::parse(
        &text
            .replace(
                &format!("      - {{name: phone, passwordHash: \"{phone}\", protocols: [imap]}}\n"),
                "",
            )
            .replace("    appPasswords:\n", ""),
    )
    .expect("valid");
    assert_eq!(
        revoked.still_serves("jane@example.com", &phone, LoginProtocol::Imap),
        None
    );
    assert_eq!(
        revoked.still_serves("jane@example.com", &own, LoginProtocol::Imap),
        Some(0)
    );
    // A suspended mailbox is closed to its app passwords too.
    let suspended = text.replace(
        "    appPasswords:",
        "    suspended: true\n    appPasswords:",
    );
    let config = Config::parse(&suspended).expect("valid");
    assert!(!config.mailbox(0).opens(&phone, LoginProtocol::Imap));

    // Names are unique, hashes are hashes, and their number is bounded.
    let bad = valid().replace(
        "  - address: info@example.com\n",
        &format!(
            "    appPasswords:\n      - {{name: a, passwordHash: \"{phone}\"}}\n      - {{name: a, passwordHash: \"plaintext\"}}\n      - {{name: \"\", passwordHash: \"{phone}\"}}\n  - address: info@example.com\n"
        ),
    );
    let err = Config::parse(&bad).expect_err("invalid").to_string();
    for field in [
        "mailboxes[0].appPasswords[1].name",
        "mailboxes[0].appPasswords[1].passwordHash",
        "mailboxes[0].appPasswords[2].name",
        "mailboxes[0].appPasswords[2].passwordHash: the same hash",
    ] {
        assert!(err.contains(field), "{field} not named in {err}");
    }
    let many: String = (0..=MAX_APP_PASSWORDS)
        .map(|i| format!("      - {{name: d{i}, passwordHash: \"{phone}\"}}\n"))
        .collect();
    let too_many = valid().replace(
        "  - address: info@example.com\n",
        &format!("    appPasswords:\n{many}  - address: info@example.com\n"),
    );
    let err = Config::parse(&too_many).expect_err("too many").to_string();
    assert!(err.contains("mailboxes[0].appPasswords:"), "{err}");
}

#[test]
fn hosted_domains_are_found_by_name_and_sign_only_with_their_own_key() {
    let mut raw: RawConfig = serde_yaml_ng::from_str(&valid()).expect("yaml");
    raw.dkim = Some(DkimConfig {
        selector: "own".into(),
        key_file: "/dkim/own.pem".into(),
    });
    raw.domains.push(DomainConfig {
        name: "brand.test".into(),
        aliases: vec!["brand.example".into()],
        hostname: Some("mx.hosting.test".into()),
        dkim: Some(DkimConfig {
            selector: "b1".into(),
            key_file: "/dkim/brand.pem".into(),
        }),
        ..Default::default()
    });
    raw.domains.push(DomainConfig {
        name: "plain.test".into(),
        hostname: Some("mail.plain.test".into()),
        ..Default::default()
    });
    let config = Config::validate(raw.clone()).expect("valid");
    let named = |n: &str| config.domain_named(n).map(|d| d.name.as_str());
    assert_eq!(named("mx.hosting.test"), Some("brand.test"));
    assert_eq!(named("MTA-STS.Brand.Example"), Some("brand.test"));
    assert_eq!(named("brand.test"), Some("brand.test"));
    assert_eq!(named("mail.example.org"), Some("example.com"));
    assert_eq!(named("xbrand.test"), None, "a name merely ending alike");
    assert_eq!(named("brand.tést"), None, "non-ASCII never panics");
    assert_eq!(named("mta-sts.brand.example"), Some("brand.test"));
    assert_eq!(named("other.test"), None);
    assert_eq!(
        named("mail.example.com"),
        None,
        "the server's own host name"
    );
    assert_eq!(named("mx.hosting.test."), Some("brand.test"), "a final dot");
    let selector = |d: &str| config.dkim_for(d).map(|k| k.selector.as_str());
    assert_eq!(selector("example.org"), Some("own"));
    assert_eq!(selector("brand.example"), Some("b1"));
    assert_eq!(
        selector("plain.test"),
        None,
        "another tenant's key never signs"
    );
    assert_eq!(selector("outside.test"), None);
    assert_eq!(
        config.hostname_of(config.domain_named("plain.test")),
        "mail.plain.test"
    );
    assert_eq!(config.hostname_of(None), "mail.example.com");

    // A host name that is the server's, or in another domain, is refused: its certificate
    // and answers would be served for the other's names.
    for taken in ["mail.example.com", "mta-sts.example.org", "mail.plain.test"] {
        let mut squat = raw.clone();
        squat.domains[1].hostname = Some(taken.into());
        let invalid = Config::validate(squat).expect_err(taken);
        assert_eq!(invalid.0[0].field, "domains[1].hostname", "{taken}");
    }
    raw.domains[1].hostname = Some("not a name".into());
    raw.domains[1].mta_sts_mode = Some("strict".into());
    raw.domains[2].dkim = Some(DkimConfig {
        selector: "bad selector".into(),
        key_file: "/k".into(),
    });
    let fields: Vec<String> = Config::validate(raw)
        .expect_err("invalid")
        .0
        .into_iter()
        .map(|p| p.field)
        .collect();
    assert_eq!(
        fields,
        [
            "domains[1].hostname",
            "domains[1].mtaStsMode",
            "domains[2].dkim.selector"
        ]
    );
}
