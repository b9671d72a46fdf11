//! Where Granary may connect when a user or an admin gives it a URL (an `http(s)` file source, a
//! webhook): the allowed schemes, the allowed hosts, and which internal addresses (loopback,
//! link-local instance metadata, private ranges) are reachable at all. In the cloud no internal address
//! is; on one machine every one is, since sources and webhooks there live on 127.0.0.1.
//!
//! The rules are pure: [`OutboundPolicy::check_url`] runs before any connection, and
//! [`OutboundPolicy::check_addr`] on every address a host name resolves to, so the connection can go to
//! an address that was checked (the HTTP client's resolver is built on it) and every redirect is
//! checked again.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The outbound rules, from `GRANARY_OUTBOUND_SCHEMES`, `GRANARY_OUTBOUND_HOSTS` and
/// `GRANARY_OUTBOUND_INTERNAL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Lower-case schemes a URL may use.
    pub schemes: Vec<String>,
    /// The hosts a URL may name: exact names or IP literals, or `*.suffix` for any name under the
    /// suffix; `None` for any host.
    pub hosts: Option<Vec<String>>,
    /// The internal networks that may be reached anyway; `None` for all of them (one machine).
    pub internal: Option<Vec<IpNet>>,
}

impl Default for OutboundPolicy {
    /// One machine's: `http` and `https`, any host, any address.
    fn default() -> Self {
        Self { schemes: vec!["http".into(), "https".into()], hosts: None, internal: None }
    }
}

/// A list setting: unset or `*` for any (`None`), otherwise its comma-separated items (none when empty).
fn list(value: Option<&str>) -> Option<Vec<String>> {
    let value = value?;
    if value.trim() == "*" {
        return None;
    }
    Some(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_ascii_lowercase).collect())
}

impl OutboundPolicy {
    /// The policy from the three settings' values (`None` when unset); a value that is not a scheme
    /// list, host list or list of networks is an error naming the variable and the item.
    pub fn parse(schemes: Option<&str>, hosts: Option<&str>, internal: Option<&str>) -> Result<Self, String> {
        let schemes = match list(schemes) {
            None => Self::default().schemes,
            Some(s) => s,
        };
        if let Some(bad) = schemes.iter().find(|s| !matches!(s.as_str(), "http" | "https")) {
            return Err(format!("GRANARY_OUTBOUND_SCHEMES: {bad:?} is not http or https"));
        }
        // A fully qualified name's final dot names the same host: compared without it.
        let hosts = list(hosts).map(|h| h.into_iter().map(|h| h.trim_end_matches('.').to_owned()).collect::<Vec<_>>());
        if let Some(bad) = hosts.iter().flatten().find(|h| h.is_empty() || h.contains(['/', ':', ' ']) && h.parse::<IpAddr>().is_err()) {
            return Err(format!("GRANARY_OUTBOUND_HOSTS: {bad:?} is not a host name, an IP address or *.domain"));
        }
        let internal = match list(internal) {
            None => None,
            Some(items) => Some(
                items
                    .iter()
                    .map(|n| {
                        n.parse::<IpNet>()
                            .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                            .map_err(|_| format!("GRANARY_OUTBOUND_INTERNAL: {n:?} is not a network (10.1.0.0/16) or an address"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self { schemes, hosts, internal })
    }

    /// Whether `url` may be fetched, before anything is resolved or connected: its scheme, its host
    /// against the allowed hosts, and, when the host is an IP address, that address.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !self.schemes.iter().any(|s| s == url.scheme()) {
            return Err(format!("scheme {}:// is not allowed (GRANARY_OUTBOUND_SCHEMES: {})", url.scheme(), self.schemes.join(", ")));
        }
        let (name, literal) = match url.host() {
            None => return Err("the URL names no host".into()),
            Some(url::Host::Domain(d)) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
        };
        if let Some(hosts) = &self.hosts {
            let allowed = hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.'),
                None => *h == name || h.parse::<IpAddr>().ok().zip(literal).is_some_and(|(a, b)| a == b),
            });
            if !allowed {
                return Err(format!("host {name} is not one Granary may connect to (GRANARY_OUTBOUND_HOSTS)"));
            }
        }
        match literal {
            Some(ip) => self.check_addr(&name, ip),
            None => Ok(()),
        }
    }

    /// Whether `ip`, an address of `host`, may be connected to: any public address; an internal one
    /// only when it lies in an allowed internal network.
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let Some(kind) = internal_kind(ip) else { return Ok(()) };
        match &self.internal {
            None => Ok(()),
            Some(allowed) if allowed.iter().any(|n| n.contains(&ip) || unmapped(ip).is_some_and(|v4| n.contains(&IpAddr::V4(v4)))) => {
                Ok(())
            }
            Some(_) => Err(format!("{host} is {ip}, a {kind} address Granary may not connect to (GRANARY_OUTBOUND_INTERNAL)")),
        }
    }
}

/// The IPv4 address an IPv6 one carries (IPv4-mapped, IPv4-compatible, NAT64 or 6to4), which is where
/// a packet to it ends up.
fn unmapped(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(low); // IPv4-compatible (deprecated, still routed by some stacks)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low); // NAT64
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8)); // 6to4
    }
    None
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    if let Some(v4) = unmapped(ip) {
        return internal_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (instance metadata)")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 0 || ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (o[0], o[1], o[2]) == (192, 0, 0) || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) || ip.is_documentation() {
        Some("special-purpose")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("reserved")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local (instance metadata)")
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Some("private")
    } else if (s[0], s[1], s[2]) == (0x64, 0xff9b, 1) {
        // NAT64 for local use (RFC 8215): the operator's own translator, to any IPv4 address
        // including internal ones, embedded at a place the prefix length decides.
        Some("local NAT64")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (s[0], s[1]) == (0x2001, 0xdb8) || (s[0], s[1]) == (0x2001, 0) {
        Some("special-purpose")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> OutboundPolicy {
        OutboundPolicy::parse(None, None, Some("")).unwrap()
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn internal_addresses_are_recognised_in_every_spelling() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1:a9fe:a9:fe00::",
            "2002:7f00:1::",
            "ff02::1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(internal_kind(ip).is_some(), "{internal} is internal");
            assert!(cloud().check_addr("h", ip).is_err(), "{internal} refused in the cloud");
            assert!(OutboundPolicy::default().check_addr("h", ip).is_ok(), "{internal} allowed on one machine");
        }
        for public in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "2a00:1450::1", "::ffff:8.8.8.8"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(internal_kind(ip), None, "{public} is public");
            assert!(cloud().check_addr("h", ip).is_ok());
        }
    }

    #[test]
    fn literal_hosts_are_checked_before_any_connection_in_every_spelling() {
        for refused in [
            "http://127.0.0.1:9/x",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
        ] {
            let e = cloud().check_url(&url(refused)).unwrap_err();
            assert!(e.contains("may not connect"), "{refused}: {e}");
        }
        assert!(cloud().check_url(&url("https://data.example.org/f.tif")).is_ok(), "names are checked once resolved");
        assert!(cloud().check_url(&url("ftp://data.example.org/f")).unwrap_err().contains("scheme ftp"));
    }

    #[test]
    fn allowed_hosts_and_networks_are_configurable() {
        let p =
            OutboundPolicy::parse(Some("https"), Some("data.example.org, *.mirror.example.net, 10.1.2.3"), Some("10.1.0.0/16, 127.0.0.1"))
                .unwrap();
        assert!(p.check_url(&url("https://data.example.org/a")).is_ok());
        assert!(p.check_url(&url("https://DATA.example.org./a")).is_ok(), "case and trailing dot");
        assert!(p.check_url(&url("https://eu.mirror.example.net/a")).is_ok());
        assert!(p.check_url(&url("https://mirror.example.net/a")).is_err(), "*.suffix needs a label before it");
        assert!(p.check_url(&url("https://evilmirror.example.net/a")).is_err());
        assert!(p.check_url(&url("https://data.example.org.evil.invalid/a")).is_err());
        assert!(p.check_url(&url("http://data.example.org/a")).unwrap_err().contains("scheme http"));
        assert!(p.check_url(&url("https://10.1.2.3/a")).is_ok(), "listed, and in an allowed network");
        assert!(p.check_addr("x", "10.1.200.1".parse().unwrap()).is_ok());
        assert!(p.check_addr("x", "::ffff:10.1.200.1".parse().unwrap()).is_ok(), "the mapped form of an allowed address");
        assert!(p.check_addr("x", "10.2.0.1".parse().unwrap()).is_err());
        assert!(p.check_addr("x", "127.0.0.2".parse().unwrap()).is_err());
        assert!(p.check_addr("x", "127.0.0.1".parse().unwrap()).is_ok());
        // An entry written with the final dot of a fully qualified name names the same host.
        let dotted = OutboundPolicy::parse(None, Some("data.example.org., *.mirror.example.net."), None).unwrap();
        assert!(dotted.check_url(&url("https://data.example.org/a")).is_ok());
        assert!(dotted.check_url(&url("https://eu.mirror.example.net./a")).is_ok());
        assert!(dotted.check_url(&url("https://other.example.org/a")).is_err());
    }

    #[test]
    fn wrong_settings_name_the_variable_and_the_item() {
        assert!(OutboundPolicy::parse(Some("http,ftp"), None, None).unwrap_err().contains("GRANARY_OUTBOUND_SCHEMES: \"ftp\""));
        assert!(OutboundPolicy::parse(None, Some("a.org,http://b.org"), None).unwrap_err().contains("GRANARY_OUTBOUND_HOSTS"));
        assert!(OutboundPolicy::parse(None, None, Some("10.0.0.0/33")).unwrap_err().contains("GRANARY_OUTBOUND_INTERNAL: \"10.0.0.0/33\""));
        assert_eq!(OutboundPolicy::parse(None, Some("*"), Some("*")).unwrap(), OutboundPolicy::default());
    }
}
