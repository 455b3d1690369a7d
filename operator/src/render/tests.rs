//! Snapshots of everything the operator renders (`operator/src/render/snapshots/`): a change
//! to what lands in the cluster shows in review as a change to these files.
use super::{
    config::{HashedMailbox, runtime_config, with_revision},
    dns, fixtures, objects,
};

fn options() -> objects::RuntimeOptions {
    fixtures::runtime_options()
}

#[test]
fn deployment_service_claim_and_account() {
    let md = fixtures::domain();
    insta::assert_yaml_snapshot!(
        "deployment",
        objects::deployment(&md, Some(&fixtures::relay()), &options())
    );
    insta::assert_yaml_snapshot!("service", objects::service(&md));
    insta::assert_yaml_snapshot!("metrics_service", objects::metrics_service(&md));
    insta::assert_yaml_snapshot!("data_claim", objects::data_claim(&md));
    insta::assert_yaml_snapshot!("service_account", objects::service_account(&md));
}

#[test]
fn runtime_config_is_stable_and_holds_only_hashes() {
    let md = fixtures::domain();
    let (jane, john) = (
        fixtures::mailbox("jane", "jane@example.com"),
        fixtures::mailbox("john", "john@example.com"),
    );
    let relay = fixtures::relay();
    let hashed = |m| HashedMailbox {
        mailbox: m,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        aliases: m.spec.aliases.clone(),
        app_password_hashes: Vec::new(),
        sieve_script: None,
    };
    // Order of input does not matter.
    let a = runtime_config(&md, &[hashed(&jane), hashed(&john)], Some(&relay));
    let b = runtime_config(&md, &[hashed(&john), hashed(&jane)], Some(&relay));
    assert_eq!(a, b);
    let (revision, yaml) = with_revision(a.clone());
    let (again, _) = with_revision(b);
    assert_eq!(revision, again, "equal configs have equal revisions");
    let mut changed = a;
    changed.mailboxes[0].suspended = true;
    assert_ne!(with_revision(changed).0, revision);
    // What the runtime reads back is valid.
    kubemail_config::Config::parse(&yaml).expect("the rendered config validates");
    insta::assert_snapshot!("runtime_config", yaml);
}

#[test]
fn app_passwords_are_rendered_with_their_protocols_and_only_when_their_secret_was_found() {
    let md = fixtures::domain();
    let mut jane = fixtures::mailbox("jane", "jane@example.com");
    jane.spec.app_passwords = serde_yaml_ng::from_str(
        "[{name: phone, secretRef: {name: jane-phone}, protocols: [IMAP]},
          {name: tablet, secretRef: {name: jane-tablet}}]",
    )
    .expect("app passwords");
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    // The tablet's Secret was not found: only the phone's hash is there.
    let hashed = HashedMailbox {
        mailbox: &jane,
        password_hash: hash.into(),
        aliases: Vec::new(),
        app_password_hashes: vec![("phone".into(), format!("{hash}-phone"))],
        sieve_script: None,
    };
    let config = runtime_config(&md, &[hashed], None);
    let apps = &config.mailboxes[0].app_passwords;
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert_eq!(apps[0].name, "phone");
    assert_eq!(apps[0].password_hash, format!("{hash}-phone"));
    assert_eq!(apps[0].protocols, [kubemail_config::LoginProtocol::Imap]);
    // A Mailbox without app passwords renders as before (no empty list in the file).
    let (_, yaml) = with_revision(runtime_config(
        &md,
        &[HashedMailbox {
            mailbox: &fixtures::mailbox("john", "john@example.com"),
            password_hash: hash.into(),
            aliases: Vec::new(),
            app_password_hashes: Vec::new(),
            sieve_script: None,
        }],
        None,
    ));
    assert!(!yaml.contains("appPasswords"), "{yaml}");
}

#[test]
fn proxy_protocol_renders_the_trusted_proxies() {
    let mut md = fixtures::domain();
    md.spec.runtime.service.trusted_proxies = vec!["10.0.0.0/16".into()];
    let plain = runtime_config(&md, &[], None);
    assert!(plain.security.trusted_proxies.is_empty());
    assert!(plain.listeners.iter().all(|l| !l.proxy_protocol));

    md.spec.runtime.service.proxy_protocol = true;
    let proxied = runtime_config(&md, &[], None);
    assert_eq!(proxied.security.trusted_proxies, ["10.0.0.0/16"]);
    let mail =
        |l: &&kubemail_config::Listener| l.protocol != kubemail_config::ListenerProtocol::Http;
    assert!(
        proxied
            .listeners
            .iter()
            .filter(mail)
            .all(|l| l.proxy_protocol)
    );
    let (_, yaml) = with_revision(proxied);
    let config = kubemail_config::Config::parse(&yaml).expect("the rendered config validates");
    assert!(config.trusts_proxy("10.0.3.4".parse().expect("ip")));
    assert!(!config.trusts_proxy("127.0.0.1".parse().expect("ip")));
}

#[test]
fn dns_records() {
    let md = fixtures::domain();
    insta::assert_yaml_snapshot!(
        "dns_records",
        dns::records(
            &md,
            &[("kubemail".into(), "v=DKIM1; k=rsa; p=MIIBIjANBgkq".into())],
            &[]
        )
    );
}

#[test]
fn the_dns_endpoint_holds_every_record_with_the_hosts_addresses() {
    let mut md = fixtures::domain();
    md.metadata.uid = Some("0a1b2c3d".into());
    md.spec.dns.ttl = 300;
    let records = dns::records(
        &md,
        &[("kubemail".into(), "v=DKIM1; k=rsa; p=MIIBIjANBgkq".into())],
        &[
            "192.0.2.10".parse().expect("ip"),
            "2001:db8::10".parse().expect("ip"),
        ],
    );
    insta::assert_yaml_snapshot!("dns_endpoint", dns::endpoint_object(&md, &records));
}

#[test]
fn retained_storage_has_no_owner_and_deleted_storage_does() {
    let mut md = fixtures::domain();
    assert!(objects::data_claim(&md).metadata.owner_references.is_none());
    md.spec.storage.retention_policy = kubemail_crds::mail_domain::RetentionPolicy::Delete;
    assert!(objects::data_claim(&md).metadata.owner_references.is_some());
}

#[test]
fn the_mail_service_has_no_http_port_even_as_a_public_load_balancer() {
    // The fixture's Service is an internet-facing LoadBalancer: /metrics and /readyz (which
    // tells config errors) must not be on it.
    let md = fixtures::domain();
    let service = objects::service(&md);
    let spec = service.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports = spec.ports.unwrap_or_default();
    assert!(
        ports
            .iter()
            .all(|p| p.name.as_deref() != Some("http") && p.port != super::HTTP_PORT),
        "the mail Service exposes the HTTP port: {ports:?}"
    );
    assert!(!ports.is_empty());
}

#[test]
fn the_http_port_is_on_a_cluster_ip_service_owned_like_the_mail_service() {
    let md = fixtures::domain();
    let (mail, metrics) = (objects::service(&md), objects::metrics_service(&md));
    assert_eq!(metrics.metadata.name.as_deref(), Some("example-metrics"));
    assert_eq!(metrics.metadata.namespace, mail.metadata.namespace);
    assert_eq!(
        metrics.metadata.owner_references,
        mail.metadata.owner_references
    );
    assert!(metrics.metadata.owner_references.is_some());
    // The mail Service's labels (the operator's watches select by them), plus one that tells
    // the two apart; none of the load balancer's annotations.
    let labels = metrics.metadata.labels.clone().unwrap_or_default();
    for (k, v) in mail.metadata.labels.as_ref().expect("labels") {
        assert_eq!(labels.get(k), Some(v), "label {k}");
    }
    assert_eq!(
        labels
            .get(objects::METRICS_SERVICE_LABEL)
            .map(String::as_str),
        Some("true")
    );
    assert!(metrics.metadata.annotations.is_none());
    let (mail, metrics) = (mail.spec.expect("spec"), metrics.spec.expect("spec"));
    assert_eq!(metrics.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(metrics.selector, mail.selector);
    assert!(metrics.external_traffic_policy.is_none());
    let ports: Vec<(Option<String>, i32)> = metrics
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    assert_eq!(ports, [(Some("http".to_string()), super::HTTP_PORT)]);
}

#[test]
fn inbound_screening_is_rendered_from_the_domain() {
    let mut md = fixtures::domain();
    md.spec.inbound = serde_yaml_ng::from_str(
        "{dnsLists: [{zone: zen.spamhaus.org, weight: 2, answers: [127.0.0.2]}, {zone: list.dnswl.org, weight: -5}],
          dnsListThreshold: 2, greylisting: {delay: 2m}, greetPause: 3s, heloChecks: true,
          clamav: {address: \"clamav.mail.svc:3310\", onFailure: Accept},
          rspamd: {url: \"http://rspamd.mail.svc:11333/\", timeout: 10s}}",
    )
    .expect("inbound");
    let config = runtime_config(&md, &[], None);
    let inbound = &config.inbound;
    assert!(inbound.verify, "verification stays on by default");
    assert_eq!(inbound.dnsbl.len(), 2);
    assert_eq!(
        inbound.dnsbl[0].answers,
        ["127.0.0.2".parse::<std::net::Ipv4Addr>().expect("ip")]
    );
    assert_eq!(inbound.dnsbl[1].weight, -5);
    assert_eq!(inbound.dnsbl_threshold, 2);
    let grey = inbound.greylisting.as_ref().expect("greylisting");
    assert_eq!(
        (grey.delay_seconds, grey.retry_window_seconds),
        (120, 86_400)
    );
    assert_eq!(inbound.greet_pause_millis, 3000);
    assert!(inbound.helo_checks);
    let clamd = inbound.clamd.as_ref().expect("clamd");
    assert_eq!(
        (
            clamd.address.as_str(),
            clamd.timeout_seconds,
            clamd.accept_on_failure
        ),
        ("clamav.mail.svc:3310", 30, true)
    );
    let rspamd = inbound.rspamd.as_ref().expect("rspamd");
    assert_eq!(
        (
            rspamd.url.as_str(),
            rspamd.timeout_seconds,
            rspamd.accept_on_failure
        ),
        ("http://rspamd.mail.svc:11333", 10, false)
    );
    // What the runtime reads back is valid.
    let (_, yaml) = with_revision(config);
    kubemail_config::Config::parse(&yaml).expect("valid");
}

#[test]
fn a_mailbox_spam_threshold_is_rendered_in_hundredths() {
    let md = fixtures::domain();
    let mut jane = fixtures::mailbox("jane", "jane@example.com");
    jane.spec.spam = serde_yaml_ng::from_str("{junkThreshold: 4.5}").expect("spam");
    let hashed = HashedMailbox {
        mailbox: &jane,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        aliases: Vec::new(),
        app_password_hashes: Vec::new(),
        sieve_script: None,
    };
    let config = runtime_config(&md, &[hashed], None);
    let spam = config.mailboxes[0].spam.as_ref().expect("spam settings");
    assert_eq!(
        (spam.junk_score_hundredths, spam.quarantine),
        (Some(450), true)
    );
}

#[test]
fn https_serves_the_web_names_and_announces_the_policy_that_the_runtime_serves() {
    use kubemail_crds::mail_domain::MtaStsMode;
    let mut md = fixtures::domain();
    // Off by default: no port, no listener, no MTA-STS records.
    let records = dns::records(&md, &[], &[]);
    assert!(
        !records
            .iter()
            .any(|r| r.purpose == "MTA-STS" || r.type_ == "CNAME")
    );
    let port = |md: &kubemail_crds::MailDomain| {
        objects::service(md)
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("https"))
            .map(|p| (p.port, p.target_port))
    };
    assert_eq!(port(&md), None);

    md.spec.protocols.https.enabled = true;
    md.spec.mta_sts.mode = MtaStsMode::Enforce;
    assert_eq!(
        port(&md),
        Some((
            443,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8443))
        ))
    );
    let config = runtime_config(&md, &[], None);
    assert!(config.listeners.iter().any(|l| {
        l.protocol == kubemail_config::ListenerProtocol::Https && l.address == "0.0.0.0:8443"
    }));
    assert_eq!(config.advertised.mta_sts_mode, "enforce");
    let records = dns::records(&md, &[], &[]);
    let find = |name: &str| {
        records
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.type_.clone(), r.value.clone()))
    };
    for web in ["mta-sts", "autoconfig", "autodiscover"] {
        assert_eq!(
            find(&format!("{web}.example.com.")),
            Some(("CNAME".into(), "mail.example.com.".into()))
        );
    }
    assert_eq!(
        find("_smtp._tls.example.com."),
        Some((
            "TXT".into(),
            "v=TLSRPTv1; rua=mailto:postmaster@example.com".into()
        ))
    );
    // The id follows the policy the runtime serves: another mode, another id; the same, the
    // same.
    let (_, enforce) = find("_mta-sts.example.com.").expect("_mta-sts");
    assert!(enforce.starts_with("v=STSv1; id=") && enforce.len() == "v=STSv1; id=".len() + 20);
    assert_eq!(dns::records(&md, &[], &[]), records);
    md.spec.mta_sts.mode = MtaStsMode::Testing;
    let testing = dns::records(&md, &[], &[]);
    let (_, testing) = testing
        .iter()
        .find(|r| r.purpose == "MTA-STS")
        .map(|r| (r.type_.clone(), r.value.clone()))
        .expect("_mta-sts");
    assert_ne!(testing, enforce);
}

#[test]
fn a_domain_on_a_database_rolls_one_pod_at_a_time_over_nodes_without_a_volume() {
    let mut md = fixtures::domain();
    md.spec.storage.database = Some(
        serde_yaml_ng::from_str(
            "{secretRef: {name: mail-db-app}, caSecretRef: {name: mail-db-ca}}",
        )
        .expect("yaml"),
    );
    md.spec.runtime.replicas = 3;
    let deployment = objects::deployment(&md, None, &options());
    let spec = deployment.spec;
    let strategy = spec.strategy.expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.expect("pod");
    assert!(
        pod.affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .is_some_and(
                |terms| terms[0].pod_affinity_term.topology_key == "kubernetes.io/hostname"
            )
    );
    let volumes = pod.volumes.expect("volumes");
    let data = volumes
        .iter()
        .find(|v| v.name == "data")
        .expect("data volume");
    assert!(data.persistent_volume_claim.is_none() && data.empty_dir.is_some());
    let database = volumes
        .iter()
        .find(|v| v.name == "database")
        .expect("database volume");
    let secret = database.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("mail-db-app"));
    let item = &secret.items.as_ref().expect("items")[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("uri", "uri"));
    let ca = volumes
        .iter()
        .find(|v| v.name == "database-ca")
        .expect("CA volume");
    let secret = ca.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("mail-db-ca"));
    assert_eq!(secret.items.as_ref().expect("items")[0].key, "ca.crt");
    // The config names the files; the budget lets one pod go at a time.
    let config = runtime_config(&md, &[], None);
    let database = config.storage.database.expect("database");
    assert_eq!(
        database.uri_file,
        std::path::PathBuf::from("/etc/kubemail/database/uri")
    );
    assert_eq!(
        database.ca_file,
        Some(std::path::PathBuf::from("/etc/kubemail/database-ca/ca.crt"))
    );
    let budget = objects::disruption_budget(&md).expect("a budget with 3 replicas");
    assert_eq!(
        budget.spec.expect("spec").max_unavailable,
        Some(IntOrString::Int(1))
    );
    md.spec.runtime.replicas = 1;
    assert!(objects::disruption_budget(&md).is_none());
    // On Maildir: a volume, Recreate, no budget.
    md.spec.storage.database = None;
    let maildir = objects::deployment(&md, None, &options()).spec;
    assert_eq!(
        maildir.strategy.expect("strategy").type_.as_deref(),
        Some("Recreate")
    );
}
