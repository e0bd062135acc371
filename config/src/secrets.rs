//! The top-level `credentials` and `vaults` sections.
//!
//! A credential says where a secret comes from ([`SecretSource`]) and how it
//! is put into an outbound request ([`Injection`]); egress rules refer to
//! credentials by name. The configuration only holds *references* to
//! secrets (environment variable names, file paths, vault paths): reading
//! them is the gateway's job, and secret values never enter this crate or
//! the policy.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// The placeholder that [`Injection::render`] replaces with the secret.
pub const SECRET_PLACEHOLDER: &str = "${secret}";

/// A named credential that egress rules can inject into requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Unique credential name: 1 to 63 characters of `a-z`, `0-9`, `_` and
    /// `-`, starting with a letter or digit.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// Where the secret comes from.
    pub source: SecretSource,
    /// How the secret is put into the request.
    pub inject: Injection,
}

/// Where a secret comes from. Written as a single-key mapping:
/// `{ env: NAME }`, `{ file: /path }` or
/// `{ vault: { backend, path, field } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// The value of an environment variable of the gateway process.
    Env {
        /// The variable name (letters, digits and `_`, not starting with a
        /// digit).
        env: String,
    },
    /// The contents of a file, read by the gateway.
    File {
        /// The file's path.
        file: PathBuf,
    },
    /// A field of a secret in a vault (see [`VaultConfig`]).
    Vault {
        /// The secret's location.
        vault: VaultRef,
    },
}

/// The location of a secret in a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultRef {
    /// Name of a vault in the top-level `vaults` list.
    pub backend: String,
    /// Path of the secret in the vault, e.g. `kv/data/agents/github` (the
    /// HTTP API path, without `/v1/`).
    pub path: String,
    /// The field of the secret's data holding the value, e.g. `token`.
    pub field: String,
}

/// How a secret is put into an outbound request. Written
/// `{ header: NAME, value: TEMPLATE }` or `{ query: NAME, value: TEMPLATE }`;
/// the template must contain `${secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Injection {
    /// Set a request header (replacing any value the Worker set).
    Header {
        /// The header name, an HTTP token, e.g. `Authorization`.
        header: String,
        /// The value template, e.g. `Bearer ${secret}`.
        value: String,
    },
    /// Set a query parameter (replacing any the Worker set).
    Query {
        /// The parameter name, e.g. `api_key`.
        query: String,
        /// The value template, e.g. `${secret}`.
        value: String,
    },
}

impl Injection {
    /// The value template.
    pub fn template(&self) -> &str {
        match self {
            Injection::Header { value, .. } | Injection::Query { value, .. } => value,
        }
    }

    /// The value to inject: the template with every `${secret}` replaced by
    /// `secret`.
    ///
    /// No encoding is applied: the caller must reject header values with
    /// control characters (e.g. a secret ending in a newline) and
    /// percent-encode query values.
    pub fn render(&self, secret: &str) -> String {
        self.template().replace(SECRET_PLACEHOLDER, secret)
    }
}

/// A secret store that credentials can read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Unique vault name, referenced by `credentials[].source.vault.backend`
    /// (same rules as credential names).
    #[schemars(pattern(r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// The kind of vault.
    pub kind: VaultKind,
    /// Base URL of the vault's HTTP API, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// Where the gateway's token for this vault comes from.
    pub token: TokenSource,
    /// Seconds a fetched secret is used before it is fetched again. Default
    /// 60.
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: u64,
    /// Seconds a fetched secret may still be used while the vault cannot be
    /// reached; at least `cache_ttl_s`. Default 600.
    #[serde(default = "default_max_stale_s")]
    pub max_stale_s: u64,
}

const fn default_cache_ttl_s() -> u64 {
    60
}

const fn default_max_stale_s() -> u64 {
    600
}

/// Supported vault implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VaultKind {
    /// HashiCorp Vault (or OpenBao), KV secrets engine.
    Hashicorp,
}

/// Where a vault token comes from: `{ env: NAME }` or `{ file: /path }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum TokenSource {
    /// The value of an environment variable of the gateway process.
    Env {
        /// The variable name.
        env: String,
    },
    /// The contents of a file, read by the gateway.
    File {
        /// The file's path.
        file: PathBuf,
    },
}

// Deserialization goes through a struct with one optional field per variant
// key: its errors name the offending key (`unknown field `envv`, expected one
// of `env`, `file`, `vault``) where an untagged enum would only say "data did
// not match any variant", and it does not depend on how the YAML library
// represents enums.

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = repr::SecretSource::deserialize(deserializer)?;
        match (repr.env, repr.file, repr.vault) {
            (Some(env), None, None) => Ok(SecretSource::Env { env }),
            (None, Some(file), None) => Ok(SecretSource::File { file }),
            (None, None, Some(vault)) => Ok(SecretSource::Vault { vault }),
            _ => Err(D::Error::custom(
                "give exactly one of `env`, `file` or `vault`",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for TokenSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = repr::TokenSource::deserialize(deserializer)?;
        match (repr.env, repr.file) {
            (Some(env), None) => Ok(TokenSource::Env { env }),
            (None, Some(file)) => Ok(TokenSource::File { file }),
            _ => Err(D::Error::custom("give exactly one of `env` or `file`")),
        }
    }
}

impl<'de> Deserialize<'de> for Injection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = repr::Injection::deserialize(deserializer)?;
        let value = repr.value;
        match (repr.header, repr.query) {
            (Some(header), None) => Ok(Injection::Header { header, value }),
            (None, Some(query)) => Ok(Injection::Query { query, value }),
            _ => Err(D::Error::custom("give exactly one of `header` or `query`")),
        }
    }
}

/// The shapes deserialized before they are checked for "exactly one of".
mod repr {
    use std::path::PathBuf;

    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct SecretSource {
        pub env: Option<String>,
        pub file: Option<PathBuf>,
        pub vault: Option<super::VaultRef>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct TokenSource {
        pub env: Option<String>,
        pub file: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Injection {
        pub header: Option<String>,
        pub query: Option<String>,
        pub value: String,
    }
}
