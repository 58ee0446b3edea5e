//! The error type of drove-exec.

use datafusion::error::DataFusionError;
use drove_core::scheduler::ErrorKind;

/// Errors raised while planning or running distributed work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input is wrong: SQL, a table, a path, a flag.
    #[error("{0}")]
    User(String),
    /// DataFusion refused the plan or failed while running it.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Reading or writing a file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Fetching a shuffle block from another worker failed.
    #[error("fetching a shuffle block from {addr} failed: {message}")]
    Fetch {
        addr: String,
        message: String,
        /// Which map output could not be read, when a task's shuffle read failed.
        lost: Option<LostBlock>,
    },
    /// Something drove itself got wrong.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A map output a task could not read: the scheduler re-runs its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostBlock {
    pub stage: u32,
    pub map_partition: u32,
    /// The worker that should have held it.
    pub worker: u64,
}

/// Result type of drove-exec.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a library's decoder of bytes from outside (arrow-ipc, datafusion-proto) and
/// turns a panic inside it into its message: those decoders panic on some malformed
/// input, and no bytes may stop a drove process. `crate::fuzz` finds such inputs.
pub(crate) fn decode_unpanicked<T>(decode: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .map_err(|panic| drove_core::panic_message(panic.as_ref()))
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::DataFusion(DataFusionError::ParquetError(Box::new(e)))
    }
}

/// Classifies a DataFusion error for the retry policy: mistakes in the plan or the data
/// fail the job at once, I/O and exhausted resources are worth another attempt.
pub fn classify(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => ErrorKind::Transient,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::Resources,
        DataFusionError::Internal(_) => ErrorKind::Internal,
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(inner) => inner.kind(),
            None => ErrorKind::Transient,
        },
        DataFusionError::Context(_, inner) => classify(inner),
        DataFusionError::Shared(inner) => classify(inner),
        DataFusionError::Diagnostic(_, inner) => classify(inner),
        DataFusionError::Collection(all) => all.first().map_or(ErrorKind::Internal, classify),
        DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
        DataFusionError::ArrowError(inner, _) => classify_arrow(inner),
        _ => ErrorKind::User,
    }
}

/// Arrow's I/O errors (a full disk while spilling, say) are worth another attempt, as
/// are errors from outside that drove cannot tell apart (as with
/// `DataFusionError::External`); Arrow's own other errors are mistakes in the data.
fn classify_arrow(e: &arrow::error::ArrowError) -> ErrorKind {
    use arrow::error::ArrowError;
    match e {
        ArrowError::IoError(..) => ErrorKind::Transient,
        ArrowError::ExternalError(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                classify(df)
            } else if let Some(own) = inner.downcast_ref::<Error>() {
                own.kind()
            } else {
                ErrorKind::Transient
            }
        }
        _ => ErrorKind::User,
    }
}

/// The map output whose fetch failed, if that is what `e` comes down to.
pub fn lost_block(e: &DataFusionError) -> Option<LostBlock> {
    match e {
        DataFusionError::External(inner) => inner.downcast_ref::<Error>()?.lost_block(),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            lost_block(inner)
        }
        DataFusionError::Shared(inner) => lost_block(inner),
        DataFusionError::Collection(all) => all.iter().find_map(lost_block),
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            arrow::error::ArrowError::ExternalError(e) => e
                .downcast_ref::<DataFusionError>()
                .and_then(lost_block)
                .or_else(|| e.downcast_ref::<Error>()?.lost_block()),
            _ => None,
        },
        _ => None,
    }
}

impl Error {
    /// The map output whose fetch failed, if that is what this error comes down to.
    pub fn lost_block(&self) -> Option<LostBlock> {
        match self {
            Error::Fetch { lost, .. } => *lost,
            Error::DataFusion(e) => lost_block(e),
            _ => None,
        }
    }

    /// How the scheduler should treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::User(_) => ErrorKind::User,
            Error::DataFusion(e) => classify(e),
            Error::Io(_) | Error::Fetch { .. } => ErrorKind::Transient,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}
