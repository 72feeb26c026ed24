//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// What went wrong, and where: every variant names the spec, image, file and step it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec file could not be read, parsed or checked.
    #[error("spec {path}: {message}")]
    Spec { path: PathBuf, message: String },

    /// One file of an image could not be resolved, read, stripped or added.
    #[error("image {image}: file {file}: {step}: {message}")]
    File {
        image: String,
        /// The file as the spec names it (its `from:` before expansion, or its image path).
        file: String,
        step: &'static str,
        message: String,
    },

    /// A step of an image's build that is not about one file (layer, config, archive).
    #[error("image {image}: {step}: {source}")]
    Image {
        image: String,
        step: String,
        #[source]
        source: io::Error,
    },

    /// An image was asked for that the spec does not have.
    #[error("no image {name} in {spec} (it has: {known})")]
    UnknownImage {
        name: String,
        spec: PathBuf,
        known: String,
    },

    /// Some images failed; each one's error is in the list.
    #[error("{} of {total} images failed:\n  {}", .failed.len(), join_errors(.failed))]
    Failed { failed: Vec<Error>, total: usize },

    /// The test workload's settings (environment or flags) are invalid.
    #[error("config: {0}")]
    Config(String),

    /// A URL the test workload was asked to call is not one it can call.
    #[error("url {url}: {message}")]
    Url { url: String, message: String },

    /// An HTTP call of the test workload failed.
    #[error("{url}: {message}")]
    Call {
        url: String,
        message: String,
        /// The status this failure shows as (503 when unreachable, 504 on a timeout).
        status: u16,
    },

    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] with its context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

fn join_errors(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}
