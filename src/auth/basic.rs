//! The `Authorization` header as HTTP Basic (RFC 7617): what `docker login`,
//! `skopeo --creds`, podman and a containerd `hosts.toml` header send. The
//! password stays in this value; nothing here formats it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A user and password from a Basic header. `Debug` leaves the password out.
pub struct BasicCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredentials({}, <redacted>)", self.user)
    }
}

/// Why a header is not usable Basic credentials; each says so without
/// repeating the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicError {
    /// Another scheme (Bearer, Digest …): berth challenges with Basic only.
    NotBasic,
    Malformed,
    /// `Basic` of an empty user: what podman sends with no login for berth.
    NoUser,
}

impl BasicError {
    pub fn reason(self) -> &'static str {
        match self {
            BasicError::NotBasic => "the Authorization header is not Basic, the only scheme berth accepts",
            BasicError::Malformed => "the Basic Authorization header is not base64 of user:password",
            BasicError::NoUser => "the Basic Authorization header names no user: the client has no login for berth",
        }
    }
}

pub fn parse(header: &str) -> Result<BasicCredentials, BasicError> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::NotBasic);
    }
    let decoded = STANDARD.decode(token.trim()).map_err(|_| BasicError::Malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::Malformed)?;
    if user.is_empty() {
        return Err(BasicError::NoUser);
    }
    Ok(BasicCredentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    #[test]
    fn parses_basic() {
        let c = parse(&basic("alice:pa:ss word")).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pa:ss word"));
        assert!(!format!("{c:?}").contains("pa:ss"));
        let c = parse(&format!("basic  {}", STANDARD.encode("bob:"))).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", ""));
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(parse("Bearer abc").unwrap_err(), BasicError::NotBasic);
        assert_eq!(parse("").unwrap_err(), BasicError::NotBasic);
        assert_eq!(parse("Basic !!!").unwrap_err(), BasicError::Malformed);
        assert_eq!(parse(&basic("no-colon")).unwrap_err(), BasicError::Malformed);
        assert_eq!(parse(&basic(":pw")).unwrap_err(), BasicError::NoUser);
        assert_eq!(parse(&basic(":")).unwrap_err(), BasicError::NoUser);
        assert_eq!(parse("Basic").unwrap_err(), BasicError::Malformed);
    }
}
