//! `/clusters/<cluster>/<Kubernetes API path>` to (cluster, path). The path is checked segment by segment
//! after percent-decoding, so `..` in any spelling can never walk from one cluster's prefix into another's.
use http::Uri;
use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub cluster: String,
    /// Path and query to request on the spoke, always starting with `/`.
    pub path_and_query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path must start with /clusters/<cluster>/")]
    NotClusterPath,
    #[error("invalid cluster name {0:?}")]
    BadCluster(String),
    #[error("the path contains a dot segment or an encoded separator")]
    DotSegment,
}

const PREFIX: &str = "/clusters/";

pub fn parse(uri: &Uri) -> Result<Route, RouteError> {
    let path = uri.path();
    let rest = path.strip_prefix(PREFIX).ok_or(RouteError::NotClusterPath)?;
    let (cluster, spoke_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // A raw DNS label: percent signs are not allowed in it, so no encoded trick can pass.
    if tether_certs::validate_cluster_name(cluster).is_err() {
        return Err(RouteError::BadCluster(cluster.chars().take(80).collect()));
    }
    for segment in spoke_path.split('/') {
        let decoded = percent_decode_str(segment).collect::<Vec<u8>>();
        if decoded == b"." || decoded == b".." || decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
            return Err(RouteError::DotSegment);
        }
    }
    let mut path_and_query = spoke_path.to_string();
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(Route { cluster: cluster.to_string(), path_and_query })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> Result<Route, RouteError> {
        parse(&s.parse::<Uri>().unwrap())
    }

    #[test]
    fn splits_cluster_and_path() {
        let r = route("/clusters/spoke-a/api/v1/namespaces?watch=1&rv=5").unwrap();
        assert_eq!(r.cluster, "spoke-a");
        assert_eq!(r.path_and_query, "/api/v1/namespaces?watch=1&rv=5");
        assert_eq!(route("/clusters/a").unwrap().path_and_query, "/");
        assert_eq!(route("https://hub:1/clusters/a/version").unwrap().path_and_query, "/version");
    }

    #[test]
    fn refuses_traversal_in_every_spelling() {
        for p in [
            "/clusters/a/../b/api",
            "/clusters/a/./api",
            "/clusters/a/%2e%2e/b/api",
            "/clusters/a/%2E%2e/b/api",
            "/clusters/a/.%2e/b/api",
            "/clusters/a/%2e./b/api",
            "/clusters/a/api%2f..%2fb",
            "/clusters/a/api%5c..%5cb",
            "/clusters/a/api/%00",
            "/clusters/a/..",
        ] {
            assert_eq!(route(p), Err(RouteError::DotSegment), "{p}");
        }
    }

    #[test]
    fn refuses_bad_cluster_names() {
        for p in ["/clusters/%61/api", "/clusters/../b/api", "/clusters//api", "/clusters/A/api", "/clusters/a.b/api"] {
            assert!(matches!(route(p), Err(RouteError::BadCluster(_))), "{p}");
        }
        assert_eq!(route("/api/v1/pods"), Err(RouteError::NotClusterPath));
        assert_eq!(route("/clustersx/a"), Err(RouteError::NotClusterPath));
    }

    #[test]
    fn allows_names_with_dots_inside_segments() {
        assert!(route("/clusters/a/apis/apps/v1/namespaces/x/deployments/my..app").is_ok());
        assert!(route("/clusters/a/api/v1/namespaces/x/configmaps/a.b").is_ok());
    }
}
