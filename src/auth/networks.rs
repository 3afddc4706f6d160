//! Client networks (`[auth] allow_networks`): CIDR parsing and matching of a
//! client address. Pure; an IPv4 client that reached a dual-stack listener
//! shows up as an IPv4-mapped IPv6 address (`::ffff:10.0.0.7`) and still
//! matches the IPv4 CIDRs an operator wrote.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One allowed network: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single
/// address (`10.0.0.7`, taken as `/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

impl Network {
    /// Parse a CIDR or a bare address. Host bits below the prefix are
    /// dropped (`10.0.0.1/8` is `10.0.0.0/8`), as routers read it.
    pub fn parse(text: &str) -> Result<Network, String> {
        let text = text.trim();
        if let Ok(net) = IpNet::from_str(text) {
            return Ok(Network(net.trunc()));
        }
        match IpAddr::from_str(text) {
            Ok(addr) => Ok(Network(IpNet::from(addr))),
            Err(_) => Err(format!(
                "{text:?} is not a network like 10.0.0.0/8, fd00::/8 or an address"
            )),
        }
    }

    /// Whether `client` is in this network, an IPv4-mapped IPv6 client
    /// counting as its IPv4 address.
    pub fn contains(&self, client: IpAddr) -> bool {
        self.0.contains(&client) || self.0.contains(&canonical(client))
    }
}

/// Whether any of `networks` contains `client`.
pub fn any_contains(networks: &[Network], client: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(client))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address as it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.1/8", "10.200.0.1", true),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1", "::1", true),
            ("::1/128", "127.0.0.1", false),
            // IPv4-mapped IPv6 clients match IPv4 CIDRs.
            ("10.0.0.0/8", "::ffff:10.0.0.7", true),
            ("10.0.0.0/8", "::ffff:11.0.0.7", false),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            // ... and a mapped CIDR still matches them as written.
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.7", true),
            // An IPv4 CIDR never matches a plain IPv6 address.
            ("0.0.0.0/0", "2001:db8::1", false),
        ];
        for (net, client, want) in table {
            let n = Network::parse(net).unwrap();
            assert_eq!(n.contains(ip(client)), *want, "{net} contains {client}");
        }
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "fd00::/129", "example.com", "10.0.0.0/"] {
            assert!(Network::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn any_of_a_list() {
        let nets: Vec<Network> = ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|n| Network::parse(n).unwrap())
            .collect();
        assert!(any_contains(&nets, ip("fd00::5")));
        assert!(any_contains(&nets, ip("::ffff:10.9.9.9")));
        assert!(!any_contains(&nets, ip("192.0.2.1")));
        assert!(!any_contains(&[], ip("10.0.0.1")));
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
    }
}
