//! Write keys, as Segment accepts them: HTTP Basic with the write key as the user name (the password is
//! ignored; the SDKs send it empty), or `writeKey` in the JSON body when there is no `Authorization`
//! header. Keys are configured per source (`[[http.write_keys]]`); removing one and restarting the node
//! revokes it.
//!
//! A key is compared with every configured key in time that does not depend on where they differ.

use axum::http::{header, HeaderMap};
use base64::Engine as _;

use super::reply::ApiError;
use crate::config::WriteKey;

/// The configured write keys.
#[derive(Clone)]
pub struct WriteKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for WriteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sources: Vec<&str> = self.keys.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("WriteKeys")
            .field("sources", &sources)
            .finish()
    }
}

/// Whether `a` equals `b`, in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl WriteKeys {
    /// The keys of `[[http.write_keys]]`.
    pub fn new(keys: &[WriteKey]) -> WriteKeys {
        WriteKeys {
            keys: keys
                .iter()
                .map(|k| (k.source.clone(), k.key.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// The source whose key is `key`, if any (every key is compared).
    pub fn source_of(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for (source, k) in &self.keys {
            if same(k, key.as_bytes()) && found.is_none() {
                found = Some(source.as_str());
            }
        }
        found
    }

    /// The source of `key`, or 401 `unauthorized`.
    pub fn check(&self, key: &str) -> Result<String, ApiError> {
        self.source_of(key)
            .map(str::to_owned)
            .ok_or_else(|| ApiError::unauthorized("invalid write key"))
    }
}

/// The write key of an `Authorization: Basic ...` header (its user name), `None` without the header;
/// 401 for another scheme or a header that does not decode.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::unauthorized(
            "Authorization must be Basic with the write key as the user name and an empty password",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, credentials) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    if user.is_empty() {
        return Err(ApiError::unauthorized(
            "the Basic user name (the write key) is empty",
        ));
    }
    Ok(Some(user.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::http::HeaderValue;

    use super::*;

    fn keys() -> WriteKeys {
        WriteKeys::new(&[
            WriteKey {
                source: "web".into(),
                key: "k-web-0123456789abcdef".into(),
            },
            WriteKey {
                source: "ios".into(),
                key: "k-ios-0123456789abcdef".into(),
            },
        ])
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(credentials: &str) -> HeaderMap {
        with_auth(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }

    #[test]
    fn keys_map_to_their_source() {
        let k = keys();
        assert_eq!(k.source_of("k-web-0123456789abcdef"), Some("web"));
        assert_eq!(k.source_of("k-ios-0123456789abcdef"), Some("ios"));
        assert_eq!(k.source_of("k-ios-0123456789abcdeF"), None);
        assert_eq!(k.source_of("k-ios"), None);
        assert_eq!(k.source_of(""), None);
        assert_eq!(k.check("nope").unwrap_err().status.as_u16(), 401);
        assert!(!format!("{k:?}").contains("0123"), "keys are not printed");
    }

    #[test]
    fn basic_auth_as_the_sdks_send_it() {
        assert_eq!(basic_user(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            basic_user(&basic("k-web-0123456789abcdef:")).unwrap(),
            Some("k-web-0123456789abcdef".into())
        );
        // The password is ignored; a header without ':' is the user name alone.
        assert_eq!(
            basic_user(&basic("key:secret")).unwrap(),
            Some("key".into())
        );
        assert_eq!(basic_user(&basic("key")).unwrap(), Some("key".into()));
        assert_eq!(
            basic_user(&with_auth(&format!(
                "basic  {}",
                base64::engine::general_purpose::STANDARD.encode("key:")
            )))
            .unwrap(),
            Some("key".into())
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic Og=="] {
            let err = basic_user(&with_auth(bad)).unwrap_err();
            assert_eq!(err.status.as_u16(), 401, "{bad}");
            assert_eq!(err.code, "unauthorized");
        }
    }
}
