//! Scrubbing: any occurrence of an injected secret in a response's headers or body is replaced
//! with `[REDACTED]` before the Worker sees it, so an echoing upstream cannot hand it back.

use isogate_pool::EgressResponse;
use secrecy::{ExposeSecret, SecretString};

const REDACTED: &[u8] = b"[REDACTED]";

fn replace_all(haystack: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let finder = memchr::memmem::Finder::new(needle);
    let mut positions = finder.find_iter(haystack).peekable();
    positions.peek()?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for pos in positions {
        if pos < last {
            continue;
        }
        out.extend_from_slice(&haystack[last..pos]);
        out.extend_from_slice(REDACTED);
        last = pos + needle.len();
    }
    out.extend_from_slice(&haystack[last..]);
    Some(out)
}

/// Replaces every injected secret value; calls `counted(credential)` once per credential found.
pub fn scrub(
    mut response: EgressResponse,
    injected: &[(String, SecretString)],
    mut counted: impl FnMut(&str),
) -> EgressResponse {
    for (credential, secret) in injected {
        let needle = secret.expose_secret().as_bytes();
        // Secrets shorter than 4 bytes would redact ordinary text; they are still never logged.
        if needle.len() < 4 {
            continue;
        }
        let mut found = false;
        if let Some(body) = replace_all(&response.body, needle) {
            response.body = body;
            found = true;
        }
        for (_, value) in response.headers.iter_mut() {
            if let Some(v) = replace_all(value.as_bytes(), needle) {
                *value = String::from_utf8_lossy(&v).into_owned();
                found = true;
            }
        }
        if found {
            counted(credential);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str, header: &str) -> EgressResponse {
        EgressResponse {
            status: 200,
            headers: vec![("x-echo".into(), header.into())],
            body: body.as_bytes().to_vec(),
            hops: 0,
        }
    }

    #[test]
    fn secrets_are_replaced_in_body_and_headers_and_counted_once() {
        let secret = vec![(
            "gh".to_string(),
            SecretString::from("s3cr3t-token".to_string()),
        )];
        let mut counts = Vec::new();
        let out = scrub(
            resp(
                r#"{"auth":"Bearer s3cr3t-token","again":"s3cr3t-tokens3cr3t-token"}"#,
                "Bearer s3cr3t-token",
            ),
            &secret,
            |c| counts.push(c.to_string()),
        );
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            r#"{"auth":"Bearer [REDACTED]","again":"[REDACTED][REDACTED]"}"#
        );
        assert_eq!(out.headers[0].1, "Bearer [REDACTED]");
        assert_eq!(counts, vec!["gh"]);
    }

    #[test]
    fn responses_without_the_secret_are_untouched() {
        let secret = vec![(
            "gh".to_string(),
            SecretString::from("s3cr3t-token".to_string()),
        )];
        let mut counted = false;
        let out = scrub(resp("plain", "h"), &secret, |_| counted = true);
        assert_eq!(out.body, b"plain");
        assert!(!counted);
    }
}
