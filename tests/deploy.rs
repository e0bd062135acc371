//! placeholder, replaced by the deploy checks
