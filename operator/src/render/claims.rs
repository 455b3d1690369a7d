//! Which Mailbox owns which address. Every address and alias of a domain belongs to one Mailbox;
//! the runtime refuses a config where two share one, so one user's typo must not reach it and
//! stop the whole domain's config from loading. The oldest Mailbox wins: a newer Mailbox whose
//! address is taken is not served at all; a newer alias that is taken, or that is outside the
//! domain and its alias domains, is left out while the rest of its Mailbox is served.
use std::collections::BTreeMap;

use kube::ResourceExt;
use kubemail_crds::{MailDomain, Mailbox};

/// What one Mailbox may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The Mailbox that already has this one's address, when one does: this one is not served.
    pub duplicate_of: Option<String>,
    /// The aliases it is served with.
    pub aliases: Vec<String>,
    /// The aliases left out, each with why.
    pub refused: Vec<(String, String)>,
}

/// Claims for `mailboxes`, which must be in priority order (oldest first; see
/// `mailboxes_of`). The result is in the same order.
pub fn claim(md: &MailDomain, mailboxes: &[&Mailbox]) -> Vec<Claim> {
    let served: Vec<String> = std::iter::once(&md.spec.domain)
        .chain(&md.spec.alias_domains)
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    mailboxes
        .iter()
        .map(|m| {
            let name = m.name_any();
            let address = m.spec.address.to_ascii_lowercase();
            if let Some(owner) = owners.get(&address) {
                return Claim {
                    duplicate_of: Some(owner.clone()),
                    aliases: Vec::new(),
                    refused: Vec::new(),
                };
            }
            owners.insert(address, name.clone());
            let mut claim = Claim {
                duplicate_of: None,
                aliases: Vec::new(),
                refused: Vec::new(),
            };
            for alias in &m.spec.aliases {
                let lower = alias.to_ascii_lowercase();
                let domain = lower.rsplit_once('@').map_or("", |(_, d)| d);
                if !served.iter().any(|s| s == domain) {
                    claim.refused.push((
                        alias.clone(),
                        format!(
                            "{domain} is not {} or one of its alias domains",
                            md.spec.domain
                        ),
                    ));
                } else if let Some(owner) = owners.get(&lower) {
                    if owner != &name {
                        claim
                            .refused
                            .push((alias.clone(), format!("Mailbox {owner} already has it")));
                    }
                } else {
                    owners.insert(lower, name.clone());
                    claim.aliases.push(alias.clone());
                }
            }
            claim
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures;

    fn with_aliases(name: &str, address: &str, aliases: &[&str]) -> Mailbox {
        let mut m = fixtures::mailbox(name, address);
        m.spec.aliases = aliases.iter().map(ToString::to_string).collect();
        m
    }

    #[test]
    fn the_oldest_mailbox_keeps_an_address_and_a_newer_one_loses_only_what_collides() {
        let md = fixtures::domain(); // example.com, alias domain example.org
        let jane = with_aliases("jane", "jane@example.com", &["info@example.com"]);
        let john = with_aliases(
            "john",
            "john@example.com",
            &[
                "INFO@example.com",    // jane's alias, in another case
                "jane@example.com",    // jane's address
                "john@example.org",    // fine: the alias domain
                "john@elsewhere.test", // not served here
                "sales@example.com",   // fine
            ],
        );
        let impostor = with_aliases("impostor", "Jane@example.com", &["free@example.com"]);
        let claims = claim(&md, &[&jane, &john, &impostor]);
        assert_eq!(claims[0].aliases, ["info@example.com"]);
        assert!(claims[0].refused.is_empty() && claims[0].duplicate_of.is_none());
        assert_eq!(claims[1].aliases, ["john@example.org", "sales@example.com"]);
        let refused: Vec<&str> = claims[1].refused.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            refused,
            [
                "INFO@example.com",
                "jane@example.com",
                "john@elsewhere.test"
            ]
        );
        assert!(claims[1].refused[0].1.contains("Mailbox jane"));
        assert!(claims[1].refused[2].1.contains("not example.com"));
        assert_eq!(claims[2].duplicate_of.as_deref(), Some("jane"));
        assert!(claims[2].aliases.is_empty(), "a duplicate claims nothing");
    }
}
