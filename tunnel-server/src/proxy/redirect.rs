//! Where a spoke's answer may send the caller. A spoke's apiserver writes `Location` relative to its own root,
//! which the caller reaches as `/clusters/<cluster>`: a path, absolute or relative, is resolved as the spoke
//! sees it (dot segments in every spelling included) and then put under that prefix, so no spelling climbs
//! into another cluster's. A Location naming an origin (`scheme:`, `//host`) is refused rather than passed or
//! rewritten: the spoke's own URL is unreachable from outside its network, and any other takes the caller
//! away from the hub with its credentials and, after a 307 or 308, its body. A Location clients may read in
//! different ways (whitespace, controls, backslashes, non-ASCII, encoded separators) is refused too.
//!
//! An upgrade answered with a redirect is refused whatever the Location, as Kubernetes does since
//! CVE-2022-3172 (`RejectForwardingRedirects`): clients of exec and port-forward would follow it with the
//! upgrade, and nothing legitimate redirects one.
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use percent_encoding::percent_decode_str;

/// Why a Location cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("a Location naming another origin")]
    OtherOrigin,
    #[error("a Location that clients may read in different ways")]
    Ambiguous,
    #[error("more than one Location")]
    Several,
}

/// Checks a spoke's response head to a request for `request_path` (the path on the spoke, without the query)
/// of `cluster`, and rewrites its `Location` into the caller's view. An `Err` is the reason to answer 502
/// instead: a redirect of an upgrade, or a redirect the caller must not follow. A Location that cannot be
/// passed on in any other response is dropped, since clients do not follow it there.
pub fn check_response(
    status: StatusCode,
    headers: &mut HeaderMap,
    upgrade: bool,
    cluster: &str,
    request_path: &str,
) -> Result<(), String> {
    if upgrade && status.is_redirection() {
        return Err(format!("answered an upgrade with a redirect ({}), which is not permitted", status.as_u16()));
    }
    let mut locations = headers.get_all(header::LOCATION).iter();
    let Some(first) = locations.next() else { return Ok(()) };
    let rewritten = match locations.next() {
        Some(_) => Err(RedirectError::Several),
        None => rewrite(first.as_bytes(), cluster, request_path),
    };
    match rewritten {
        Ok(location) => {
            let value = HeaderValue::try_from(location).expect("built from visible ASCII");
            headers.insert(header::LOCATION, value);
            Ok(())
        }
        Err(e) if status.is_redirection() => Err(format!("redirected the caller with {e}, which is not permitted")),
        Err(_) => {
            headers.remove(header::LOCATION);
            Ok(())
        }
    }
}

/// `location` as the caller must see it: resolved against `request_path` on the spoke, under
/// `/clusters/<cluster>`.
pub fn rewrite(location: &[u8], cluster: &str, request_path: &str) -> Result<String, RedirectError> {
    // Visible ASCII only: a browser drops tabs and newlines anywhere and reads `\` as `/`, so `/\t/evil` and
    // `/\evil` would be `//evil` to it, while an RFC 3986 parser sees a path.
    if !location.iter().all(|b| b.is_ascii_graphic() && *b != b'\\') {
        return Err(RedirectError::Ambiguous);
    }
    let location = std::str::from_utf8(location).expect("ASCII");
    let (before_fragment, fragment) = split_at(location, '#');
    let (path, query) = split_at(before_fragment, '?');
    if path.starts_with("//") {
        return Err(RedirectError::OtherOrigin);
    }
    // A colon in the first segment is a scheme (`https:`, `javascript:`), or a relative path that RFC 3986
    // does not allow unescaped there and clients would take for one.
    if path.split('/').next().is_some_and(|first| first.contains(':')) {
        return Err(RedirectError::OtherOrigin);
    }
    let merged = if path.is_empty() {
        request_path.to_string()
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        // RFC 3986 §5.2.3: relative to the directory of the request.
        let directory = &request_path[..request_path.rfind('/').map_or(0, |i| i + 1)];
        format!("/{}{path}", directory.trim_start_matches('/'))
    };
    let mut resolved = format!("/clusters/{cluster}{}", remove_dot_segments(&merged)?);
    for (mark, part) in [('?', query), ('#', fragment)] {
        if let Some(part) = part {
            resolved.push(mark);
            resolved.push_str(part);
        }
    }
    Ok(resolved)
}

fn split_at(s: &str, mark: char) -> (&str, Option<&str>) {
    match s.split_once(mark) {
        Some((before, after)) => (before, Some(after)),
        None => (s, None),
    }
}

/// RFC 3986 §5.2.4 on a path that starts with `/`, where a segment is a dot segment whatever its percent
/// encoding (`%2e` is `.` by §6.2.2.2). A segment whose decoding holds a separator or NUL is refused: the
/// hub's router refuses them as well, and a server that decodes them would see other segments.
fn remove_dot_segments(path: &str) -> Result<String, RedirectError> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let decoded: Vec<u8> = percent_decode_str(segment).collect();
        match &decoded[..] {
            b"." => {}
            b".." => {
                kept.pop();
            }
            _ if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) => return Err(RedirectError::Ambiguous),
            _ => {
                kept.push(segment);
                continue;
            }
        }
        // A dot segment at the end leaves the directory it names: `/a/b/..` is `/a/`.
        if last {
            kept.push("");
        }
    }
    Ok(format!("/{}", kept.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(location: &str) -> Result<String, RedirectError> {
        rewrite(location.as_bytes(), "a", "/api/v1/namespaces/x/services/web/proxy")
    }

    #[test]
    fn paths_go_under_the_cluster_prefix() {
        for (location, want) in [
            ("/api/v1/namespaces", "/clusters/a/api/v1/namespaces"),
            ("/", "/clusters/a/"),
            ("/api/v1/pods?watch=1&rv=5", "/clusters/a/api/v1/pods?watch=1&rv=5"),
            ("/x#frag", "/clusters/a/x#frag"),
            ("/x?next=//evil.example#//evil", "/clusters/a/x?next=//evil.example#//evil"),
            // What the apiserver's service proxy answers for `.../proxy`: relative to the request's directory.
            ("proxy/", "/clusters/a/api/v1/namespaces/x/services/web/proxy/"),
            ("./other", "/clusters/a/api/v1/namespaces/x/services/web/other"),
            ("../pods", "/clusters/a/api/v1/namespaces/x/services/pods"),
            (".", "/clusters/a/api/v1/namespaces/x/services/web/"),
            ("", "/clusters/a/api/v1/namespaces/x/services/web/proxy"),
            ("?watch=1", "/clusters/a/api/v1/namespaces/x/services/web/proxy?watch=1"),
            ("./a:b", "/clusters/a/api/v1/namespaces/x/services/web/a:b"),
            // Already prefixed is still relative to the spoke's root: it stays in the same cluster.
            ("/clusters/a/version", "/clusters/a/clusters/a/version"),
            ("/a//b", "/clusters/a/a//b"),
            // Double encoding decodes once to `%2e`, which is a name, not a dot.
            ("/%252e%252e/b", "/clusters/a/%252e%252e/b"),
        ] {
            assert_eq!(rw(location).as_deref(), Ok(want), "{location}");
        }
    }

    #[test]
    fn dot_segments_cannot_climb_out_in_any_spelling() {
        for location in [
            "../../../../../../clusters/b/api",
            "/../clusters/b/api",
            "/api/../../clusters/b/api",
            "/%2e%2e/clusters/b/api",
            "/%2E%2e/clusters/b/api",
            "/.%2e/clusters/b/api",
            "/%2e./clusters/b/api",
            "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/clusters/b/api",
            "/./%2e/../clusters/b/api",
        ] {
            assert_eq!(rw(location).as_deref(), Ok("/clusters/a/clusters/b/api"), "{location}");
        }
        assert_eq!(rw("/..").as_deref(), Ok("/clusters/a/"));
        assert_eq!(rw("/api/v1/..").as_deref(), Ok("/clusters/a/api/"));
        // Removing dots may leave `//` at the start (RFC 3986 §5.2.4's own caveat): the prefix comes first, so
        // the result is never a network-path reference.
        assert_eq!(rw("/.//evil.example/x").as_deref(), Ok("/clusters/a//evil.example/x"));
        assert_eq!(rw("/..//evil.example/x").as_deref(), Ok("/clusters/a//evil.example/x"));
    }

    #[test]
    fn other_origins_are_refused() {
        for location in [
            "https://evil.example/api",
            "HTTPS://evil.example/api",
            "http://127.0.0.1:6443/api",
            // The hub's own address, pointing at another cluster.
            "https://hub.example:8443/clusters/b/api",
            "//evil.example/api",
            "///evil.example/api",
            "////evil.example",
            "https:evil.example",
            "https:/evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "a:b",
            "//",
        ] {
            assert_eq!(rw(location), Err(RedirectError::OtherOrigin), "{location}");
        }
    }

    #[test]
    fn spellings_clients_read_differently_are_refused() {
        for location in [
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "/api\\..\\..\\clusters\\b",
            "/\t/evil.example",
            "/ /evil.example",
            " //evil.example",
            "/x\u{7f}",
            "/caf\u{e9}",
            "/api%2f..%2f..%2fclusters%2fb",
            "/api/%2F%2Fevil.example",
            "/api%5c..%5cb",
            "/api/%00",
        ] {
            assert_eq!(rw(location), Err(RedirectError::Ambiguous), "{location:?}");
        }
        assert_eq!(rewrite(b"/x\r\nSet-Cookie: a=b", "a", "/"), Err(RedirectError::Ambiguous));
        assert_eq!(rewrite(b"/\xff", "a", "/"), Err(RedirectError::Ambiguous));
    }

    fn with_location(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::LOCATION, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn redirects_are_rewritten_or_refused() {
        let mut headers = with_location(&["/api/v1"]);
        assert_eq!(check_response(StatusCode::TEMPORARY_REDIRECT, &mut headers, false, "a", "/x"), Ok(()));
        assert_eq!(headers[header::LOCATION], "/clusters/a/api/v1");

        for bad in [&["https://evil.example/"][..], &["//evil.example"], &["/a", "/b"]] {
            let mut headers = with_location(bad);
            let refused = check_response(StatusCode::PERMANENT_REDIRECT, &mut headers, false, "a", "/x");
            assert!(refused.is_err(), "{bad:?}");
        }
        // Not a redirect: nothing follows the header, so a bad one is dropped and the answer passes.
        let mut headers = with_location(&["https://evil.example/"]);
        assert_eq!(check_response(StatusCode::CREATED, &mut headers, false, "a", "/x"), Ok(()));
        assert!(!headers.contains_key(header::LOCATION));
        let mut headers = with_location(&["/api/v1/namespaces/x"]);
        assert_eq!(check_response(StatusCode::CREATED, &mut headers, false, "a", "/x"), Ok(()));
        assert_eq!(headers[header::LOCATION], "/clusters/a/api/v1/namespaces/x");
        // A redirect without a Location leads nowhere and passes.
        assert_eq!(check_response(StatusCode::FOUND, &mut HeaderMap::new(), false, "a", "/x"), Ok(()));
    }

    #[test]
    fn an_upgrade_is_never_redirected() {
        for status in [301, 302, 303, 307, 308, 300, 304] {
            let status = StatusCode::from_u16(status).unwrap();
            for mut headers in [with_location(&["/exec"]), HeaderMap::new()] {
                assert!(check_response(status, &mut headers, true, "a", "/x").is_err(), "{status}");
            }
        }
        let mut headers = with_location(&["/exec"]);
        assert_eq!(check_response(StatusCode::SWITCHING_PROTOCOLS, &mut headers, true, "a", "/x"), Ok(()));
        assert_eq!(check_response(StatusCode::FORBIDDEN, &mut HeaderMap::new(), true, "a", "/x"), Ok(()));
    }
}
