//! TLS on the ingress: the certificates of `tls.certificates`, chosen per handshake by SNI, and
//! reloaded without a restart.
//!
//! [`CertStore`] is pingora's rustls certificate resolver. Each certificate is loaded from its
//! PEM files, its private key is checked to belong to its leaf certificate, and its DNS subject
//! alternative names are indexed: an SNI name takes the certificate that names it exactly, else
//! one whose wildcard (`*.example.com`, one label, as RFC 6125 says) covers it, else the first
//! certificate (which also serves clients that send no SNI). The set is swapped atomically:
//! handshakes in progress and connections already established keep the certificate they got.
//! A set that fails to load (a missing file, a key that does not match, a PEM with no
//! certificate) is refused as a whole and the last good set keeps serving.
//!
//! The protocol settings are rustls's through pingora: TLS 1.2 and 1.3 only, rustls's default
//! cipher suites (AEAD only, forward secrecy only), ALPN `h2` and `http/1.1`.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use isogate_config::CertificateConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, Mutex};

/// One loaded certificate.
pub struct Loaded {
    key: Arc<CertifiedKey>,
    /// DNS names of its subject alternative names, lower-case (`*.x` kept as written).
    pub names: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity as the certificate writes it, for people.
    pub not_after_text: String,
}

impl Loaded {
    /// The label of this certificate in metrics and logs: its first DNS name (configured data),
    /// else its position.
    pub fn label(&self, index: usize) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| format!("certificates[{index}]"))
    }
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why a certificate set did not load; the message names the YAML path of the file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The YAML path (`tls.certificates[0].key_file`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn error(path: String, message: impl Into<String>) -> TlsError {
    TlsError {
        path,
        message: message.into(),
    }
}

/// Loads every certificate of `files` (the first failure is reported).
pub fn load(files: &[CertificateConfig]) -> Result<Vec<Loaded>, TlsError> {
    files
        .iter()
        .enumerate()
        .map(|(i, c)| load_one(i, c))
        .collect()
}

fn load_one(i: usize, c: &CertificateConfig) -> Result<Loaded, TlsError> {
    let at = |field: &str| format!("tls.certificates[{i}].{field}");
    let cert_file = c.cert_file.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_file)
        .map_err(|e| error(at("cert_file"), format!("cannot read {cert_file}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(at("cert_file"), format!("bad PEM in {cert_file}: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(error(
            at("cert_file"),
            format!("{cert_file} holds no CERTIFICATE block"),
        ));
    };
    let (names, not_before, not_after, not_after_text) =
        leaf_facts(leaf).map_err(|m| error(at("cert_file"), format!("{cert_file}: {m}")))?;
    let key_file = c.key_file.display();
    // The key's bytes are never put into an error or a log line.
    let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(|e| {
        error(
            at("key_file"),
            format!(
                "cannot read a private key from {key_file}: {}",
                key_error(&e)
            ),
        )
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        error(
            at("key_file"),
            format!("{key_file}: unsupported private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        error(
            at("key_file"),
            format!("{key_file} is not the key of the certificate in {cert_file} ({e})"),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after,
        not_before,
        not_after_text,
    })
}

/// A PEM error without anything of the file's contents.
fn key_error(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PRIVATE KEY block",
        E::Io(_) => "the file cannot be read",
        _ => "bad PEM",
    }
}

/// DNS names and validity of a leaf certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64, String), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Err(
            "the leaf certificate has no DNS subject alternative name (clients ignore the CN)"
                .into(),
        );
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        validity.not_after.to_string(),
    ))
}

/// What `isogate check` says of the certificates of `files` at `now` (Unix seconds): one line
/// per certificate, and whether all of them can serve (loaded, key matching, valid now).
pub fn report(files: &[CertificateConfig], now: i64) -> (Vec<String>, bool) {
    let loaded = match load(files) {
        Ok(l) => l,
        Err(e) => return (vec![e.to_string()], false),
    };
    let mut ok = true;
    let lines = loaded
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let days = (c.not_after - now).div_euclid(86_400);
            let state = if now < c.not_before {
                ok = false;
                "NOT YET VALID".to_string()
            } else if now > c.not_after {
                ok = false;
                "EXPIRED".to_string()
            } else if days < 14 {
                format!("expires in {days} days: renew it")
            } else {
                format!("expires in {days} days")
            };
            format!(
                "tls.certificates[{i}]: {} (key matches); valid until {}: {state}",
                c.names.join(", "),
                c.not_after_text
            )
        })
        .collect();
    (lines, ok)
}

/// Whether a certificate name (`a.example.com` or `*.example.com`) covers `sni`.
fn covers(name: &str, sni: &str) -> bool {
    match name.strip_prefix("*.") {
        None => name == sni,
        Some(parent) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
    }
}

/// The certificate for `sni`: exact name, then wildcard, then the first one.
fn pick<'a>(certs: &'a [Loaded], sni: Option<&str>) -> Option<&'a Loaded> {
    if let Some(sni) = sni {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let exact = certs.iter().find(|c| c.names.contains(&sni));
        let wildcard = || {
            certs.iter().find(|c| {
                c.names
                    .iter()
                    .any(|n| n.starts_with("*.") && covers(n, &sni))
            })
        };
        if let Some(c) = exact.or_else(wildcard) {
            return Some(c);
        }
    }
    certs.first()
}

/// The files of a set and a digest of their contents (to see a rotation).
struct Source {
    files: Vec<CertificateConfig>,
    digest: Option<[u8; 32]>,
}

fn digest(files: &[CertificateConfig]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for c in files {
        for path in [&c.cert_file, &c.key_file] {
            h.update(std::fs::read(path).ok()?);
            h.update([0]);
        }
    }
    Some(h.finalize().into())
}

/// The ingress's certificates (pingora's rustls resolver), reloadable.
pub struct CertStore {
    current: ArcSwap<Vec<Loaded>>,
    source: Mutex<Source>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads `files`; an error names the file at fault.
    pub fn open(files: &[CertificateConfig], metrics: Arc<Metrics>) -> Result<CertStore, TlsError> {
        let loaded = load(files)?;
        let store = CertStore {
            current: ArcSwap::from_pointee(Vec::new()),
            source: Mutex::new(Source {
                files: files.to_vec(),
                digest: digest(files),
            }),
            metrics,
        };
        store.install(loaded);
        Ok(store)
    }

    fn install(&self, loaded: Vec<Loaded>) {
        let gauge = &self.metrics.tls_certificate_expiry;
        gauge.reset();
        for (i, c) in loaded.iter().enumerate() {
            gauge
                .with_label_values(&[c.label(i).as_str()])
                .set(c.not_after as f64);
        }
        self.current.store(Arc::new(loaded));
    }

    /// Reloads when the files' contents changed or `files` (a reloaded configuration's list)
    /// differs; `why` goes into the log. Whether a new set is serving; a set that does not load
    /// is refused (counted, logged) and the last good one keeps serving.
    pub fn reload(&self, files: Option<&[CertificateConfig]>, why: &str) -> bool {
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let files = files.map_or_else(|| source.files.clone(), <[_]>::to_vec);
        let now = digest(&files);
        if files == source.files && now == source.digest {
            return false;
        }
        match load(&files) {
            Ok(loaded) => {
                let names: Vec<String> = loaded.iter().flat_map(|c| c.names.clone()).collect();
                self.install(loaded);
                *source = Source { files, digest: now };
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger = why, names = ?names, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Not retried until the files change again.
                source.digest = now;
                source.files = files;
                self.metrics
                    .tls_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(trigger = why, error = %e,
                    "TLS certificates rejected; the last good certificates keep serving");
                false
            }
        }
    }

    /// The certificate a handshake for `sni` gets (its names), for tests and `check`.
    pub fn names_for(&self, sni: Option<&str>) -> Option<Vec<String>> {
        pick(&self.current.load(), sni).map(|c| c.names.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        pick(&self.current.load(), hello.server_name()).map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_leaf(dir: &std::path::Path, name: &str, sans: &[&str]) -> CertificateConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = CertificateConfig {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&c.cert_file, cert.pem()).unwrap();
        std::fs::write(&c.key_file, key.serialize_pem()).unwrap();
        c
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            write_leaf(dir.path(), "a", &["a.test"]),
            write_leaf(dir.path(), "b", &["*.b.test", "b.test"]),
            write_leaf(dir.path(), "c", &["x.b.test"]),
        ];
        let store = CertStore::open(&files, Arc::new(Metrics::new())).unwrap();
        let names = |sni: Option<&str>| store.names_for(sni).unwrap()[0].clone();
        assert_eq!(names(Some("A.TEST.")), "a.test");
        assert_eq!(names(Some("y.b.test")), "*.b.test");
        assert_eq!(
            names(Some("x.b.test")),
            "x.b.test",
            "an exact name beats a wildcard"
        );
        assert_eq!(names(Some("b.test")), "*.b.test");
        assert_eq!(
            names(Some("z.y.b.test")),
            "a.test",
            "one label only, else the default"
        );
        assert_eq!(names(None), "a.test");
        // A set with one bad member is refused whole, naming it; the old set keeps serving.
        std::fs::copy(&files[0].key_file, &files[2].key_file).unwrap();
        assert!(!store.reload(None, "test"));
        assert_eq!(names(Some("x.b.test")), "x.b.test");
        let e = load(&files).unwrap_err();
        assert_eq!(e.path, "tls.certificates[2].key_file");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(covers("a.example.com", "a.example.com"));
    }
}
