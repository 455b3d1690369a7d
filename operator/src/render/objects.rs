//! The Kubernetes objects that run one MailDomain's runtime.
use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, ExecAction,
            KeyToPath, Lifecycle, LifecycleHandler, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodAffinityTerm,
            PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
            Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
            VolumeResourceRequirements, WeightedPodAffinityTerm,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;
use kubemail_crds::{MailDomain, Protocol, RelayPolicy, mail_domain::RetentionPolicy};

use super::{HTTP_PORT, Names, container_port, labels, paths, selector};

/// How long the pod sleeps in preStop before the runtime gets SIGTERM: the endpoints
/// controllers and kube-proxy take it out of the Service meanwhile.
pub const PRE_STOP_SECONDS: i64 = 5;
/// How long the runtime's drain may take after SIGTERM (`mail-runtime serve --drain-seconds`):
/// SMTP transactions in flight finish, sessions are told to come back, deliveries end.
pub const DRAIN_SECONDS: i64 = 40;
/// The pod's grace period: the preStop sleep, the drain, and a margin before SIGKILL.
pub const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_SECONDS + DRAIN_SECONDS + 15;

/// The user and group the runtime runs as (the distroless "nonroot" user).
pub const RUNTIME_UID: i64 = 65532;

/// What the operator needs to know that is not in the MailDomain.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The runtime's container image.
    pub image: String,
    /// The path of the `mail-runtime` binary in the image.
    pub binary: String,
}

fn owner(md: &MailDomain) -> OwnerReference {
    md.controller_owner_ref(&())
        .expect("a stored MailDomain has a name and uid")
}

fn meta(md: &MailDomain, name: &str, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: md.metadata.namespace.clone(),
        labels: Some(labels(md)),
        owner_references: owned.then(|| vec![owner(md)]),
        ..ObjectMeta::default()
    }
}

/// The runtime's ServiceAccount: it never talks to the API server, so no token is mounted.
pub fn service_account(md: &MailDomain) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(md, &Names::of(md).service_account, true),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The Secret holding the rendered runtime config, and the files it names beside it (hosted
/// domains' certificates and DKIM keys, by key).
pub fn config_secret(
    md: &MailDomain,
    revision: &str,
    yaml: &str,
    files: &[(String, Vec<u8>)],
) -> Secret {
    let mut metadata = meta(md, &Names::of(md).config, true);
    metadata.annotations = Some(BTreeMap::from([(
        "kubemail.io/config-revision".to_string(),
        revision.to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(
            std::iter::once((
                "runtime.yaml".to_string(),
                ByteString(yaml.as_bytes().to_vec()),
            ))
            .chain(
                files
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone()))),
            )
            .collect(),
        ),
        ..Secret::default()
    }
}

/// A Secret of PEM files (the self-signed TLS pair, the DKIM key), made once.
pub fn pem_secret(md: &MailDomain, name: &str, type_: &str, files: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(md, name, true),
        type_: Some(type_.into()),
        data: Some(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The mail Service: one port per enabled protocol, of the type the spec asks for (often a
/// public LoadBalancer). The HTTP port is not on it: see [`metrics_service`].
pub fn service(md: &MailDomain) -> Service {
    let spec = &md.spec.runtime.service;
    let ports: Vec<ServicePort> = md
        .spec
        .protocols
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(protocol, p)| ServicePort {
            name: Some(protocol.field().to_string()),
            port: p.port_or_default(protocol),
            target_port: Some(IntOrString::Int(container_port(protocol))),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect();
    let mut metadata = meta(md, &Names::of(md).runtime, true);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let type_ = match spec.type_ {
        kubemail_crds::mail_domain::ServiceType::ClusterIP => "ClusterIP",
        kubemail_crds::mail_domain::ServiceType::NodePort => "NodePort",
        kubemail_crds::mail_domain::ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector(md)),
            ports: Some(ports),
            // Keep the client address for connection limits and Received headers, unless the
            // load balancer passes it in the PROXY header instead.
            external_traffic_policy: (type_ != "ClusterIP" && !spec.proxy_protocol)
                .then(|| "Local".to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The label that tells the metrics Service from the mail Service (the chart's ServiceMonitor
/// selects by it).
pub const METRICS_SERVICE_LABEL: &str = "kubemail.io/metrics";

/// The metrics Service: the runtime's HTTP port (`/metrics`, `/healthz`, `/readyz`, autoconfig)
/// on a ClusterIP Service of its own, for Prometheus and the operator's revision reads. Always
/// ClusterIP, without the mail Service's annotations (which are for the load balancer):
/// `/readyz` tells config errors and `/metrics` traffic, without authentication.
pub fn metrics_service(md: &MailDomain) -> Service {
    let mut metadata = meta(md, &Names::of(md).metrics, true);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(METRICS_SERVICE_LABEL.into(), "true".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(md)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::Int(HTTP_PORT)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The PVC. With `retentionPolicy: Retain` (the default) it has no owner, so deleting the
/// MailDomain leaves the mail; with `Delete` it is owned and collected with it.
pub fn data_claim(md: &MailDomain) -> PersistentVolumeClaim {
    let storage = &md.spec.storage;
    let owned = storage.retention_policy == RetentionPolicy::Delete;
    PersistentVolumeClaim {
        metadata: meta(md, &Names::of(md).data, owned),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn exec_probe(command: Vec<String>, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A volume of some keys of a user's Secret, each under a file name of ours; optional, so a
/// Secret that goes away does not keep the pod from starting (the runtime reports what it
/// cannot read).
fn keyed_secret_volume(name: &str, secret: &str, keys: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            optional: Some(true),
            default_mode: Some(0o440),
            default_user: None,
            items: Some(
                keys.iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
        }),
        ..Volume::default()
    }
}

/// The runtime's Deployment, restricted Pod Security Standard throughout.
pub fn deployment(
    md: &MailDomain,
    relay: Option<&RelayPolicy>,
    options: &RuntimeOptions,
) -> Deployment {
    let names = Names::of(md);
    let enabled: Vec<Protocol> = md
        .spec
        .protocols
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(p, _)| p)
        .collect();
    let mut ports: Vec<ContainerPort> = enabled
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.field().to_string()),
            container_port: container_port(*p),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some("http".into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    });
    // Readiness: every listener of the config answers in its own protocol. Liveness: the first
    // one does (a slow peer on one protocol must not get the pod killed).
    let readiness = exec_probe(
        vec![
            options.binary.clone(),
            "probe-config".into(),
            paths::CONFIG_FILE.into(),
        ],
        10,
        8,
        3,
    );
    // A mail protocol's: the probe speaks those (HTTPS is not one).
    let liveness = enabled.iter().find_map(|p| {
        let kind = match p {
            Protocol::Smtp | Protocol::Submission | Protocol::Submissions => "smtp",
            Protocol::Imap | Protocol::Imaps => "imap",
            Protocol::Pop3 | Protocol::Pop3s => "pop3",
            Protocol::Managesieve => "managesieve",
            Protocol::Https => return None,
        };
        let mut command = vec![
            options.binary.clone(),
            "probe".into(),
            kind.into(),
            format!("127.0.0.1:{}", container_port(*p)),
        ];
        if p.implicit_tls() {
            command.push("--implicit-tls".into());
        }
        let mut probe = exec_probe(command, 20, 8, 3);
        probe.initial_delay_seconds = Some(10);
        Some(probe)
    });
    // The smarthost's credentials come from the user's Secret, mounted as `username` and
    // `password` (the operator never reads them).
    let smarthost_credentials = relay
        .and_then(|rp| rp.spec.route.smarthost.as_ref())
        .and_then(|h| h.credentials_secret_ref.as_ref());
    // The rspamd controller's password, from the MailDomain's Secret, mounted as `password`.
    let rspamd_password = md
        .spec
        .inbound
        .rspamd
        .as_ref()
        .and_then(|r| r.controller_password_secret_ref.as_ref());
    let secret_volume = |name: &str, secret: &str, optional: bool| Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            optional: optional.then_some(true),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let resources = md
        .spec
        .runtime
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("512Mi".into()),
            )])),
            ..ResourceRequirements::default()
        });
    let container = Container {
        name: "mail-runtime".into(),
        image: Some(options.image.clone()),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            paths::CONFIG_FILE.into(),
            "--drain-seconds".into(),
            DRAIN_SECONDS.to_string(),
        ]),
        ports: Some(ports),
        // The pod leaves the Service's endpoints while it sleeps, so no new client is sent to
        // it once SIGTERM closes its listeners.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        readiness_probe: Some(readiness),
        liveness_probe: liveness,
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some({
            let mut mounts = vec![
                mount("config", paths::CONFIG_DIR, true),
                mount("tls", paths::TLS_DIR, true),
                mount("dkim", paths::DKIM_DIR, true),
                mount("data", paths::DATA_DIR, false),
                mount("tmp", "/tmp", false),
            ];
            if let Some(database) = &md.spec.storage.database {
                mounts.push(mount("database", paths::DATABASE_DIR, true));
                if database.ca_secret_ref.is_some() {
                    mounts.push(mount("database-ca", paths::DATABASE_CA_DIR, true));
                }
            }
            if smarthost_credentials.is_some() {
                mounts.push(mount("smarthost", paths::SMARTHOST_DIR, true));
            }
            if rspamd_password.is_some() {
                mounts.push(mount("rspamd", paths::RSPAMD_DIR, true));
            }
            mounts
        }),
        ..Container::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(md)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names.service_account.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNTIME_UID),
                run_as_group: Some(RUNTIME_UID),
                fs_group: Some(RUNTIME_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(
                vec![
                    secret_volume("config", &names.config, false),
                    secret_volume("tls", &names.tls, false),
                    secret_volume("dkim", &names.dkim, true),
                    match &md.spec.storage.database {
                        // The mail is in the database: the pod's disk holds only the spool.
                        Some(_) => Volume {
                            name: "data".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                size_limit: Some(Quantity("1Gi".into())),
                                ..EmptyDirVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        None => Volume {
                            name: "data".into(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: names.data.clone(),
                                ..PersistentVolumeClaimVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    },
                    Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: Some(Quantity("64Mi".into())),
                            ..EmptyDirVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]
                .into_iter()
                .chain(smarthost_credentials.map(|c| {
                    keyed_secret_volume(
                        "smarthost",
                        &c.name,
                        &[(&c.username_key, "username"), (&c.password_key, "password")],
                    )
                }))
                .chain(
                    rspamd_password
                        .map(|p| keyed_secret_volume("rspamd", &p.name, &[(&p.key, "password")])),
                )
                .chain(md.spec.storage.database.as_ref().map(|d| {
                    keyed_secret_volume(
                        "database",
                        &d.secret_ref.name,
                        &[(&d.secret_ref.key, "uri")],
                    )
                }))
                .chain(
                    md.spec
                        .storage
                        .database
                        .as_ref()
                        .and_then(|d| d.ca_secret_ref.as_ref())
                        .map(|c| {
                            keyed_secret_volume("database-ca", &c.name, &[(&c.key, "ca.crt")])
                        }),
                )
                .collect(),
            ),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            // Replicas on one database spread over nodes when they can.
            affinity: md.spec.storage.database.as_ref().map(|_| Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(selector(md)),
                                    ..LabelSelector::default()
                                }),
                                topology_key: "kubernetes.io/hostname".into(),
                                ..PodAffinityTerm::default()
                            },
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        }),
    };
    Deployment {
        metadata: meta(md, &names.runtime, true),
        spec: DeploymentSpec {
            replicas: Some(md.spec.runtime.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(md)),
                ..LabelSelector::default()
            },
            strategy: Some(match &md.spec.storage.database {
                // One new pod at a time, and an old one leaves only once it is ready: no
                // moment without a serving pod.
                Some(_) => DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(1)),
                        max_unavailable: Some(IntOrString::Int(0)),
                    }),
                },
                // The Maildir volume is ReadWriteOnce: the old pod must go before the new one
                // comes.
                None => DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    ..DeploymentStrategy::default()
                },
            }),
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The runtime pods' NetworkPolicy: in, the mail ports from anywhere (the Service may be a
/// public load balancer) and the HTTP port (`/metrics`, `/readyz`, the operator's revision
/// reads) only from the namespaces `http_from` names (the operator's, monitoring); out, DNS,
/// SMTP to other servers (25, 465, 587), HTTPS (MTA-STS policies, 443), the ports of the
/// scanners and the smarthost the domain and its RelayPolicy name, and `database_ports` (those
/// of the database URI, with `storage.database`). Nothing else either way.
pub fn network_policy(
    md: &MailDomain,
    relay: Option<&RelayPolicy>,
    http_from: &[String],
    database_ports: &[u16],
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    use k8s_openapi::{
        api::networking::v1::{
            NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
            NetworkPolicyPort, NetworkPolicySpec,
        },
        apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement,
    };
    let port = |n: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(n)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    };
    let mail_ports: Vec<NetworkPolicyPort> = md
        .spec
        .protocols
        .iter()
        .filter(|(_, s)| s.enabled)
        .map(|(p, _)| port(container_port(p), "TCP"))
        .collect();
    let http_peers = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(http_from.to_vec()),
            }]),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }];
    // The port after the last ':' of `host:port` or `http://host:port/...`.
    let port_of = |address: &str| -> Option<i32> {
        let rest = address.split_once("://").map_or(address, |(_, r)| r);
        let authority = rest.split('/').next()?;
        authority.rsplit_once(':')?.1.parse().ok()
    };
    let mut out_ports: Vec<i32> = vec![25, 465, 587, 443];
    let inbound = &md.spec.inbound;
    out_ports.extend(inbound.rspamd.as_ref().and_then(|r| port_of(&r.url)));
    out_ports.extend(
        inbound
            .rspamd
            .as_ref()
            .and_then(|r| r.controller_url.as_deref())
            .and_then(port_of),
    );
    out_ports.extend(inbound.clamav.as_ref().and_then(|c| port_of(&c.address)));
    out_ports.extend(
        relay
            .and_then(|r| r.spec.route.smarthost.as_ref())
            .map(|h| h.port),
    );
    out_ports.extend(database_ports.iter().map(|&p| i32::from(p)));
    out_ports.sort_unstable();
    out_ports.dedup();
    NetworkPolicy {
        metadata: meta(md, &Names::of(md).runtime, true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(md)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(mail_ports),
                    from: None,
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(HTTP_PORT, "TCP")]),
                    from: Some(http_peers),
                },
            ]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
                    to: None,
                },
                NetworkPolicyEgressRule {
                    ports: Some(out_ports.into_iter().map(|p| port(p, "TCP")).collect()),
                    to: None,
                },
            ]),
        }),
    }
}

/// With several replicas (on a database), a PodDisruptionBudget: a node drain evicts one runtime
/// pod at a time, and only while the others are ready.
pub fn disruption_budget(md: &MailDomain) -> Option<PodDisruptionBudget> {
    (md.spec.storage.database.is_some() && md.spec.runtime.replicas > 1).then(|| {
        PodDisruptionBudget {
            metadata: meta(md, &Names::of(md).runtime, true),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector(md)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    })
}
