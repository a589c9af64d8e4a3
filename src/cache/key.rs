//! Cache keys.
//!
//! The primary key is `site NUL path[?query]`: the site name (not the Host header, so every host
//! name of a site shares one cache) and the request target, with the query kept, sorted or
//! dropped as the site says. Keys are prefix-comparable, which is what purge by prefix relies on.
//! Request headers that select a variant (the response's `Vary` plus the site's `cache_key.headers`)
//! form the secondary key, held by `entry`.
//!
//! Hazard: anything that changes the response but is left out of the key poisons the cache for
//! every user of the site; headers belong in the secondary key, never silently ignored.

use crate::config::QueryKey;

/// Separates the site name from the path in a primary key.
pub(crate) const SEP: char = '\0';

/// The primary key for a request target of a site.
pub(crate) fn primary(site: &str, path: &str, query: Option<&str>, mode: QueryKey) -> String {
    let mut key = String::with_capacity(site.len() + path.len() + query.map_or(0, str::len) + 2);
    primary_into(&mut key, site, path, query, mode);
    key
}

/// [`primary`], written into `key` (a buffer on the stack, where the key is only looked with).
pub(crate) fn primary_into(
    key: &mut impl std::fmt::Write,
    site: &str,
    path: &str,
    query: Option<&str>,
    mode: QueryKey,
) {
    // Neither `String` nor the edge's line buffers fail a write.
    let _ = key.write_str(site);
    let _ = key.write_char(SEP);
    let _ = key.write_str(if path.is_empty() { "/" } else { path });
    match (query, mode) {
        (None, _) | (_, QueryKey::Ignore) => {}
        (Some(q), QueryKey::Keep) => {
            let _ = key.write_char('?');
            let _ = key.write_str(q);
        }
        (Some(q), QueryKey::Sort) => {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            let _ = key.write_char('?');
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    let _ = key.write_char('&');
                }
                let _ = key.write_str(p);
            }
        }
    }
}

/// The key prefix covering every object of `site` whose path starts with `path_prefix`.
pub(crate) fn prefix(site: &str, path_prefix: &str) -> String {
    let mut key = String::with_capacity(site.len() + path_prefix.len() + 1);
    key.push_str(site);
    key.push(SEP);
    key.push_str(path_prefix);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_modes() {
        assert_eq!(
            primary("s", "/a", Some("b=1&a=2"), QueryKey::Keep),
            "s\0/a?b=1&a=2"
        );
        assert_eq!(
            primary("s", "/a", Some("b=1&a=2"), QueryKey::Sort),
            "s\0/a?a=2&b=1"
        );
        assert_eq!(primary("s", "/a", Some("b=1"), QueryKey::Ignore), "s\0/a");
        assert_eq!(primary("s", "", None, QueryKey::Keep), "s\0/");
        assert!(primary("s", "/img/x.png", None, QueryKey::Keep).starts_with(&prefix("s", "/img/")));
    }
}
