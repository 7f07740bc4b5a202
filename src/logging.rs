//! Logging through `log` + `env_logger`, with the rank in every line of a multi-rank job.
//!
//! Rank 0 logs at `info` by default and the other ranks only warnings and errors, so that a job of
//! hundreds of ranks prints one story; `-v` lifts every rank to `debug`, `-vv` to `trace`, `-q`
//! lowers to warnings only, `-qq` to errors. `RUST_LOG` (env_logger syntax) overrides all of it.

use log::LevelFilter;
use std::io::Write;

/// Log level for a rank from the `-v` count minus the `-q` count.
pub fn level(verbosity: i8, is_root: bool) -> LevelFilter {
    match verbosity {
        i8::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 if is_root => LevelFilter::Info,
        0 => LevelFilter::Warn,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger. `rank` is `Some` in a multi-rank job, and then prefixes every line.
pub fn init(verbosity: i8, is_root: bool, rank: Option<usize>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level(verbosity, is_root));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(move |buf, record| {
        let level = record.level();
        let style = buf.default_level_style(level);
        match rank {
            Some(r) => writeln!(buf, "[rank {r}] {style}{level:<5}{style:#} {}", record.args()),
            None => writeln!(buf, "{style}{level:<5}{style:#} {}", record.args()),
        }
    });
    // A second init (tests) keeps the first logger.
    let _ = builder.try_init();
}

/// A progress bar on rank 0 (hidden elsewhere and when stderr is not a terminal).
pub fn progress_bar(dist: &crate::dist::Dist, len: u64, unit: &str) -> indicatif::ProgressBar {
    if !dist.is_root() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let template =
        format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}) [{{elapsed_precise}}, eta {{eta}}] {{msg}}");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(0, true), LevelFilter::Info);
        assert_eq!(level(0, false), LevelFilter::Warn);
        assert_eq!(level(1, false), LevelFilter::Debug);
        assert_eq!(level(5, true), LevelFilter::Trace);
        assert_eq!(level(-1, true), LevelFilter::Warn);
        assert_eq!(level(-3, true), LevelFilter::Error);
    }
}
