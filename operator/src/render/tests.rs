//! Snapshots of everything the operator renders (`operator/src/render/snapshots/`): a change
//! to what lands in the cluster shows in review as a change to these files.
use super::{
    config::{HashedMailbox, runtime_config, with_revision},
    dns, fixtures, objects,
};

fn options() -> objects::RuntimeOptions {
    objects::RuntimeOptions {
        image: "ghcr.io/kubemail/mail-runtime:0.1.0".into(),
        binary: "/usr/local/bin/mail-runtime".into(),
    }
}

#[test]
fn deployment_service_claim_and_account() {
    let md = fixtures::domain();
    insta::assert_yaml_snapshot!(
        "deployment",
        objects::deployment(&md, Some(&fixtures::relay()), &options())
    );
    insta::assert_yaml_snapshot!("service", objects::service(&md));
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
    mail_runtime::config::Config::parse(&yaml).expect("the rendered config validates");
    insta::assert_snapshot!("runtime_config", yaml);
}

#[test]
fn dns_records() {
    let md = fixtures::domain();
    insta::assert_yaml_snapshot!(
        "dns_records",
        dns::records(&md, Some("v=DKIM1; k=rsa; p=MIIBIjANBgkq"))
    );
}

#[test]
fn retained_storage_has_no_owner_and_deleted_storage_does() {
    let mut md = fixtures::domain();
    assert!(objects::data_claim(&md).metadata.owner_references.is_none());
    md.spec.storage.retention_policy = kubemail_crds::mail_domain::RetentionPolicy::Delete;
    assert!(objects::data_claim(&md).metadata.owner_references.is_some());
}
