//! Error types returned while loading and validating a configuration.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The document is not valid YAML, or does not match the configuration
    /// schema (unknown field, wrong type, missing required field, ...).
    ///
    /// Displayed as `origin:line:column: path: message`, omitting the parts
    /// that are unknown.
    #[error("{}", DisplayParse { origin, path, message, line: *line, column: *column })]
    Parse {
        /// Where the document came from, usually a file name.
        origin: String,
        /// The YAML path of the offending node, e.g. `tenants[0].limits.cpu_ms`;
        /// empty when the error concerns the document as a whole.
        path: String,
        /// What is wrong, without location information.
        message: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column of the error, when known.
        column: Option<usize>,
    },

    /// The document parsed, but violates one or more validation rules. All
    /// violations are reported, not just the first.
    #[error("{}", DisplayInvalid(.0))]
    Invalid(Vec<ValidationError>),
}

/// One violated validation rule.
///
/// Displayed as `path: message`, e.g.
/// `tenants[0].api_keys[1].sha256: must be 64 hex characters`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// YAML path of the offending value, e.g. `tenants[0].limits.cpu_ms`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// Creates a validation error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

struct DisplayParse<'a> {
    origin: &'a str,
    path: &'a str,
    message: &'a str,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for DisplayParse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(self.message)
    }
}

struct DisplayInvalid<'a>(&'a [ValidationError]);

impl fmt::Display for DisplayInvalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("invalid configuration"),
            [only] => write!(f, "invalid configuration: {only}"),
            all => {
                write!(f, "invalid configuration ({} errors):", all.len())?;
                for error in all {
                    write!(f, "\n  {error}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_variants() {
        let full = ConfigError::Parse {
            origin: "isogate.yaml".into(),
            path: "tenants[0].limits.cpu_ms".into(),
            message: "invalid type".into(),
            line: Some(7),
            column: Some(15),
        };
        assert_eq!(
            full.to_string(),
            "isogate.yaml:7:15: tenants[0].limits.cpu_ms: invalid type"
        );

        let bare = ConfigError::Parse {
            origin: "isogate.yaml".into(),
            path: String::new(),
            message: "EOF while parsing a value".into(),
            line: None,
            column: None,
        };
        assert_eq!(bare.to_string(), "isogate.yaml: EOF while parsing a value");
    }

    #[test]
    fn invalid_display_lists_every_error() {
        let one = ConfigError::Invalid(vec![ValidationError::new(
            "tenants",
            "at least one tenant is required",
        )]);
        assert_eq!(
            one.to_string(),
            "invalid configuration: tenants: at least one tenant is required"
        );

        let two = ConfigError::Invalid(vec![
            ValidationError::new("pool.threads", "must be between 1 and 256"),
            ValidationError::new("pool.queue_capacity", "must be greater than 0"),
        ]);
        assert_eq!(
            two.to_string(),
            "invalid configuration (2 errors):\n  pool.threads: must be between 1 and 256\n  pool.queue_capacity: must be greater than 0"
        );
    }
}
