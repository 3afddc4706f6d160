//! The pure parser for everything under `/v2/`. Names contain slashes, so the
//! endpoint is recognised from the end of the path; the name is whatever comes
//! before. Validation of the name and reference happens in the handlers.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Base,
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
    Upload { name: &'a str },
    Unknown,
}

impl<'a> Endpoint<'a> {
    /// The repository and the reference (tag or digest) the request is
    /// about, where it names them.
    pub fn subject(&self) -> Option<(&'a str, Option<&'a str>)> {
        match *self {
            Endpoint::Manifest { name, reference } => Some((name, Some(reference))),
            Endpoint::Blob { name, digest } | Endpoint::Referrers { name, digest } => Some((name, Some(digest))),
            Endpoint::Tags { name } | Endpoint::Upload { name } => Some((name, None)),
            Endpoint::Base | Endpoint::Unknown => None,
        }
    }
}

/// `rest` is the path after `/v2/`.
pub fn parse(rest: &str) -> Endpoint<'_> {
    if rest.is_empty() {
        return Endpoint::Base;
    }
    // (suffix before the last component, constructor) checked in order.
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Endpoint::Tags { name };
    }
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let tail = &rest[i + "/blobs/uploads".len()..];
        if tail.is_empty() || tail.starts_with('/') {
            return Endpoint::Upload { name: &rest[..i] };
        }
    }
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Endpoint::Unknown;
    };
    let Some((name, kind)) = head.rsplit_once('/') else {
        return Endpoint::Unknown;
    };
    match kind {
        "manifests" => Endpoint::Manifest { name, reference: last },
        "blobs" => Endpoint::Blob { name, digest: last },
        "referrers" => Endpoint::Referrers { name, digest: last },
        _ => Endpoint::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Endpoint::*;
        let cases = [
            ("", Base),
            (
                "busybox/manifests/latest",
                Manifest {
                    name: "busybox",
                    reference: "latest",
                },
            ),
            (
                "a/b/c/manifests/sha256:ab",
                Manifest {
                    name: "a/b/c",
                    reference: "sha256:ab",
                },
            ),
            // A repository may itself be called "manifests" or "blobs".
            (
                "x/manifests/manifests/v1",
                Manifest {
                    name: "x/manifests",
                    reference: "v1",
                },
            ),
            (
                "a/blobs/blobs/sha256:00",
                Blob {
                    name: "a/blobs",
                    digest: "sha256:00",
                },
            ),
            (
                "library/busybox/blobs/sha256:ff",
                Blob {
                    name: "library/busybox",
                    digest: "sha256:ff",
                },
            ),
            ("a/b/tags/list", Tags { name: "a/b" }),
            (
                "a/referrers/sha256:1",
                Referrers {
                    name: "a",
                    digest: "sha256:1",
                },
            ),
            ("a/b/blobs/uploads/", Upload { name: "a/b" }),
            ("a/b/blobs/uploads/123-abc", Upload { name: "a/b" }),
            ("a/b/blobs/uploads", Upload { name: "a/b" }),
            ("_catalog", Unknown),
            ("a/things/x", Unknown),
            ("manifests/latest", Unknown),
            (
                "/manifests/latest",
                Manifest {
                    name: "",
                    reference: "latest",
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), want, "{path}");
        }
    }
}
