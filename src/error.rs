//! The one error distinction the process exit code makes.
//!
//! Errors are `anyhow` chains with context ("reading data/sst-2/train.tsv line 7: ...").
//! An [`InputError`] anywhere in the chain marks the user's input as the cause (a bad file, flag or
//! value) and makes the process exit with 2, like clap's usage errors; every other failure exits 1.
//!
//! In a multi-rank job a failure on one rank must end all ranks (the others may wait for it in a
//! collective), which `main` does with MPI_Abort. A failure that all ranks reached together, after
//! agreeing on it, is an [`AllRanksError`]: the job then ends normally and only rank 0 reports it.

/// Bad user input: a file, line, flag or value that the user can fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// A failure every rank of the job returns at the same point, with the exit code it implies.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AllRanksError {
    pub message: String,
    pub code: i32,
}

/// An [`AllRanksError`] (exit code 1) as an `anyhow::Error`.
pub fn all_ranks_error(message: impl Into<String>) -> anyhow::Error {
    AllRanksError { message: message.into(), code: 1 }.into()
}

/// `error`, which every rank learnt about, as an [`AllRanksError`] with the same exit code.
pub fn on_all_ranks(error: &anyhow::Error) -> anyhow::Error {
    AllRanksError { message: format!("{error:#}"), code: exit_code(error) }.into()
}

/// Whether every rank fails with `error` (no need to abort the others).
pub fn is_all_ranks(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<AllRanksError>())
}

/// An [`InputError`] as an `anyhow::Error`, for `return Err(input_error(...))`.
pub fn input_error(message: impl Into<String>) -> anyhow::Error {
    InputError(message.into()).into()
}

/// Exit code for a failed command.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(all) = error.chain().find_map(|cause| cause.downcast_ref::<AllRanksError>()) {
        return all.code;
    }
    if error.chain().any(|cause| cause.is::<InputError>()) {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn input_errors_exit_2_even_under_context() {
        let e = Err::<(), _>(input_error("bad flag --x")).context("while starting").unwrap_err();
        assert_eq!(exit_code(&e), 2);
        assert_eq!(format!("{e:#}"), "while starting: bad flag --x");
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), 1);
        assert!(!is_all_ranks(&e));
        let agreed = Err::<(), _>(all_ranks_error("2 checks failed")).context("check").unwrap_err();
        assert!(is_all_ranks(&agreed));
        assert_eq!(exit_code(&agreed), 1);
        let shared = on_all_ranks(&e);
        assert_eq!((exit_code(&shared), shared.to_string()), (2, "while starting: bad flag --x".to_string()));
    }
}
