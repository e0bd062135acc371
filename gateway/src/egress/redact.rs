//! Scrubbing a response: every form of an injected secret (see [`super::scrub`]) in the body, in
//! header values — also across header boundaries, as a Worker could join the values in order or
//! in reverse — and in header names (such a header is dropped) is replaced with `[REDACTED]`
//! before the Worker sees it.

use super::scrub::{redact, redact_in_place, Scrubber, Span};
use isogate_pool::EgressResponse;
use secrecy::SecretString;

/// Scrubs with a matcher built for `injected`; calls `counted(credential)` once per credential
/// found.
pub fn scrub(
    response: EgressResponse,
    injected: &[(String, SecretString)],
    counted: impl FnMut(&str),
) -> EgressResponse {
    if injected.is_empty() {
        return response;
    }
    scrub_with(response, &Scrubber::new(injected), counted)
}

/// Spans of `joined` (header values concatenated in `order`) mapped back onto each header.
fn header_spans(
    scrubber: &Scrubber,
    values: &[&[u8]],
    order: &[usize],
    found: &mut [bool],
    out: &mut [Vec<Span>],
) {
    let mut joined = Vec::new();
    let mut starts = Vec::with_capacity(order.len());
    for &i in order {
        starts.push(joined.len());
        joined.extend_from_slice(values[i]);
    }
    for (s, e) in scrubber.spans(&joined, found) {
        for (k, &i) in order.iter().enumerate() {
            let (hs, he) = (starts[k], starts[k] + values[i].len());
            let (a, b) = (s.max(hs), e.min(he));
            if a < b {
                out[i].push((a - hs, b - hs));
            }
        }
    }
}

fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Scrubs with a prebuilt matcher; calls `counted(credential)` once per credential found.
pub fn scrub_with(
    mut response: EgressResponse,
    scrubber: &Scrubber,
    mut counted: impl FnMut(&str),
) -> EgressResponse {
    if scrubber.is_empty() {
        return response;
    }
    let mut found = vec![false; scrubber.names().len()];
    // Names: a header named after the secret is dropped (a name cannot carry `[REDACTED]`).
    response.headers.retain(|(name, _)| {
        let hit = !scrubber.spans(name.as_bytes(), &mut found).is_empty();
        !hit
    });
    let values: Vec<&[u8]> = response.headers.iter().map(|(_, v)| v.as_bytes()).collect();
    let mut spans: Vec<Vec<Span>> = vec![Vec::new(); values.len()];
    let forward: Vec<usize> = (0..values.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    header_spans(scrubber, &values, &forward, &mut found, &mut spans);
    header_spans(scrubber, &values, &backward, &mut found, &mut spans);
    for ((_, value), spans) in response.headers.iter_mut().zip(spans) {
        if spans.is_empty() {
            continue;
        }
        let redacted = redact(value.as_bytes(), &merge(spans));
        *value = String::from_utf8_lossy(&redacted).into_owned();
    }
    let url_spans = scrubber.spans(response.url.as_bytes(), &mut found);
    if !url_spans.is_empty() {
        let redacted = redact(response.url.as_bytes(), &url_spans);
        response.url = String::from_utf8_lossy(&redacted).into_owned();
    }
    let body_spans = scrubber.spans(&response.body, &mut found);
    if !body_spans.is_empty() {
        redact_in_place(&mut response.body, &body_spans);
    }
    for (name, hit) in scrubber.names().iter().zip(found) {
        if hit {
            counted(name);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str, headers: &[(&str, &str)]) -> EgressResponse {
        EgressResponse {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            streamed: false,
            hops: 0,
            url: String::new(),
        }
    }

    fn secret() -> Vec<(String, SecretString)> {
        vec![(
            "gh".to_string(),
            SecretString::from("s3cr3t-token".to_string()),
        )]
    }

    #[test]
    fn a_response_url_carrying_the_secret_is_redacted() {
        let mut r = resp("ok", &[]);
        r.url = "https://api.example/x?key=s3cr3t-token&y=1".into();
        let out = scrub(r, &secret(), |_| {});
        assert_eq!(out.url, "https://api.example/x?key=[REDACTED]&y=1");
    }

    #[test]
    fn secrets_are_replaced_in_body_and_headers_and_counted_once() {
        let mut counts = Vec::new();
        let out = scrub(
            resp(
                r#"{"auth":"Bearer s3cr3t-token","again":"s3cr3t-tokens3cr3t-token"}"#,
                &[("x-echo", "Bearer s3cr3t-token")],
            ),
            &secret(),
            |c| counts.push(c.to_string()),
        );
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            r#"{"auth":"Bearer [REDACTED]","again":"[REDACTED]"}"#
        );
        assert_eq!(out.headers[0].1, "Bearer [REDACTED]");
        assert_eq!(counts, vec!["gh"]);
    }

    #[test]
    fn a_secret_split_across_headers_in_either_order() {
        for order in [
            [("x-a", "s3cr3"), ("x-b", "t-token")],
            [("x-b", "t-token"), ("x-a", "s3cr3")],
        ] {
            let out = scrub(resp("", &order), &secret(), |_| {});
            let joined: String = out.headers.iter().map(|(_, v)| v.as_str()).collect();
            assert!(
                !joined.contains("s3cr3") && !joined.contains("t-token"),
                "{joined}"
            );
        }
        let out = scrub(
            resp("", &[("x-s3cr3t-token", "1"), ("ok", "1")]),
            &secret(),
            |_| {},
        );
        assert_eq!(out.headers, vec![("ok".to_string(), "1".to_string())]);
    }

    #[test]
    fn responses_without_the_secret_are_untouched() {
        let mut counted = false;
        let out = scrub(resp("plain", &[("h", "v")]), &secret(), |_| counted = true);
        assert_eq!(out.body, b"plain");
        assert!(!counted);
    }
}
