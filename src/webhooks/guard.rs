//! The SSRF guard: webhook URLs may not reach loopback, private, link-local, metadata or other
//! special addresses, unless `webhooks.allow_networks` lists the network. Checked when the URL
//! is set and again at connect time on every DNS answer (a name that later resolves inward is
//! refused), and redirects are never followed.

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The one answer for a webhook host name that is refused, whether it does not resolve or
/// resolves to an address the guard refuses.
pub const NAME_REFUSED: &str = "url must resolve to a public address; list its network in \
     webhooks.allow_networks to allow a private one (a name that does not resolve from the \
     gateway is refused the same way)";

#[derive(Clone, Debug, Default)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        || o[0] >= 240)
}

/// The IPv4 address an IPv6 address carries and that decides where it leads: IPv4-mapped
/// (`::ffff:0:0/96`), IPv4-compatible (`::/96`, other than `::` and `::1`), SIIT
/// (`::ffff:0:0:0/96`), 6to4 (`2002::/16`, the IPv4 in bits 16–48) and well-known NAT64
/// (`64:ff9b::/96`). A host that routes these reaches the IPv4 address, so the IPv4 rule
/// judges it.
///
/// Teredo (`2001::/32`) is not one of them: it carries two IPv4 addresses (the relay server's in
/// bits 32–63, the client's, inverted, in the last 32 bits), so neither alone says where a
/// packet ends up; [`public_v6`] refuses it whatever it carries.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |a: u16, b: u16| Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let prefix96 = |p: [u16; 6]| s[..6] == p;
    if prefix96([0; 6]) && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(low(s[6], s[7]));
    }
    if prefix96([0, 0, 0, 0, 0xffff, 0]) || prefix96([0x64, 0xff9b, 0, 0, 0, 0]) {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

/// The parts of the IETF protocol assignments block (`2001::/23`) that IANA's special-purpose
/// registry marks globally reachable: the PCP, TURN and DNS-SD SRP anycast addresses
/// (`2001:1::1`–`3`), AMT (`2001:3::/32`) and AS112-v6 (`2001:4:112::/48`). The rest of the
/// block is refused: Teredo (`2001::/32`), benchmarking (`2001:2::/48`), and the ORCHID (v1
/// `2001:10::/28`, v2 `2001:20::/28`) and drone DET (`2001:30::/28`) blocks, which are
/// cryptographic identifiers rather than locators (RFC 7343, RFC 9374): only a local overlay
/// routes them, so no partner's webhook is reached at one.
fn reachable_ietf_assignment(s: [u16; 8]) -> bool {
    (s[..7] == [0x2001, 1, 0, 0, 0, 0, 0] && (1..=3).contains(&s[7]))
        || s[1] == 3
        || (s[1] == 4 && s[2] == 0x112)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside some sites)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation (3fff::/20)
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: local-use 64:ff9b:1::/48 and the rest
        || (s[..3] == [0x100, 0, 0] && s[3] <= 1) // discard-only 100::/64, dummy 100:0:0:1::/64
        || (s[0] == 0x2001 && s[1] < 0x200 && !reachable_ietf_assignment(s)) // 2001::/23, Teredo
        || s[0] == 0x5f00) // SRv6 segment identifiers (5f00::/16)
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard {
            allow: Arc::new(allow),
        }
    }

    /// True when a webhook may connect to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => public_v4(v4),
            IpAddr::V6(v6) => public_v6(v6),
        }
    }

    /// Checks a URL when it is set: http(s), a host, and every address it resolves to allowed.
    pub async fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("url is not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("url must be http:// or https://".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("url must not contain credentials".into());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "url has no host".to_string())?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !self.allows(ip) {
                return Err(format!(
                    "url host {ip} is a loopback, private, link-local or reserved address; list \
                     its network in webhooks.allow_networks to allow it"
                ));
            }
            return Ok(url);
        }
        // The answer goes to a partner: a name that does not resolve and one that resolves
        // inward get the very same message, so it never tells whether a name exists on the
        // gateway's network, what it resolves to, nor the resolver's own error (that would map
        // the LAN's DNS).
        let refused = || NAME_REFUSED.to_string();
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::debug!(host, error = %e, "webhook host does not resolve");
                return Err(refused());
            }
        };
        if addrs.is_empty() {
            tracing::debug!(host, "webhook host resolves to no address");
            return Err(refused());
        }
        if let Some(bad) = addrs.iter().find(|a| !self.allows(a.ip())) {
            tracing::debug!(host, ip = %bad.ip(), "webhook host refused");
            return Err(refused());
        }
        Ok(url)
    }

    /// Refuses a URL whose host is an IP literal the guard does not allow (names are checked
    /// by the resolver).
    pub fn check_literal(&self, url: &Url) -> Result<(), String> {
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_matches(|c| c == '[' || c == ']');
        match host.parse::<IpAddr>() {
            Ok(ip) if !self.allows(ip) => Err(format!("address {ip} is not allowed")),
            _ => Ok(()),
        }
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            // As when the URL is set: the recorded error (shown to the partner) is the same
            // whether the name stopped resolving or now resolves inward.
            let found: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    tracing::debug!(host, error = %e, "webhook host does not resolve");
                    vec![]
                }
            };
            let ok: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| guard.allows(a.ip()))
                .collect();
            if ok.is_empty() {
                let msg = format!("{host} does not resolve to an address the SSRF guard allows");
                return Err(msg.into());
            }
            let addrs: Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_refused_unless_allowed() {
        let g = Guard::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!g.allows(bad.parse().unwrap()), "{bad} allowed");
        }
        for good in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(g.allows(good.parse().unwrap()), "{good} refused");
        }
        let lan = Guard::new(vec!["192.168.0.0/16".parse().unwrap()]);
        assert!(lan.allows("192.168.1.1".parse().unwrap()));
        assert!(!lan.allows("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_addresses_carrying_an_ipv4_are_judged_by_that_ipv4() {
        let g = Guard::default();
        for bad in [
            "::127.0.0.1",          // IPv4-compatible
            "::10.0.0.1",           // IPv4-compatible, private
            "::169.254.169.254",    // IPv4-compatible, metadata
            "::ffff:0:7f00:1",      // SIIT 127.0.0.1
            "::ffff:0:a9fe:a9fe",   // SIIT 169.254.169.254
            "2002:7f00:1::",        // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",    // 6to4 of 169.254.169.254
            "2002:c0a8:101::",      // 6to4 of 192.168.1.1
            "64:ff9b::7f00:1",      // well-known NAT64 of 127.0.0.1
            "64:ff9b::a00:1",       // well-known NAT64 of 10.0.0.1
            "64:ff9b:1::5db8:d822", // local-use NAT64, whatever it carries
            "fec0::1",              // site-local
            "feff::1",              // site-local, last block
        ] {
            assert!(!g.allows(bad.parse().unwrap()), "{bad} allowed");
        }
        for good in [
            "::93.184.216.34",
            "::ffff:0:5db8:d822",
            "2002:5db8:d822::1",
            "64:ff9b::5db8:d822",
        ] {
            assert!(g.allows(good.parse().unwrap()), "{good} refused");
        }
        // 0.0.0.2 is in 0.0.0.0/8: refused inside ::/96 as well.
        assert!(!g.allows("::2".parse().unwrap()));
        // The allow list still wins for the IPv6 form itself.
        let lo = Guard::new(vec!["2002:7f00::/24".parse().unwrap()]);
        assert!(lo.allows("2002:7f00:1::".parse().unwrap()));
    }

    /// Teredo carries a relay's IPv4 and the client's (inverted): neither judges it, it is
    /// refused whatever it carries, unless the allow list covers the Teredo address itself.
    #[test]
    fn teredo_is_refused_whatever_it_carries() {
        let g = Guard::default();
        for bad in [
            "2001:0:5db8:d822:0:0:80ff:fffe", // server 93.184.216.34, client 127.0.0.1
            "2001:0:5db8:d822::f5ff:fffe",    // client 10.0.0.1
            "2001:0:7f00:1::a2b7:1e2f",       // server 127.0.0.1
            "2001:0:5db8:d822:0:0:a247:27dd", // client 93.184.216.34: still refused
            "2001::1",
        ] {
            assert!(!g.allows(bad.parse().unwrap()), "{bad} allowed");
        }
        // The client's address is 127.0.0.1 once un-inverted: allowing loopback does not allow
        // the Teredo form; allowing the Teredo prefix does.
        let lo = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!lo.allows("2001:0:5db8:d822::80ff:fffe".parse().unwrap()));
        let teredo = Guard::new(vec!["2001::/32".parse().unwrap()]);
        assert!(teredo.allows("2001:0:5db8:d822::80ff:fffe".parse().unwrap()));
    }

    /// IANA's special-purpose blocks that are not globally reachable are refused; its globally
    /// reachable parts of 2001::/23 are not.
    #[test]
    fn special_purpose_ipv6_blocks_are_refused() {
        let g = Guard::default();
        for bad in [
            "100::",                    // discard-only
            "100::ffff:ffff:ffff:ffff", // discard-only, last
            "100:0:0:1::1",             // dummy prefix
            "2001:2::1",                // benchmarking
            "2001:10::1",               // ORCHID (deprecated)
            "2001:1f:ffff::1",          // ORCHID, last
            "2001:20::1",               // ORCHIDv2
            "2001:2f::1",               // ORCHIDv2, last
            "2001:30::1",               // drone DETs
            "2001:1::4",                // IETF protocol assignments, unassigned
            "2001:1ff::1",              // 2001::/23, last
            "3fff::1",                  // documentation
            "3fff:fff::1",              // documentation, last
            "5f00::1",                  // SRv6 SIDs
        ] {
            assert!(!g.allows(bad.parse().unwrap()), "{bad} allowed");
        }
        for good in [
            "2001:1::1",         // PCP anycast
            "2001:1::2",         // TURN anycast
            "2001:1::3",         // DNS-SD SRP anycast
            "2001:3::1",         // AMT
            "2001:4:112::1",     // AS112-v6
            "2001:200::1",       // just past 2001::/23
            "100:0:0:2::1",      // past the discard and dummy blocks
            "3fff:1000::1",      // past 3fff::/20
            "2620:4f:8000::1",   // AS112 direct delegation
            "2a00:1450:4001::1", // an ordinary global unicast address
        ] {
            assert!(g.allows(good.parse().unwrap()), "{good} refused");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_when_set() {
        let g = Guard::default();
        assert!(g.check_url("http://127.0.0.1:9/hook").await.is_err());
        assert!(g.check_url("http://localhost/hook").await.is_err());
        // A name that resolves inward and one that does not resolve: one answer.
        assert_eq!(
            g.check_url("http://localhost/hook").await.unwrap_err(),
            NAME_REFUSED
        );
        assert_eq!(
            g.check_url("http://no-such-host.invalid/hook")
                .await
                .unwrap_err(),
            NAME_REFUSED
        );
        assert!(g.check_url("ftp://93.184.216.34/").await.is_err());
        assert!(g.check_url("http://[::1]/").await.is_err());
        assert!(g.check_url("https://93.184.216.34/hook").await.is_ok());
        let lo = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(lo.check_url("http://127.0.0.1:9/hook").await.is_ok());
    }
}
