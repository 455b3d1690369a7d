//! Domains hosted on another MailDomain's runtime (`spec.hostedBy`): several companies' or
//! brands' domains on one Deployment, Service, IP address and volume.
//!
//! The server (the MailDomain `hostedBy` names) renders each hosted domain's part into its own
//! config: the domain with its host name, MTA-STS mode, certificate and DKIM key (copied into
//! the config Secret, so the runtime picks them up without a restart) and its Mailboxes. A part
//! that would make the config invalid is replaced by the part the runtime serves now (or left
//! out if it serves none): one tenant's mistake never stops another's changes. The hosted
//! domain's own reconcile keeps its keys, DNS records and status, and reads from the server's
//! config Secret and status whether its current part is served.
use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, Service, ServiceAccount},
};
use kube::{
    Api, ResourceExt,
    api::DeleteParams,
    runtime::{controller::Action, reflector::ObjectRef as K8sRef},
};
use kubemail_config::{DkimConfig, DomainConfig, MailboxConfig, RawConfig, TlsFiles};
use kubemail_crds::{MailDomain, MailDomainStatus};

use super::{
    Context,
    mail_domain::{self, Hashed},
};
use crate::{
    conditions::{self, reason, types},
    error::{Error, Result},
    render::{self, Names, dns, hostname, paths},
};

/// What one hosted domain brings to its server's config.
#[derive(Debug, Clone)]
pub struct Part {
    /// The hosted MailDomain.
    pub md: Arc<MailDomain>,
    /// Its certificate and key (PEM), once its Secret has them.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// The selector and private key (PEM) that sign its mail, when DKIM is on and the key is
    /// made.
    pub dkim: Option<(String, Vec<u8>)>,
    /// Its Mailboxes with their hashes.
    pub(super) mailboxes: Vec<Hashed>,
}

/// The MailDomains hosted on `server` (same namespace, `hostedBy` naming it), oldest first. A
/// MailDomain that is hosted itself hosts nothing.
pub fn hosted_on(ctx: &Context, server: &MailDomain) -> Vec<Arc<MailDomain>> {
    if server.spec.hosted_by.is_some() {
        return Vec::new();
    }
    let mut hosted: Vec<Arc<MailDomain>> = ctx
        .domains
        .state()
        .into_iter()
        .filter(|md| md.namespace() == server.namespace())
        .filter(|md| md.metadata.deletion_timestamp.is_none())
        .filter(|md| {
            md.spec
                .hosted_by
                .as_ref()
                .is_some_and(|h| Some(&h.name) == server.metadata.name.as_ref())
        })
        .collect();
    hosted.sort_by_key(|m| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    });
    hosted
}

/// The server a hosted MailDomain names, when it exists.
pub fn server_of(ctx: &Context, md: &MailDomain) -> Option<Arc<MailDomain>> {
    let name = &md.spec.hosted_by.as_ref()?.name;
    ctx.domains
        .state()
        .into_iter()
        .find(|s| s.namespace() == md.namespace() && s.metadata.name.as_ref() == Some(name))
}

/// A hosted domain as its server serves it: the server's protocols, inbound checks and
/// connection limits (its own `maxMessageSize` is rendered into its part).
pub fn as_served(md: &MailDomain, server: &MailDomain) -> MailDomain {
    let mut view = md.clone();
    view.spec.protocols = server.spec.protocols.clone();
    view.spec.inbound = server.spec.inbound.clone();
    view.spec.limits = server.spec.limits.clone();
    view.spec.runtime = server.spec.runtime.clone();
    view
}

/// Reads each hosted domain's certificate, DKIM key and Mailboxes.
pub async fn parts(ctx: &Context, server: &MailDomain, secrets: &Api<Secret>) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for md in hosted_on(ctx, server) {
        let names = Names::of(&md);
        let tls = secrets.get_opt(&names.tls).await?.and_then(|s| {
            let data = s.data?;
            Some((
                data.get("tls.crt")?.0.clone(),
                data.get("tls.key")?.0.clone(),
            ))
        });
        let dkim = if md.spec.dkim.enabled {
            secrets.get_opt(&names.dkim).await?.and_then(|s| {
                let keys = super::dkim::Keys::of(
                    &s.metadata.annotations.unwrap_or_default(),
                    &md.spec.dkim.selector,
                );
                let pem = s.data?.get(&keys.active.file)?.0.clone();
                Some((keys.active.selector, pem))
            })
        } else {
            None
        };
        let mailboxes = mail_domain::served_mailboxes(ctx, &md).await?;
        parts.push(Part {
            md,
            tls,
            dkim,
            mailboxes,
        });
    }
    Ok(parts)
}

/// Files beside the config in its Secret: (key, contents).
pub type Files = Vec<(String, Vec<u8>)>;

/// The config a server's runtime is given now, and the files beside it.
#[derive(Debug, Clone)]
pub struct Current {
    pub config: RawConfig,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// The largest certificate chain or key a hosted domain may bring.
const MAX_FILE: usize = 64 * 1024;

/// Room for hosted domains' files in the server's config Secret (the API server refuses
/// Secrets above 1 MiB; the config itself needs the rest).
const FILES_BUDGET: usize = 512 * 1024;

/// The config Secret's key of a hosted domain's file.
fn file_key(domain: &str, file: &str) -> String {
    format!("hosted.{domain}.{file}")
}

/// A hosted domain's part of the server's config, and the files it names.
fn rendered(part: &Part, server: &MailDomain) -> (DomainConfig, Vec<MailboxConfig>, Files) {
    let view = as_served(&part.md, server);
    let hashed: Vec<_> = part.mailboxes.iter().map(Hashed::rendered).collect();
    let mut alone = render::config::runtime_config(&view, &hashed, None);
    let mut domain = alone.domains.remove(0);
    let name = domain.name.clone();
    domain.hostname = Some(hostname(&part.md));
    domain.mta_sts_mode = Some(alone.advertised.mta_sts_mode.clone());
    // Its own message size limit (the runtime holds it below the server's).
    domain.max_message_size = render::quantity::bytes(&part.md.spec.limits.max_message_size);
    let path = |key: &str| format!("{}/{key}", paths::CONFIG_DIR).into();
    let mut files = Vec::new();
    if let Some((cert, key)) = &part.tls {
        let (cert_key, key_key) = (file_key(&name, "tls.crt"), file_key(&name, "tls.key"));
        domain.tls = Some(TlsFiles {
            cert_file: path(&cert_key),
            key_file: path(&key_key),
        });
        files.push((cert_key, cert.clone()));
        files.push((key_key, key.clone()));
    }
    if let Some((selector, pem)) = &part.dkim {
        let key = file_key(&name, "dkim.pem");
        domain.dkim = Some(DkimConfig {
            selector: selector.clone(),
            key_file: path(&key),
        });
        files.push((key, pem.clone()));
    }
    (domain, alone.mailboxes, files)
}

/// The part of `config` that belongs to `domain`: its entry and the Mailboxes in it.
fn part_in(config: &RawConfig, domain: &str) -> Option<(DomainConfig, Vec<MailboxConfig>)> {
    let entry = config
        .domains
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(domain))?
        .clone();
    let mailboxes = config
        .mailboxes
        .iter()
        .filter(|m| {
            let of = super::domain_of(&m.address);
            std::iter::once(&entry.name)
                .chain(&entry.aliases)
                .any(|d| d.eq_ignore_ascii_case(of))
        })
        .cloned()
        .collect();
    Some((entry, mailboxes))
}

/// `config` with one part added, if the result is valid.
fn with_part(
    config: &RawConfig,
    (domain, mailboxes): (DomainConfig, Vec<MailboxConfig>),
) -> std::result::Result<RawConfig, String> {
    let mut trial = config.clone();
    trial.domains.push(domain);
    trial.mailboxes.extend(mailboxes);
    kubemail_config::Config::validate(trial.clone())
        .map(|_| trial)
        .map_err(|e| e.to_string())
}

/// A domain's names: its name and aliases.
fn names(d: &DomainConfig) -> impl Iterator<Item = &String> {
    std::iter::once(&d.name).chain(&d.aliases)
}

/// Why each of `parts` (in age order, oldest first) cannot join `server` (the server's own
/// config): names that are another domain's, whoever came first where only one can have them.
/// - A domain name or alias equal to, under or above one of an older domain's (or above the
///   server's host name): the newer one is refused (`test` cannot swallow `a.test`).
/// - A host name that is the server's, in another domain's names (`mta-sts.a.test` would take
///   a.test's policy), or an older domain's host name: refused, whichever came first.
fn disputes(server: &RawConfig, parts: &[DomainConfig]) -> Vec<Option<String>> {
    let related =
        |a: &str, b: &str| kubemail_config::name_is_in(a, b) || kubemail_config::name_is_in(b, a);
    let mut refused: Vec<Option<String>> = vec![None; parts.len()];
    for (i, p) in parts.iter().enumerate() {
        let older = server.domains.iter().chain(
            parts[..i]
                .iter()
                .zip(&refused)
                .filter(|(_, r)| r.is_none())
                .map(|(d, _)| d),
        );
        for o in older {
            if let Some(n) = names(p).find(|n| names(o).any(|m| related(n, m))) {
                refused[i] = Some(format!(
                    "{n} overlaps the domain {} of another MailDomain",
                    o.name
                ));
                break;
            }
        }
        if refused[i].is_none()
            && let Some(n) = names(p).find(|n| kubemail_config::name_is_in(&server.hostname, n))
        {
            refused[i] = Some(format!(
                "{n} holds the server's host name {}",
                server.hostname
            ));
        }
    }
    let names_refused = refused.clone();
    for (i, p) in parts.iter().enumerate() {
        let Some(host) = p.hostname.as_deref() else {
            continue;
        };
        if refused[i].is_some() {
            continue;
        }
        if host.eq_ignore_ascii_case(&server.hostname) {
            refused[i] = Some(format!("hostname {host} is the server's"));
            continue;
        }
        let others = server.domains.iter().map(|d| (d, false)).chain(
            parts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && names_refused[*j].is_none())
                .map(|(j, d)| (d, j < i)),
        );
        for (o, older) in others {
            if names(o).any(|m| kubemail_config::name_is_in(host, m)) {
                refused[i] = Some(format!(
                    "hostname {host} is in the domain {}: choose a name of this domain's own",
                    o.name
                ));
                break;
            }
            if older
                && o.hostname
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
            {
                refused[i] = Some(format!("hostname {host} is the domain {}'s", o.name));
                break;
            }
        }
    }
    refused
}

/// Why a part's files cannot be copied: one too large.
fn oversized(files: &Files) -> Option<String> {
    files
        .iter()
        .find(|(_, f)| f.len() > MAX_FILE)
        .map(|(key, _)| format!("{key} is larger than {} KiB", MAX_FILE / 1024))
}

/// Adds each hosted domain's part to the server's valid `config`, in order. A part that would
/// make it invalid (or brings names another domain has, see [`disputes`], or files too large
/// or beyond the Secret's room) is replaced by the part `current` (the config served now) has
/// for that domain with the files it names, or left out when that does not fit either.
/// Returns the config and the files its parts name.
pub fn add(
    mut config: RawConfig,
    server: &MailDomain,
    parts: &[Part],
    current: Option<&Current>,
) -> (RawConfig, Files) {
    let rendered: Vec<_> = parts.iter().map(|p| rendered(p, server)).collect();
    let domains: Vec<DomainConfig> = rendered.iter().map(|(d, ..)| d.clone()).collect();
    let disputed = disputes(&config, &domains);
    let mut files: Files = Vec::new();
    let mut room = FILES_BUDGET;
    for ((domain, mailboxes, part_files), disputed) in rendered.into_iter().zip(disputed) {
        let name = domain.name.clone();
        let size: usize = part_files.iter().map(|(_, f)| f.len()).sum();
        let fresh = match disputed.or_else(|| oversized(&part_files)) {
            Some(why) => Err(why),
            None if size > room => Err(
                "the server's config Secret has no room for this domain's certificate and key"
                    .to_string(),
            ),
            None => with_part(&config, (domain, mailboxes)).map(|next| (next, part_files)),
        };
        let added = fresh.or_else(|invalid| {
            tracing::debug!(domain = %name, %invalid, "a hosted domain's config is refused; its last served part stays");
            let current = current.ok_or(invalid.clone())?;
            let kept = part_in(&current.config, &name).ok_or(invalid.clone())?;
            // A kept part must not hold names another domain has now either.
            if disputes(&config, std::slice::from_ref(&kept.0))[0].is_some() {
                return Err(invalid);
            }
            // The files the kept part names, as they are now.
            let named = kept
                .0
                .tls
                .iter()
                .flat_map(|t| [&t.cert_file, &t.key_file])
                .chain(kept.0.dkim.iter().map(|k| &k.key_file))
                .filter_map(|path| {
                    let key = path.file_name()?.to_str()?.to_string();
                    let file = current.files.get(&key)?.clone();
                    Some((key, file))
                })
                .collect::<Files>();
            let size: usize = named.iter().map(|(_, f)| f.len()).sum();
            if size > room {
                return Err("no room".to_string());
            }
            with_part(&config, kept).map(|next| (next, named))
        });
        if let Ok((next, part_files)) = added {
            room -= part_files.iter().map(|(_, f)| f.len()).sum::<usize>();
            config = next;
            files.extend(part_files);
        }
    }
    (config, files)
}

/// Whether `md`'s part would be refused, checked as its server does: against the config the
/// server's runtime is given now, with this domain's part replaced by the current one.
fn refusal(
    md: &MailDomain,
    part: &Part,
    server: &MailDomain,
    current: &RawConfig,
) -> Option<String> {
    let mut base = current.clone();
    let mine = |address: &str| {
        let of = super::domain_of(address);
        std::iter::once(&md.spec.domain)
            .chain(&md.spec.alias_domains)
            .any(|d| d.eq_ignore_ascii_case(of))
    };
    base.domains
        .retain(|d| !d.name.eq_ignore_ascii_case(&md.spec.domain));
    base.mailboxes.retain(|m| !mine(&m.address));
    let (domain, mailboxes, files) = rendered(part, server);
    // As the newest: what the server's runtime holds now stays before it.
    if let Some(why) = disputes(&base, std::slice::from_ref(&domain))[0]
        .clone()
        .or_else(|| oversized(&files))
    {
        return Some(why);
    }
    with_part(&base, (domain, mailboxes)).err()
}

/// Where a hosted domain stands with its server.
enum Standing {
    /// `hostedBy` names nothing here.
    NoServer(String),
    /// It names a hosted MailDomain.
    ServerHosted(String, String),
    /// The server runs; its config does or does not hold this domain's current part.
    Server {
        server: Arc<MailDomain>,
        /// The revision the server's runtime serves, when it serves this domain's current part.
        served: Option<String>,
        /// Why this domain's part is refused.
        invalid: Option<String>,
        /// Whether the server is Ready.
        ready: bool,
    },
}

/// The reconcile of a hosted MailDomain: its keys, DNS records and status. The server's
/// reconcile puts it into the runtime's config.
pub async fn reconcile(
    md: &Arc<MailDomain>,
    ctx: &Arc<Context>,
    ns: &str,
    stored: &MailDomain,
    previous: &MailDomainStatus,
) -> Result<Action> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let server = server_of(ctx, md);
    let view = match &server {
        Some(s) => as_served(md, s),
        None => md.as_ref().clone(),
    };
    let (tls_ok, dkim) =
        mail_domain::own_keys(&view, &secrets, mail_domain::records_resolve(ctx, previous)).await?;
    let mailboxes = mail_domain::served_mailboxes(ctx, md).await?;
    let server_name = md
        .spec
        .hosted_by
        .as_ref()
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let standing = match server {
        None => Standing::NoServer(server_name),
        Some(s) if s.spec.hosted_by.is_some() => Standing::ServerHosted(
            server_name,
            s.spec
                .hosted_by
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
        ),
        Some(server) => {
            let current = mail_domain::current_config(&secrets, &Names::of(&server).config).await?;
            let part = Part {
                md: md.clone(),
                tls: None,
                dkim: None,
                mailboxes,
            };
            let status = server.status.clone().unwrap_or_default();
            let server_serves = conditions::is_true(&status.conditions, types::CONFIG_SERVED);
            let (served, invalid) = match current.as_ref().map(|c| &c.config) {
                Some(current) => {
                    let (mut want, mut want_boxes, _) = rendered(&part, &server);
                    let got = part_in(current, &md.spec.domain);
                    // Files are compared by name only: their contents are the Secrets'.
                    if let Some((got_domain, _)) = &got {
                        want.tls = got_domain.tls.clone();
                        want.dkim = got_domain.dkim.clone();
                    }
                    want_boxes.sort_by(|a, b| a.address.cmp(&b.address));
                    let current_part = got.map(|(d, mut m)| {
                        m.sort_by(|a, b| a.address.cmp(&b.address));
                        (d, m)
                    });
                    let up_to_date = current_part == Some((want, want_boxes));
                    let revision = (up_to_date
                        && server_serves
                        && status.config_revision.as_deref() == Some(current.revision.as_str()))
                    .then(|| current.revision.clone());
                    (revision, refusal(md, &part, &server, current))
                }
                None => (None, None),
            };
            Standing::Server {
                ready: conditions::is_true(&status.conditions, types::READY),
                server,
                served,
                invalid,
            }
        }
    };
    // A runtime of its own (from before it was hosted) goes once the server serves it, not
    // before: a wrong `hostedBy` must not take the domain's mail down.
    if let Standing::Server {
        served: Some(_), ..
    } = &standing
    {
        remove_own_runtime(ctx, md, ns).await?;
    }
    let records = dns::records(
        &view,
        &dkim.records,
        &match &standing {
            Standing::Server { server, .. } => {
                mail_domain::host_addresses(ctx, server, ns, previous).await
            }
            _ => Vec::new(),
        },
    );
    let verified = match &ctx.dns {
        Some(checker) => {
            let uid = md.metadata.uid.clone().ok_or(Error::Incomplete("uid"))?;
            Some(checker.verdict(uid, &records).await)
        }
        None => None,
    };
    let published = mail_domain::publish_dns(ctx, md, ns, &records, previous).await?;
    let status = status_of(
        md,
        previous,
        &standing,
        tls_ok,
        records,
        verified,
        published,
        part_count(ctx, md),
    );
    mail_domain::write_and_look_again(ctx, md, stored, previous, &status).await
}

/// How many Mailboxes the domain has (served or not: the server's reconcile serves them).
fn part_count(ctx: &Context, md: &MailDomain) -> usize {
    mail_domain::mailboxes_of(ctx, md).len()
}

#[allow(clippy::too_many_arguments)]
fn status_of(
    md: &MailDomain,
    previous: &MailDomainStatus,
    standing: &Standing,
    tls_ok: bool,
    records: Vec<kubemail_crds::mail_domain::DnsRecord>,
    verified: Option<crate::dns_check::Verdict>,
    published: Option<std::result::Result<String, (&'static str, String)>>,
    mailboxes: usize,
) -> MailDomainStatus {
    let generation = md.metadata.generation;
    let names = Names::of(md);
    let mut conditions = previous.conditions.clone();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions::set(
            &mut conditions,
            &previous.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
        )
    };
    if tls_ok {
        set(
            types::TLS_READY,
            true,
            reason::READY,
            format!(
                "certificate from Secret {}, served by SNI for {}",
                names.tls,
                hostname(md)
            ),
        );
    } else {
        set(
            types::TLS_READY,
            false,
            reason::SECRET_NOT_FOUND,
            format!(
                "Secret {} (type kubernetes.io/tls, keys tls.crt and tls.key) does not exist yet; the server's certificate is served meanwhile",
                names.tls
            ),
        );
    }
    let (hosted, served, invalid, server_ready) = match standing {
        Standing::NoServer(name) => {
            set(
                types::HOSTED,
                false,
                reason::SERVER_NOT_FOUND,
                format!("hostedBy names MailDomain {name}, which does not exist in this namespace"),
            );
            (false, None, None, false)
        }
        Standing::ServerHosted(name, its) => {
            set(
                types::HOSTED,
                false,
                reason::SERVER_IS_HOSTED,
                format!(
                    "MailDomain {name} is hosted by {its} itself: name a MailDomain that runs its own runtime"
                ),
            );
            (false, None, None, false)
        }
        Standing::Server {
            server,
            served,
            invalid,
            ready,
        } => {
            let name = server.name_any();
            match served {
                Some(revision) => set(
                    types::HOSTED,
                    true,
                    reason::HOSTED,
                    format!("served by the runtime of MailDomain {name} (revision {revision})"),
                ),
                None if invalid.is_some() => set(
                    types::HOSTED,
                    false,
                    reason::INVALID_CONFIG,
                    format!(
                        "the runtime of MailDomain {name} keeps this domain's last valid config, or none: see ConfigValid"
                    ),
                ),
                None => set(
                    types::HOSTED,
                    false,
                    reason::PENDING,
                    format!(
                        "the runtime of MailDomain {name} does not serve this domain's current config yet"
                    ),
                ),
            }
            (true, served.clone(), invalid.clone(), *ready)
        }
    };
    if let Some(invalid) = &invalid {
        set(
            types::CONFIG_VALID,
            false,
            reason::INVALID_CONFIG,
            invalid.clone(),
        );
    }
    let served_ok = served.is_some() && invalid.is_none();
    set(
        types::CONFIG_SERVED,
        served_ok,
        if served_ok {
            reason::SERVED
        } else {
            reason::PENDING
        },
        match &served {
            Some(r) => format!("the server's runtime serves revision {r} with this domain"),
            None => "the server's runtime does not serve this domain's current config yet".into(),
        },
    );
    let mut set_status = |type_: &str, status: &str, reason: &str, message: String| {
        conditions::set_status(
            &mut conditions,
            &previous.conditions,
            type_,
            status,
            reason,
            message,
            generation,
        )
    };
    mail_domain::set_dns_conditions(&mut set_status, verified.as_ref(), published.as_ref());
    // A standalone domain's conditions that a hosted one does not have go.
    conditions.retain(|c| match c.type_.as_str() {
        types::DNS_PUBLISHED => published.is_some(),
        types::DNS_VERIFIED => verified.is_some(),
        types::CONFIG_VALID => invalid.is_some(),
        types::OPEN_RELAY
        | types::SCANNERS_REACHABLE
        | types::RELAY_POLICY_FOUND
        | types::CATCH_ALL_FOUND => false,
        t if t.ends_with("Ready") && t != types::READY && t != types::TLS_READY => false,
        _ => true,
    });
    if hosted && !server_ready {
        conditions::set(
            &mut conditions,
            &previous.conditions,
            types::READY,
            false,
            reason::SERVER_NOT_READY,
            format!(
                "the server's runtime (MailDomain {}) is not ready",
                md.spec
                    .hosted_by
                    .as_ref()
                    .map(|h| h.name.as_str())
                    .unwrap_or_default()
            ),
            generation,
        );
        conditions::set_kstatus(&mut conditions, &previous.conditions, generation);
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    } else {
        mail_domain::set_ready(
            &mut conditions,
            &previous.conditions,
            tls_ok && served_ok && server_ready,
            "served by its server's runtime with the current config",
            generation,
        );
    }
    let (endpoints, config_revision) = match standing {
        Standing::Server { server, served, .. } => (
            mail_domain::endpoints(server, &md.namespace().unwrap_or_default()),
            served.clone().or_else(|| previous.config_revision.clone()),
        ),
        _ => (Vec::new(), previous.config_revision.clone()),
    };
    MailDomainStatus {
        observed_generation: generation,
        hostname: Some(hostname(md)),
        conditions,
        endpoints,
        mailboxes: mailboxes as i32,
        config_revision,
        dns_records: records,
        queued: None,
    }
}

/// A domain that ran its own runtime before it was hosted: its Deployment, Services and
/// ServiceAccount go and its config Secret is emptied (only ours: owned by this MailDomain).
/// Its volume stays, with the mail stored before (see examples/hosting).
async fn remove_own_runtime(ctx: &Context, md: &MailDomain, ns: &str) -> Result<()> {
    let names = Names::of(md);
    let uid = md.metadata.uid.clone().unwrap_or_default();
    delete_owned::<Deployment>(ctx, ns, &names.runtime, &uid).await?;
    delete_owned::<Service>(ctx, ns, &names.runtime, &uid).await?;
    delete_owned::<Service>(ctx, ns, &names.metrics, &uid).await?;
    delete_owned::<ServiceAccount>(ctx, ns, &names.service_account, &uid).await?;
    // Its config Secret (password hashes among it) is emptied: the operator may not delete
    // Secrets.
    let config = K8sRef::<kube::core::PartialObjectMeta<Secret>>::new(&names.config).within(ns);
    if let Some(found) = ctx.secret_versions.get(&config)
        && found.owner_references().iter().any(|o| o.uid == uid)
        && ctx
            .secret_annotation(ns, &names.config, "kubemail.io/config-revision")
            .is_some()
    {
        let patch = serde_json::json!({
            "metadata": {"annotations": {"kubemail.io/config-revision": null}},
            "data": null,
        });
        Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .patch(
                &names.config,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
    }
    Ok(())
}

/// Deletes an object of ours when the watch cache has it and it is owned by `uid`: a hosted
/// domain's reconcile asks the API server nothing when there is nothing to remove.
pub(super) async fn delete_owned<K: super::Applied>(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<()> {
    let cached = K::live(ctx).get(&kube::runtime::reflector::ObjectRef::new(name).within(ns));
    let Some(found) = cached else {
        return Ok(());
    };
    if found.owner_references().iter().any(|o| o.uid == uid) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    fn hosted(name: &str, domain: &str) -> MailDomain {
        let mut md = fixtures::domain();
        md.metadata.name = Some(name.into());
        md.metadata.uid = Some(format!("uid-{name}"));
        md.spec.domain = domain.into();
        md.spec.alias_domains = Vec::new();
        md.spec.catch_all = None;
        md.spec.hosted_by = Some(kubemail_crds::common::LocalObjectRef {
            name: "server".into(),
        });
        md
    }

    fn part(md: MailDomain, tls: bool) -> Part {
        Part {
            md: Arc::new(md),
            tls: tls.then(|| (b"CERT".to_vec(), b"KEY".to_vec())),
            dkim: Some(("kubemail".into(), b"DKIM".to_vec())),
            mailboxes: Vec::new(),
        }
    }

    fn server_config(server: &MailDomain) -> RawConfig {
        let mut c = render::config::runtime_config(server, &[], None);
        c.domains[0].catch_all = None;
        c
    }

    #[test]
    fn a_hosted_part_names_its_own_host_certificate_and_key_in_the_config_secret() {
        let server = fixtures::domain();
        let brand = hosted("brand", "brand.test");
        let (config, files) = add(server_config(&server), &server, &[part(brand, true)], None);
        let d = &config.domains[1];
        assert_eq!(d.name, "brand.test");
        assert_eq!(d.hostname.as_deref(), Some("mail.brand.test"));
        assert_eq!(
            d.max_message_size,
            Some(25 * 1024 * 1024),
            "its own limits.maxMessageSize"
        );
        assert_eq!(
            d.tls.as_ref().map(|t| t.cert_file.display().to_string()),
            Some(format!("{}/hosted.brand.test.tls.crt", paths::CONFIG_DIR))
        );
        assert_eq!(
            d.dkim.as_ref().map(|k| k.selector.as_str()),
            Some("kubemail")
        );
        let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hosted.brand.test.tls.crt",
                "hosted.brand.test.tls.key",
                "hosted.brand.test.dkim.pem"
            ]
        );
        assert!(kubemail_config::Config::validate(config).is_ok());
    }

    #[test]
    fn a_refused_part_keeps_what_is_served_and_never_stops_the_others() {
        let server = fixtures::domain();
        let base = server_config(&server);
        let good = hosted("good", "good.test");
        let mut bad = hosted("bad", "bad.test");
        // An alias another domain already has: the runtime would refuse the whole file.
        bad.spec.alias_domains = vec![server.spec.domain.clone()];
        let parts = [part(bad.clone(), false), part(good, false)];
        let (config, _) = add(base.clone(), &server, &parts, None);
        let names: Vec<&str> = config.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, [server.spec.domain.as_str(), "good.test"]);
        // What the runtime served before for bad.test stays.
        let mut served = base.clone();
        served.domains.push(DomainConfig {
            name: "bad.test".into(),
            hostname: Some("mail.bad.test".into()),
            ..Default::default()
        });
        let current = Current {
            config: served,
            files: Default::default(),
        };
        let (config, _) = add(base, &server, &parts, Some(&current));
        let names: Vec<&str> = config.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [server.spec.domain.as_str(), "bad.test", "good.test"]
        );
        assert!(config.domains[1].aliases.is_empty());
        let refused = refusal(&bad, &part(bad.clone(), false), &server, &config);
        assert!(
            refused
                .as_deref()
                .is_some_and(|r| r.contains("example.com overlaps the domain example.com")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_host_name_in_another_domain_or_an_oversized_file_is_refused_whichever_came_first() {
        let server = fixtures::domain();
        let base = server_config(&server);
        // The older tenant takes a name in the newer one's domain: the older one is refused.
        let mut squatter = hosted("squatter", "squat.test");
        squatter.spec.hostname = Some("mta-sts.brand.test".into());
        let brand = hosted("brand", "brand.test");
        let (config, files) = add(
            base.clone(),
            &server,
            &[part(squatter.clone(), true), part(brand, true)],
            None,
        );
        let names: Vec<&str> = config.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, [server.spec.domain.as_str(), "brand.test"]);
        assert!(files.iter().all(|(k, _)| !k.contains("squat")));
        let why = refusal(&squatter, &part(squatter.clone(), false), &server, &config);
        assert!(why.is_some_and(|w| w.contains("brand.test")));
        // The server's own names are not for tenants either.
        let mut server_name = hosted("s", "s.test");
        server_name.spec.hostname = Some(format!("mail.{}", server.spec.domain));
        let (config, _) = add(base.clone(), &server, &[part(server_name, false)], None);
        assert_eq!(config.domains.len(), 1);
        // A certificate of 65 KiB is refused; its served part (with its files as they are in
        // the Secret) stays.
        let mut big = part(hosted("big", "big.test"), true);
        big.tls = Some((vec![b'x'; 65 * 1024], b"KEY".to_vec()));
        let mut served = base.clone();
        let (entry, _, old_files) = rendered(&part(hosted("big", "big.test"), true), &server);
        served.domains.push(entry);
        let current = Current {
            config: served,
            files: old_files.into_iter().collect(),
        };
        let (config, files) = add(base, &server, &[big], Some(&current));
        assert_eq!(config.domains.len(), 2);
        let sizes: Vec<usize> = files.iter().map(|(_, f)| f.len()).collect();
        assert_eq!(sizes, [4, 3, 4], "the served certificate, key and DKIM key");
    }
    #[test]
    fn a_squatting_host_name_loses_whoever_came_first_and_a_parent_domain_cannot_swallow() {
        let server = fixtures::domain();
        let base = server_config(&server);
        let domain = |name: &str, host: &str| DomainConfig {
            name: name.into(),
            hostname: Some(host.into()),
            ..Default::default()
        };
        // Older squatter of a.test's policy name: it loses, a.test is served.
        let refused = disputes(
            &base,
            &[
                domain("s.test", "mta-sts.a.test"),
                domain("a.test", "mail.a.test"),
            ],
        );
        assert!(refused[0].as_deref().is_some_and(|r| r.contains("a.test")));
        assert!(refused[1].is_none(), "{refused:?}");
        // A newer `test` would hold a.test's names: it is refused, a.test is not.
        let refused = disputes(
            &base,
            &[
                domain("a.test", "mail.a.test"),
                domain("test", "mx.hosting.example"),
            ],
        );
        assert!(refused[0].is_none(), "{refused:?}");
        assert!(
            refused[1]
                .as_deref()
                .is_some_and(|r| r.contains("overlaps"))
        );
        // Two equal host names: the older keeps it.
        let refused = disputes(
            &base,
            &[
                domain("b.test", "mx.shared.example"),
                domain("c.test", "mx.shared.example"),
            ],
        );
        assert!(refused[0].is_none() && refused[1].is_some(), "{refused:?}");
    }
}
