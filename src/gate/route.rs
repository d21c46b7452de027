//! Routing: which Twilio host a request is for (README "Routing"), and the refusals that keep the
//! sidecar from ever being an open proxy.
//!
//! The target host is, in order: the host of an absolute-form request target; the `Host` header
//! (`:authority` in HTTP/2) when it names a Twilio host; a leading path segment naming a Twilio
//! host (`/verify.twilio.com/v2/…`, which is stripped before forwarding); otherwise
//! `upstream.default_host`. Only hosts in `upstream.allowed_hosts` are ever returned, and the
//! upstream address comes from config, never from the request.

use http::request::Parts;
use http::uri::Authority;
use http::{header, Method, Version};

use super::refusal::Refusal;
use crate::config::hosts::{check_allowed_hosts, is_twilio_name, HostNameError};

/// Index of an allowed host in [`Hosts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(u16);

/// `upstream.allowed_hosts`, lower-cased, with stable ids.
#[derive(Debug, Clone)]
pub struct Hosts {
    names: Vec<Box<str>>,
    /// The same names as URI authorities, built once so forwarding never re-parses them.
    authorities: Vec<Authority>,
}

impl Hosts {
    /// Builds the set; names must be valid DNS names under twilio.com.
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Result<Hosts, HostNameError> {
        let names = check_allowed_hosts(names)?;
        let authorities = names
            .iter()
            .map(|n| {
                Authority::try_from(n.as_str()).map_err(|_| HostNameError::NotTwilio(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Hosts {
            names: names.into_iter().map(String::into_boxed_str).collect(),
            authorities,
        })
    }

    /// The id of `name` (ASCII case-insensitive), if allowed.
    pub fn lookup(&self, name: &str) -> Option<HostId> {
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| HostId(i as u16))
    }

    /// The lower-case name of an allowed host.
    pub fn name(&self, id: HostId) -> &str {
        &self.names[id.0 as usize]
    }

    /// The URI authority of an allowed host.
    pub fn authority(&self, id: HostId) -> &Authority {
        &self.authorities[id.0 as usize]
    }

    /// Every allowed host.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

/// How the target host was found; the paging rewrite needs to know the form the app used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    AbsoluteForm,
    HostHeader,
    PathPrefix,
    Default,
    /// Inside a CONNECT tunnel: the host the tunnel was opened to.
    Tunnel,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub struct Route<'r> {
    pub host: HostId,
    /// The raw path to forward (after a stripped host prefix), without the query.
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub source: RouteSource,
}

/// Routing configuration.
#[derive(Debug, Clone)]
pub struct Router {
    pub hosts: Hosts,
    pub default_host: HostId,
}

/// The methods the sidecar forwards; anything else (CONNECT, TRACE, lower-case spellings) is
/// refused before routing.
fn forwarded_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

impl Router {
    /// Decides the target of `req`, or refuses it. `pinned` is the host of the tunnel the
    /// request came through, if any ([`Router::route_pinned`]).
    pub fn route_in<'r>(
        &self,
        req: &'r Parts,
        pinned: Option<HostId>,
    ) -> Result<Route<'r>, Refusal> {
        match pinned {
            Some(host) => self.route_pinned(req, host),
            None => self.route(req),
        }
    }

    /// Decides the target of `req`, or refuses it.
    pub fn route<'r>(&self, req: &'r Parts) -> Result<Route<'r>, Refusal> {
        if !forwarded_method(&req.method) {
            return Err(Refusal::MethodNotAllowed(req.method.to_string()));
        }
        let uri = &req.uri;
        let path = uri.path();
        let query = uri.query();

        let mut host_values = req.headers.get_all(header::HOST).iter();
        let host_header = host_values.next();
        if host_values.next().is_some() {
            return Err(Refusal::BadTarget("more than one Host header".into()));
        }
        let host_header = match host_header {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Refusal::BadTarget("the Host header is not ASCII".into()))?,
            ),
            None => None,
        };

        // In HTTP/1 an authority in the URI means absolute-form; in HTTP/2 it is `:authority`,
        // which plays the role of Host.
        let (absolute, host_like) = match uri.authority() {
            Some(a) if req.version < Version::HTTP_2 => (Some(a.as_str()), host_header),
            Some(a) => {
                if let Some(h) = host_header {
                    if !same_authority_host(h, a.as_str()) {
                        return Err(Refusal::BadTarget(":authority and Host disagree".into()));
                    }
                }
                (None, Some(a.as_str()))
            }
            None => (None, host_header),
        };

        if let Some(authority) = absolute {
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => {
                    return Err(Refusal::BadTarget(
                        "absolute-form targets must use http or https".into(),
                    ))
                }
            }
            let host = authority_host(authority, true)?;
            if let Some(h) = host_header {
                if !same_authority_host(h, authority) {
                    return Err(Refusal::BadTarget(format!(
                        "the absolute-form target names {host} but the Host header disagrees"
                    )));
                }
            }
            let id = self.allowed(host)?;
            return Ok(Route {
                host: id,
                path,
                query,
                source: RouteSource::AbsoluteForm,
            });
        }

        if let Some(value) = host_like {
            let host = authority_host(value, false)?;
            if is_twilio_name(host) {
                let id = self.allowed(host)?;
                return Ok(Route {
                    host: id,
                    path,
                    query,
                    source: RouteSource::HostHeader,
                });
            }
        }

        // `/verify.twilio.com/v2/...`: the first segment names the host.
        let rest = path.strip_prefix('/').unwrap_or(path);
        let (first, remainder) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if first.contains('.') && is_twilio_name(first.trim_end_matches('.')) {
            if first.ends_with('.') {
                return Err(Refusal::BadTarget(format!(
                    "host {first:?} in the path has a trailing dot"
                )));
            }
            let id = self.allowed(first)?;
            return Ok(Route {
                host: id,
                path: remainder,
                query,
                source: RouteSource::PathPrefix,
            });
        }

        Ok(Route {
            host: self.default_host,
            path,
            query,
            source: RouteSource::Default,
        })
    }

    /// Decides the target of a request inside a tunnel opened to `pinned`: always that host.
    /// A `Host`, `:authority` or absolute-form target naming another host is refused, so a
    /// request cannot be checked as one host's and sent to another; no host-prefix form.
    pub fn route_pinned<'r>(&self, req: &'r Parts, pinned: HostId) -> Result<Route<'r>, Refusal> {
        if !forwarded_method(&req.method) {
            return Err(Refusal::MethodNotAllowed(req.method.to_string()));
        }
        let mut host_values = req.headers.get_all(header::HOST).iter();
        let host_header = host_values.next();
        if host_values.next().is_some() {
            return Err(Refusal::BadTarget("more than one Host header".into()));
        }
        let pinned_name = self.hosts.name(pinned);
        let names = host_header
            .map(|v| {
                v.to_str()
                    .map_err(|_| Refusal::BadTarget("the Host header is not ASCII".into()))
            })
            .transpose()?
            .into_iter()
            .chain(req.uri.authority().map(|a| a.as_str()));
        for named in names {
            let (host, port) = split_port(named);
            if named.contains('@')
                || !host.eq_ignore_ascii_case(pinned_name)
                || port.is_some_and(|p| p != "443")
            {
                return Err(Refusal::BadTarget(format!(
                    "this tunnel was opened to {pinned_name}:443; the request names {named:?}"
                )));
            }
        }
        if req.uri.scheme_str().is_some_and(|s| s != "https") {
            return Err(Refusal::BadTarget(
                "inside a tunnel, absolute-form targets must be https".into(),
            ));
        }
        Ok(Route {
            host: pinned,
            path: req.uri.path(),
            query: req.uri.query(),
            source: RouteSource::Tunnel,
        })
    }

    /// The allowed host a `CONNECT host:443` target names. Anything else — another port, no
    /// port, an IP literal, userinfo, a host that is not allowed — is refused before anything
    /// is dialled (nothing ever is: the tunnel ends at the sidecar).
    pub fn connect_target(&self, authority: &str) -> Result<HostId, Refusal> {
        if authority.contains('@') {
            return Err(Refusal::HostNotAllowed(
                "CONNECT targets with userinfo are not accepted".into(),
            ));
        }
        let (host, port) = split_port(authority);
        match port {
            Some("443") => {}
            Some(p) => {
                return Err(Refusal::HostNotAllowed(format!(
                    "CONNECT to port {p:?}: twilio-sidecar tunnels only to port 443 of Twilio hosts"
                )))
            }
            None => return Err(Refusal::HostNotAllowed("CONNECT needs host:443".into())),
        }
        if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            return Err(Refusal::HostNotAllowed(format!(
                "CONNECT to the address {host}: twilio-sidecar tunnels only to Twilio host names"
            )));
        }
        self.allowed(host)
    }

    fn allowed(&self, host: &str) -> Result<HostId, Refusal> {
        self.hosts.lookup(host).ok_or_else(|| {
            if is_twilio_name(host) {
                Refusal::HostNotAllowed(format!(
                    "host {host} is not in the sidecar's upstream.allowed_hosts"
                ))
            } else {
                Refusal::HostNotAllowed(format!(
                    "host {host} is not a Twilio host; twilio-sidecar is not an open proxy"
                ))
            }
        })
    }
}

/// The host part of `host[:port]`, validated. Userinfo and trailing dots are refused; in
/// absolute form only the default ports are accepted, since the upstream port is the sidecar's.
fn authority_host(authority: &str, absolute: bool) -> Result<&str, Refusal> {
    if authority.contains('@') {
        return Err(Refusal::BadTarget(
            "userinfo ('@') in the request target or Host is not accepted".into(),
        ));
    }
    let (host, port) = split_port(authority);
    if host.is_empty() {
        return Err(Refusal::BadTarget("empty host".into()));
    }
    if let Some(port) = port {
        let valid = port.parse::<u16>().is_ok();
        if !valid || (absolute && port != "80" && port != "443") {
            return Err(Refusal::BadTarget(format!(
                "port {port:?} in the request target is not accepted"
            )));
        }
    }
    if is_twilio_name(host.trim_end_matches('.')) && host.ends_with('.') {
        return Err(Refusal::BadTarget(format!(
            "host {host:?} has a trailing dot"
        )));
    }
    Ok(host)
}

pub(crate) fn split_port(authority: &str) -> (&str, Option<&str>) {
    // Byte searches: `str::find` with a char runs a generic searcher, ~200 instructions for
    // a short `Host` (and every request has one). Both bytes are ASCII, so the indices are
    // char boundaries.
    let bytes = authority.as_bytes();
    if bytes.first() == Some(&b'[') {
        // IPv6 literal: never a Twilio host, but parse it so the port does not confuse us.
        return match bytes.iter().position(|&b| b == b']') {
            Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
            None => (authority, None),
        };
    }
    match bytes.iter().rposition(|&b| b == b':') {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    }
}

fn same_authority_host(a: &str, b: &str) -> bool {
    split_port(a).0.eq_ignore_ascii_case(split_port(b).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_split_off_names_and_ipv6_literals() {
        for (authority, host, port) in [
            ("api.twilio.com", "api.twilio.com", None),
            ("api.twilio.com:443", "api.twilio.com", Some("443")),
            ("127.0.0.1:8080", "127.0.0.1", Some("8080")),
            ("host:", "host", Some("")),
            ("[::1]:443", "[::1]", Some("443")),
            ("[::1]", "[::1]", None),
            ("[::1", "[::1", None),
            ("[fe80::1]x", "[fe80::1]", None),
            ("", "", None),
            ("é:1", "é", Some("1")),
        ] {
            assert_eq!(split_port(authority), (host, port), "{authority:?}");
        }
    }

    fn router() -> Router {
        let hosts = Hosts::new(
            [
                "api.twilio.com",
                "verify.twilio.com",
                "api.dublin.ie1.twilio.com",
            ]
            .into_iter(),
        )
        .unwrap();
        Router {
            default_host: hosts.lookup("api.twilio.com").unwrap(),
            hosts,
        }
    }

    fn req(method: &str, target: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn host_of(r: &Router, req: &Parts) -> Result<(String, String, RouteSource), u32> {
        r.route(req)
            .map(|route| {
                (
                    r.hosts.name(route.host).to_string(),
                    route.path.to_string(),
                    route.source,
                )
            })
            .map_err(|e| e.code())
    }

    #[test]
    fn connect_targets_and_pinned_routes() {
        let r = router();
        let api = r.hosts.lookup("api.twilio.com").unwrap();
        assert_eq!(r.connect_target("api.twilio.com:443").unwrap(), api);
        assert_eq!(r.connect_target("API.Twilio.com:443").unwrap(), api);
        for bad in [
            "evil.example:443",
            "api.twilio.com:8443",
            "api.twilio.com",
            "127.0.0.1:443",
            "[::1]:443",
            "api.twilio.com.evil.example:443",
            "user@api.twilio.com:443",
            "monitor.twilio.com:443",
        ] {
            assert_eq!(
                r.connect_target(bad).map_err(|e| e.code()),
                Err(79403),
                "{bad}"
            );
        }
        let ok = |target: &str, host: Option<&str>| {
            let mut b = http::Request::builder().method("GET").uri(target);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            let parts = b.body(()).unwrap().into_parts().0;
            r.route_pinned(&parts, api)
                .map(|route| (route.path.to_string(), route.source))
                .map_err(|e| e.code())
        };
        assert_eq!(
            ok("/2010-04-01/Accounts", Some("api.twilio.com")),
            Ok(("/2010-04-01/Accounts".into(), RouteSource::Tunnel))
        );
        assert!(ok("/x", Some("api.twilio.com:443")).is_ok());
        assert!(ok("/x", None).is_ok());
        assert!(ok("https://api.twilio.com/x", None).is_ok());
        // The host prefix is not a routing form inside a tunnel: the path stays as it is.
        assert_eq!(
            ok("/verify.twilio.com/v2", Some("api.twilio.com"))
                .unwrap()
                .0,
            "/verify.twilio.com/v2"
        );
        for (target, host) in [
            ("/x", Some("verify.twilio.com")),
            ("/x", Some("api.twilio.com:8443")),
            ("/x", Some("evil.example")),
            ("https://verify.twilio.com/x", None),
            ("http://api.twilio.com/x", None),
        ] {
            assert_eq!(ok(target, host), Err(79401), "{target} {host:?}");
        }
    }

    #[test]
    fn routing_order() {
        let r = router();
        let got = host_of(
            &r,
            &req(
                "GET",
                "http://verify.twilio.com/v2/Services",
                &["verify.twilio.com"],
            ),
        )
        .unwrap();
        assert_eq!(
            got,
            (
                "verify.twilio.com".into(),
                "/v2/Services".into(),
                RouteSource::AbsoluteForm
            )
        );
        let got = host_of(&r, &req("GET", "/v2/Services", &["Verify.Twilio.com:443"])).unwrap();
        assert_eq!(got.0, "verify.twilio.com");
        assert_eq!(got.2, RouteSource::HostHeader);
        let got = host_of(
            &r,
            &req(
                "GET",
                "/verify.twilio.com/v2/Services?x=1",
                &["127.0.0.1:8080"],
            ),
        )
        .unwrap();
        assert_eq!(
            got,
            (
                "verify.twilio.com".into(),
                "/v2/Services".into(),
                RouteSource::PathPrefix
            )
        );
        let got = host_of(
            &r,
            &req("GET", "/2010-04-01/Accounts.json", &["localhost:8080"]),
        )
        .unwrap();
        assert_eq!(
            got,
            (
                "api.twilio.com".into(),
                "/2010-04-01/Accounts.json".into(),
                RouteSource::Default
            )
        );
        let got = host_of(&r, &req("GET", "/x", &["api.dublin.ie1.twilio.com"])).unwrap();
        assert_eq!(got.0, "api.dublin.ie1.twilio.com");
        // A non-Twilio Host that merely starts like one falls through to the default.
        let got = host_of(&r, &req("GET", "/x", &["api.twilio.com.evil.example"])).unwrap();
        assert_eq!(got.2, RouteSource::Default);
    }

    #[test]
    fn refusals() {
        let r = router();
        let code = |m: &str, t: &str, h: &[&str]| host_of(&r, &req(m, t, h)).unwrap_err();
        assert_eq!(code("GET", "http://evil.example/x", &[]), 79403);
        assert_eq!(code("GET", "http://lookups.twilio.com/x", &[]), 79403);
        assert_eq!(code("GET", "/x", &["chat.twilio.com"]), 79403);
        assert_eq!(code("GET", "/chat.twilio.com/v2/x", &["localhost"]), 79403);
        assert_eq!(code("GET", "http://u@api.twilio.com/x", &[]), 79401);
        assert_eq!(code("GET", "http://api.twilio.com:8443/x", &[]), 79401);
        assert_eq!(
            code("GET", "http://api.twilio.com/x", &["verify.twilio.com"]),
            79401
        );
        assert_eq!(
            code("GET", "/x", &["api.twilio.com", "verify.twilio.com"]),
            79401
        );
        assert_eq!(code("GET", "/x", &["api.twilio.com."]), 79401);
        assert_eq!(code("GET", "/verify.twilio.com./x", &[]), 79401);
        assert_eq!(code("GET", "ftp://api.twilio.com/x", &[]), 79401);
        assert_eq!(code("get", "/x", &[]), 79405);
        assert_eq!(code("CONNECT", "api.twilio.com:443", &[]), 79405);
        assert_eq!(code("TRACE", "/x", &[]), 79405);
    }
}
