//! The one error type of the library crates, and its `Result` alias.
use std::path::PathBuf;

/// Every failure a library crate of alp reports. Each variant names the file, field or tensor
/// involved and, where one exists, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle (only with the `candle` feature).
    #[cfg(feature = "candle")]
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed: the operation (write, rename, fsync, remove), the path, what
    /// the system said and, where there is one, the fix (e.g. the space a checkpoint needs).
    #[error("cannot {op} {path}: {source}{hint}")]
    FileOp {
        /// The operation, as a verb: `write`, `rename`, `fsync`, `remove`, `create`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
        /// Empty, or `"; "` followed by what to do.
        hint: String,
    },
    /// A required file does not exist.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// A JSON (or other structured) file could not be parsed.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A configuration value is impossible.
    #[error("invalid config field `{field}`: {message}")]
    Config {
        /// The field, in the file's own naming (e.g. `num_key_value_heads`).
        field: String,
        /// Why it is rejected.
        message: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {file}")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
        /// The checkpoint file or directory.
        file: PathBuf,
    },
    /// A tensor in the checkpoint has the wrong shape.
    #[error("tensor `{name}` in {file} has shape {got:?}, the config needs {expected:?}")]
    TensorShape {
        /// The Hugging Face tensor name.
        name: String,
        /// The checkpoint file.
        file: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// The tokenizer failed or does not fit the model.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id lies outside the model's vocabulary.
    #[error("token id {token} is out of range: the model's vocab_size is {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A shape or value handed to a function is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A numeric problem (NaN, Inf) that must not be silently propagated.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// A rollout server (reached over HTTP) failed or answered something that cannot be
    /// trained on; `server` is its address.
    #[error("rollout server {server}: {message}")]
    Remote {
        /// The server's base URL.
        server: String,
        /// What went wrong, and the fix where one exists.
        message: String,
    },
    /// Anything else, with its context.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// An [`Error::Remote`] naming `server`.
    pub fn remote(server: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Remote {
            server: server.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::FileOp`] without a hint.
    pub fn file_op(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::FileOp {
            op,
            path: path.into(),
            source,
            hint: String::new(),
        }
    }
    /// Whether this is a file operation that failed because the disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
        };
        match self {
            Error::FileOp { source, .. } | Error::Io { source, .. } => full(source),
            _ => false,
        }
    }
    /// An [`Error::Config`] naming `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
    /// An [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
}

/// `Result` with the workspace's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
