//! The part of a spoke apiserver that a push uses, in memory, for simulated spokes: discovery of `v1`, and
//! ConfigMaps that can be applied, read, listed by label, watched (a watch stays open and quiet) and
//! deleted. Each simulated spoke holds its own, so that the controller sees 1,000 clusters that each keep
//! what was applied to them, and its drift watches list exactly that back, as from a real apiserver.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use http::{Method, StatusCode};
use serde_json::{json, Value};

/// What one answer is: a whole JSON body, or a watch that stays open until the caller goes away.
pub enum Answer {
    Json(StatusCode, Vec<u8>),
    Watch,
}

/// One spoke's ConfigMaps, by "namespace/name".
#[derive(Default)]
pub struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    /// The last resourceVersion handed out.
    version: AtomicU64,
    /// Requests answered, writes among them: what a push cost this spoke.
    pub requests: AtomicU64,
    pub writes: AtomicU64,
}

const DISCOVERY: &str = r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"v1","resources":[{"name":"configmaps","singularName":"configmap","namespaced":true,"kind":"ConfigMap","verbs":["create","delete","deletecollection","get","list","patch","update","watch"],"shortNames":["cm"]}]}"#;

impl FakeApi {
    pub fn answer(&self, method: &Method, path_and_query: &str, body: &[u8]) -> Answer {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        if path == "/api/v1" && method == Method::GET {
            return Answer::Json(StatusCode::OK, DISCOVERY.as_bytes().to_vec());
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["api", "v1", "namespaces", namespace, "configmaps"]) => match param(query, "watch") {
                Some("true" | "1") => Answer::Watch,
                _ => self.list(namespace, param(query, "labelSelector")),
            },
            (&Method::GET, ["api", "v1", "namespaces", namespace, "configmaps", name]) => {
                match self.objects.lock().unwrap_or_else(|e| e.into_inner()).get(&key(namespace, name)) {
                    Some(object) => ok(object),
                    None => not_found(name),
                }
            }
            (&Method::PATCH, ["api", "v1", "namespaces", namespace, "configmaps", name]) => {
                self.apply(namespace, name, body)
            }
            (&Method::DELETE, ["api", "v1", "namespaces", namespace, "configmaps", name]) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                match self.objects.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(namespace, name)) {
                    Some(_) => status(StatusCode::OK, "Success", ""),
                    None => not_found(name),
                }
            }
            _ => status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource"),
        }
    }

    /// Server-side apply with one manager: the applied object is what is kept. A write that changes nothing
    /// keeps its resourceVersion, as the apiserver does.
    fn apply(&self, namespace: &str, name: &str, body: &[u8]) -> Answer {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
        };
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let key = key(namespace, name);
        let existing = objects.get(&key);
        let created = existing.is_none();
        let meta = existing.map(|e| e["metadata"].clone());
        let same = existing
            .is_some_and(|e| e["data"] == object["data"] && e["metadata"]["labels"] == object["metadata"]["labels"]);
        let version = match (&meta, same) {
            (Some(meta), true) => meta["resourceVersion"].clone(),
            _ => Value::String((self.version.fetch_add(1, Ordering::Relaxed) + 1).to_string()),
        };
        let uid = meta.as_ref().map_or_else(|| json!(format!("uid-{namespace}-{name}")), |m| m["uid"].clone());
        let metadata = &mut object["metadata"];
        metadata["namespace"] = json!(namespace);
        metadata["name"] = json!(name);
        metadata["uid"] = uid;
        metadata["resourceVersion"] = version;
        metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let answer = serde_json::to_vec(&object).unwrap_or_default();
        objects.insert(key, object);
        Answer::Json(if created { StatusCode::CREATED } else { StatusCode::OK }, answer)
    }

    fn list(&self, namespace: &str, selector: Option<&str>) -> Answer {
        let selector = selector.map(decode);
        let wanted = selector.as_deref().and_then(|s| s.split_once('='));
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("{namespace}/");
        let items: Vec<&Value> = objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| o)
            .filter(|o| wanted.is_none_or(|(k, v)| o["metadata"]["labels"][k] == *v))
            .collect();
        let version = self.version.load(Ordering::Relaxed).max(1).to_string();
        ok(&json!({
            "kind": "ConfigMapList",
            "apiVersion": "v1",
            "metadata": { "resourceVersion": version },
            "items": items,
        }))
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Percent-decoding of a query value (a label selector's `=` arrives as `%3D`).
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(value: &Value) -> Answer {
    Answer::Json(StatusCode::OK, serde_json::to_vec(value).unwrap_or_default())
}

fn not_found(name: &str) -> Answer {
    status(StatusCode::NOT_FOUND, "NotFound", &format!("configmaps \"{name}\" not found"))
}

fn status(code: StatusCode, reason: &str, message: &str) -> Answer {
    let failure = !code.is_success();
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if failure { "Failure" } else { "Success" },
        "message": message,
        "reason": if failure { reason } else { "" },
        "code": code.as_u16(),
    });
    Answer::Json(code, serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(answer: Answer) -> (StatusCode, Value) {
        match answer {
            Answer::Json(code, body) => (code, serde_json::from_slice(&body).unwrap()),
            Answer::Watch => panic!("a watch"),
        }
    }

    #[test]
    fn applied_objects_are_kept_listed_by_label_and_deleted() {
        let api = FakeApi::default();
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "ns", "labels": {"owner": "x"}}, "data": {"k": "v"}});
        let path = "/api/v1/namespaces/ns/configmaps/a?fieldManager=tether";
        let (code, first) = json_of(api.answer(&Method::PATCH, path, object.to_string().as_bytes()));
        assert_eq!(code, StatusCode::CREATED);
        let (code, again) = json_of(api.answer(&Method::PATCH, path, object.to_string().as_bytes()));
        assert_eq!(code, StatusCode::OK);
        assert_eq!(first["metadata"]["resourceVersion"], again["metadata"]["resourceVersion"], "no change, same rv");
        let (_, listed) =
            json_of(api.answer(&Method::GET, "/api/v1/namespaces/ns/configmaps?labelSelector=owner%3Dx", b""));
        assert_eq!(listed["items"][0]["metadata"]["uid"], first["metadata"]["uid"]);
        let (_, other) =
            json_of(api.answer(&Method::GET, "/api/v1/namespaces/ns/configmaps?labelSelector=owner%3Dy", b""));
        assert_eq!(other["items"].as_array().unwrap().len(), 0);
        assert!(matches!(api.answer(&Method::GET, "/api/v1/namespaces/ns/configmaps?watch=true", b""), Answer::Watch));
        let (code, _) = json_of(api.answer(&Method::DELETE, "/api/v1/namespaces/ns/configmaps/a", b""));
        assert_eq!(code, StatusCode::OK);
        let (code, _) = json_of(api.answer(&Method::GET, "/api/v1/namespaces/ns/configmaps/a", b""));
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(api.is_empty());
    }
}
