//! Windows Firewall rules as the registry stores them, and whether they let Remote Desktop in
//! (`docs/preflight-windows.md`, "Firewall").
//!
//! Each rule is a `REG_SZ` value of a `FirewallRules` key (the value name is the rule's id):
//! `v2.31|Action=Allow|Active=TRUE|Dir=In|Protocol=6|Profile=Public|LPort=3389|Name=…|`.
//! A version `v<major>.<minor>` comes first, then `Key=Value` fields, each ended by `|`; a key
//! may repeat (`Profile`, `LPort`) and unknown keys are ignored, as Windows ignores keys of
//! newer versions. An absent `Protocol`, `Profile` or `LPort` means "any".
//!
//! Local rules live in SYSTEM (`…\SharedAccess\Parameters\FirewallPolicy\FirewallRules`),
//! Group Policy rules in SOFTWARE (`Policies\Microsoft\WindowsFirewall\FirewallRules`).
//! Policy settings override local ones per profile, and a policy `AllowLocalPolicyMerge = 0`
//! makes Windows ignore the local rules of that profile. A matching Block rule wins over any
//! Allow rule.

use serde::Serialize;

/// The three firewall profiles. The local store calls Private `StandardProfile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Profile {
    /// Domain-joined networks.
    Domain,
    /// Private networks (`StandardProfile` in the local store).
    Private,
    /// Public networks.
    Public,
}

impl Profile {
    /// All three, in the order Windows lists them.
    pub const ALL: [Profile; 3] = [Profile::Domain, Profile::Private, Profile::Public];

    /// The profile's key under the local `FirewallPolicy` key.
    pub fn local_key(self) -> &'static str {
        match self {
            Profile::Domain => "DomainProfile",
            Profile::Private => "StandardProfile",
            Profile::Public => "PublicProfile",
        }
    }

    /// The profile's key under the policy `WindowsFirewall` key.
    pub fn policy_key(self) -> &'static str {
        match self {
            Profile::Domain => "DomainProfile",
            Profile::Private => "PrivateProfile",
            Profile::Public => "PublicProfile",
        }
    }

    fn parse(s: &str) -> Option<Profile> {
        [
            ("domain", Profile::Domain),
            ("private", Profile::Private),
            ("public", Profile::Public),
        ]
        .iter()
        .find(|(n, _)| s.eq_ignore_ascii_case(n))
        .map(|&(_, p)| p)
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Domain => "Domain",
            Profile::Private => "Private",
            Profile::Public => "Public",
        })
    }
}

/// What a rule does with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `Action=Allow`.
    Allow,
    /// `Action=Block`.
    Block,
    /// `Action=ByPass` (authenticated bypass) or anything else: neither allows nor blocks
    /// unauthenticated traffic, so it does not count.
    Other,
}

/// One port field (`LPort=`): a number, a range `a-b`, or a keyword (`RPC`, `Ply2Disc`, …)
/// that never stands for the RDP port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ports {
    Range(u16, u16),
    Keyword,
}

/// A parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The value name (rule id).
    pub id: String,
    /// `Action`.
    pub action: Action,
    /// `Active=TRUE`.
    pub active: bool,
    /// `Dir=In`.
    pub inbound: bool,
    /// `Protocol`, `None` for any.
    pub protocol: Option<u32>,
    /// `Profile` fields; empty for all.
    pub profiles: Vec<Profile>,
    local_ports: Vec<Ports>,
    /// A remote-address restriction (`RA4`/`RA6` other than `*`): the rule does not let
    /// everyone in.
    pub remote_restricted: bool,
    /// `Name`, as stored (often an `@FirewallAPI.dll,-28775` resource reference).
    pub name: Option<String>,
}

/// Parse one rule string; `None` when it does not start with a `v<major>.<minor>` version
/// (Windows itself skips such values).
pub fn parse(id: &str, text: &str) -> Option<Rule> {
    let mut fields = text.split('|');
    let version = fields.next()?;
    let (major, minor) = version.strip_prefix('v')?.split_once('.')?;
    if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
        return None;
    }
    let mut rule = Rule {
        id: id.to_string(),
        action: Action::Other,
        active: false,
        inbound: false,
        protocol: None,
        profiles: Vec::new(),
        local_ports: Vec::new(),
        remote_restricted: false,
        name: None,
    };
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "Action" if value.eq_ignore_ascii_case("Allow") => rule.action = Action::Allow,
            "Action" if value.eq_ignore_ascii_case("Block") => rule.action = Action::Block,
            "Active" => rule.active = value.eq_ignore_ascii_case("TRUE"),
            "Dir" => rule.inbound = value.eq_ignore_ascii_case("In"),
            // An unreadable protocol number matches nothing rather than everything.
            "Protocol" => rule.protocol = Some(value.parse().unwrap_or(u32::MAX)),
            "Profile" => {
                if let Some(p) = Profile::parse(value) {
                    rule.profiles.push(p);
                }
            }
            "LPort" | "LPort2_10" => rule.local_ports.push(ports(value)),
            "RA4" | "RA6" if value != "*" && !value.eq_ignore_ascii_case("Any") => {
                rule.remote_restricted = true;
            }
            "Name" => rule.name = Some(value.to_string()),
            _ => {}
        }
    }
    Some(rule)
}

fn ports(value: &str) -> Ports {
    let num = |s: &str| s.trim().parse::<u16>().ok();
    match value.split_once('-') {
        Some((a, b)) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => Ports::Range(a, b),
            _ => Ports::Keyword,
        },
        None => num(value).map_or(Ports::Keyword, |n| Ports::Range(n, n)),
    }
}

impl Rule {
    /// True when the rule applies to inbound TCP traffic to `port` in `profile`.
    pub fn matches_tcp_in(&self, port: u16, profile: Profile) -> bool {
        self.active
            && self.inbound
            && self.protocol.is_none_or(|p| p == 6)
            && (self.profiles.is_empty() || self.profiles.contains(&profile))
            && (self.local_ports.is_empty()
                || self
                    .local_ports
                    .iter()
                    .any(|p| matches!(p, Ports::Range(a, b) if (*a..=*b).contains(&port))))
    }

    /// True when the rule lets anyone reach TCP `port` in `profile`.
    pub fn allows(&self, port: u16, profile: Profile) -> bool {
        self.action == Action::Allow
            && !self.remote_restricted
            && self.matches_tcp_in(port, profile)
    }

    /// True when the rule would let anyone reach TCP `port` in `profile` if it were
    /// active: a disabled Remote Desktop rule, named in evidence.
    pub fn allows_if_active(&self, port: u16, profile: Profile) -> bool {
        Rule {
            active: true,
            ..self.clone()
        }
        .allows(port, profile)
    }

    /// True when the rule blocks TCP `port` in `profile` (for anyone it applies to).
    pub fn blocks(&self, port: u16, profile: Profile) -> bool {
        self.action == Action::Block && self.matches_tcp_in(port, profile)
    }
}

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// SYSTEM, the local store.
    Local,
    /// SOFTWARE `Policies`, Group Policy.
    Policy,
}

/// One profile's state, as Windows would apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileVerdict {
    /// The profile.
    pub profile: Profile,
    /// The firewall is on in this profile (policy `EnableFirewall` over local; on when unset).
    pub enabled: bool,
    /// Local rules are ignored (policy `AllowLocalPolicyMerge = 0`).
    pub local_ignored: bool,
    /// An effective rule allowing TCP to the port: (store, id).
    pub allowed_by: Option<(Store, String)>,
    /// An effective rule blocking it: (store, id).
    pub blocked_by: Option<(Store, String)>,
}

impl ProfileVerdict {
    /// True when RDP gets through in this profile.
    pub fn rdp_passes(&self) -> bool {
        !self.enabled || (self.allowed_by.is_some() && self.blocked_by.is_none())
    }
}

/// Inputs for one profile's decision.
pub struct ProfileSettings {
    /// Local `EnableFirewall`.
    pub local_enabled: Option<u32>,
    /// Policy `EnableFirewall`.
    pub policy_enabled: Option<u32>,
    /// Policy `AllowLocalPolicyMerge`.
    pub policy_merge: Option<u32>,
}

/// Decide one profile: which rules apply and whether TCP `port` gets in.
pub fn evaluate(
    profile: Profile,
    settings: &ProfileSettings,
    local: &[Rule],
    policy: &[Rule],
    port: u16,
) -> ProfileVerdict {
    let enabled = settings.policy_enabled.or(settings.local_enabled) != Some(0);
    let local_ignored = settings.policy_merge == Some(0);
    let effective = policy.iter().map(|r| (Store::Policy, r)).chain(
        local
            .iter()
            .filter(|_| !local_ignored)
            .map(|r| (Store::Local, r)),
    );
    let mut allowed_by = None;
    let mut blocked_by = None;
    for (store, r) in effective {
        if blocked_by.is_none() && r.blocks(port, profile) {
            blocked_by = Some((store, r.id.clone()));
        }
        if allowed_by.is_none() && r.allows(port, profile) {
            allowed_by = Some((store, r.id.clone()));
        }
    }
    ProfileVerdict {
        profile,
        enabled,
        local_ignored,
        allowed_by,
        blocked_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any string, including ones built from the grammar's own pieces, parses or is
        /// refused; a parsed rule can be evaluated.
        #[test]
        fn any_rule_string_is_parsed_or_refused_without_panic(
            parts in proptest::collection::vec(prop_oneof![
                Just("v2.31".to_string()), Just("Action=Allow".to_string()), Just("Active=TRUE".to_string()),
                Just("Dir=In".to_string()), Just("LPort=".to_string()), Just("LPort=65535-0".to_string()),
                Just("Protocol=99999999999".to_string()), Just("Profile=Public".to_string()), "[ -~]{0,12}",
            ], 0..12),
        ) {
            let text = parts.join("|");
            if let Some(r) = parse("x", &text) {
                for p in Profile::ALL {
                    let _ = r.allows(3389, p) || r.blocks(0, p) || r.allows_if_active(65535, p);
                }
            }
        }
    }

    const RDP: &str = "v2.33|Action=Allow|Active=TRUE|Dir=In|Protocol=6|Profile=Domain|Profile=Private|Profile=Public|LPort=3389|App=%SystemRoot%\\system32\\svchost.exe|Svc=termservice|Name=@FirewallAPI.dll,-28775|Desc=@FirewallAPI.dll,-28756|EmbedCtxt=@FirewallAPI.dll,-28752|Edge=FALSE|Defer=App|";

    fn rule(text: &str) -> Rule {
        parse("r", text).unwrap()
    }

    #[test]
    fn the_remote_desktop_rule_parses_and_matches_every_profile() {
        let r = rule(RDP);
        assert_eq!(r.action, Action::Allow);
        assert!(r.active && r.inbound);
        assert_eq!(r.protocol, Some(6));
        assert_eq!(r.profiles, Profile::ALL);
        assert_eq!(r.name.as_deref(), Some("@FirewallAPI.dll,-28775"));
        for p in Profile::ALL {
            assert!(r.allows(3389, p));
            assert!(!r.allows(3390, p), "another port");
        }
    }

    #[test]
    fn what_a_rule_leaves_out_means_any_and_what_it_restricts_narrows() {
        // No protocol, profile or port: any.
        assert!(rule("v2.10|Action=Allow|Active=TRUE|Dir=In|").allows(3389, Profile::Public));
        // Inactive, outbound, UDP, another profile, a keyword port, a range, a remote restriction.
        assert!(!rule("v2.10|Action=Allow|Active=FALSE|Dir=In|LPort=3389|")
            .allows(3389, Profile::Public));
        assert!(!rule("v2.10|Action=Allow|Active=TRUE|Dir=Out|LPort=3389|")
            .allows(3389, Profile::Public));
        assert!(!rule("v2.10|Action=Allow|Active=TRUE|Dir=In|Protocol=17|")
            .allows(3389, Profile::Public));
        assert!(
            !rule("v2.10|Action=Allow|Active=TRUE|Dir=In|Profile=Domain|")
                .allows(3389, Profile::Public)
        );
        assert!(
            !rule("v2.10|Action=Allow|Active=TRUE|Dir=In|LPort=RPC|").allows(3389, Profile::Public)
        );
        assert!(
            rule("v2.10|Action=Allow|Active=TRUE|Dir=In|LPort=3000-4000|")
                .allows(3389, Profile::Public)
        );
        assert!(
            !rule("v2.10|Action=Allow|Active=TRUE|Dir=In|RA4=10.0.0.0/8|")
                .allows(3389, Profile::Public)
        );
        // An unreadable protocol matches nothing.
        assert!(!rule("v2.10|Action=Allow|Active=TRUE|Dir=In|Protocol=tcp|")
            .allows(3389, Profile::Public));
    }

    #[test]
    fn strings_without_a_version_are_not_rules() {
        assert!(parse("x", "Action=Allow|Active=TRUE|").is_none());
        assert!(parse("x", "v2|Action=Allow|").is_none());
        assert!(parse("x", "").is_none());
    }

    #[test]
    fn block_wins_policy_overrides_and_merge_off_drops_local_rules() {
        let allow = vec![rule(RDP)];
        let block = vec![rule(
            "v2.30|Action=Block|Active=TRUE|Dir=In|Protocol=6|LPort=3389|",
        )];
        let on = ProfileSettings {
            local_enabled: Some(1),
            policy_enabled: None,
            policy_merge: None,
        };
        assert!(evaluate(Profile::Public, &on, &allow, &[], 3389).rdp_passes());
        let v = evaluate(Profile::Public, &on, &allow, &block, 3389);
        assert!(!v.rdp_passes());
        assert_eq!(v.blocked_by.unwrap().0, Store::Policy);
        let no_merge = ProfileSettings {
            policy_merge: Some(0),
            ..on
        };
        let v = evaluate(Profile::Public, &no_merge, &allow, &[], 3389);
        assert!(v.local_ignored && !v.rdp_passes());
        // Policy switching the profile off lets everything through, whatever local says.
        let off = ProfileSettings {
            local_enabled: Some(1),
            policy_enabled: Some(0),
            policy_merge: None,
        };
        assert!(evaluate(Profile::Public, &off, &[], &[], 3389).rdp_passes());
    }
}
