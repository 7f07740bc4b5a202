//! A MeZO run's trajectory: the checkpoint it resumes and replays from.
//!
//! `trajectory.jsonl` holds a header (fingerprint of the initial trainable weights, the stream and
//! the settings the replay needs), then one line per step: its seed and projected gradient (or its
//! n-SPSA directions) and learning rate. That is all a run's weights depend on, so the weights of
//! any step are rebuilt from the initial model and these lines alone.
//!
//! Every line ends with a running checksum, `"check"`: FNV-1a of the previous line's check
//! followed by this line's JSON up to its closing brace (the header's covers itself alone). A
//! line cut short by a kill or a full disk, a line edited by hand and a line that went missing all
//! break the chain, so a trajectory is either verified to its last line or refused where it breaks.
//! On resume, a damaged *last* line (what a kill while writing leaves) is cut off with a warning
//! and that step is run again; anywhere else damage is an error. Files written before checksums
//! existed (no check in the header) are read without verification.
//!
//! The writer appends each line with one write and syncs it before the step counts as done.

use crate::dist::Dist;
use crate::error::InputError;
use crate::fingerprint::Fingerprint;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One recorded step of a trajectory.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RecordedStep {
    pub step: usize,
    /// The step's one direction (the reference's form)...
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub projected_grad: Option<f64>,
    /// ...or its n-SPSA directions (seed, g).
    #[serde(default)]
    pub directions: Option<Vec<(u64, f64)>>,
    pub lr: f64,
}

impl RecordedStep {
    pub fn directions(&self) -> Vec<(u64, f64)> {
        match (&self.directions, self.seed, self.projected_grad) {
            (Some(d), _, _) => d.clone(),
            (None, Some(seed), Some(g)) => vec![(seed, g)],
            _ => Vec::new(),
        }
    }
}

/// What to do with a damaged last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornTail {
    /// An error (replay: the run did not record that step).
    Refuse,
    /// Cut it off with a warning (resume: the step is run again).
    Repair,
}

/// A trajectory read and verified.
#[derive(Debug, Clone)]
pub struct Trajectory {
    pub header: serde_json::Value,
    pub steps: Vec<RecordedStep>,
    /// The last verified line's check (`None` for files without checksums).
    last_check: Option<String>,
    /// Bytes of the file up to the end of the last verified line.
    valid_len: u64,
}

/// The check of a line whose JSON is `text`, after a line whose check was `previous`.
fn chain(previous: &str, text: &str) -> String {
    Fingerprint::new().update(previous.as_bytes()).update(text.as_bytes()).hex()
}

/// `text` (one JSON object) with its check appended, as a line.
fn checked_line(previous: &str, text: &str) -> (String, String) {
    debug_assert!(text.ends_with('}') && text.len() > 2);
    let check = chain(previous, text);
    (format!("{},\"check\":\"{check}\"}}\n", &text[..text.len() - 1]), check)
}

/// The JSON of a checked line and its check, if the check is present and right.
fn verified<'a>(line: &'a str, previous: &str) -> Option<(String, &'a str)> {
    const KEY: &str = ",\"check\":\"";
    let at = line.rfind(KEY)?;
    let check = line[at + KEY.len()..].strip_suffix("\"}")?;
    let text = format!("{}}}", &line[..at]);
    (check.len() == 16 && chain(previous, &text) == check).then_some((text, check))
}

/// Reads `RUN/trajectory.jsonl`, verifying every line.
pub fn read_trajectory(run: &Path, torn: TornTail) -> Result<Trajectory> {
    let path = run.join(super::run_dir::TRAJECTORY);
    let bytes = std::fs::read(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let damaged = |line: usize, what: &str| InputError(format!("{}: line {line} {what}", path.display()));
    // (text, offset of the line's end) for every line; the last may lack its newline.
    let mut lines: Vec<(&str, usize)> = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        start += piece.len();
        lines.push((piece.strip_suffix('\n').unwrap_or(piece), start));
    }
    let Some(&(first, first_end)) = lines.first() else {
        bail!(damaged(1, "is missing: the trajectory has no header"));
    };
    let checked = first.contains("\"check\":\"");
    if !checked && lines.iter().skip(1).any(|(line, _)| line.contains(",\"check\":\"")) {
        // Only files from before checksums have none in their header.
        bail!(damaged(1, "(the header) has lost its checksum"));
    }
    let (header_text, mut last_check) = if checked {
        let (text, check) =
            verified(first, "").ok_or_else(|| damaged(1, "(the header) fails its checksum"))?;
        (text, Some(check.to_string()))
    } else {
        (first.to_string(), None)
    };
    let mut header: serde_json::Value = serde_json::from_str(&header_text)
        .map_err(|e| damaged(1, &format!("(the header) is not JSON: {e}")))?;
    if let Some(fields) = header.as_object_mut() {
        fields.remove("check");
    }
    let mut steps = Vec::new();
    let mut valid_len = first_end as u64;
    for (i, &(line, end)) in lines.iter().enumerate().skip(1) {
        let number = i + 1;
        let is_last = i + 1 == lines.len();
        let parsed: Result<RecordedStep, String> = match &last_check {
            Some(previous) => match verified(line, previous) {
                Some((text, check)) => serde_json::from_str(&text)
                    .map(|s| (s, check))
                    .map_err(|e| e.to_string())
                    .map(|(s, check)| {
                        last_check = Some(check.to_string());
                        s
                    }),
                None => Err("fails its checksum (cut short, edited, or a line before it is missing)".into()),
            },
            None => serde_json::from_str(line).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(step) => {
                check_step(&step, steps.len() + 1).map_err(|what| damaged(number, &what))?;
                steps.push(step);
                valid_len = end as u64;
            }
            Err(what) if is_last && torn == TornTail::Repair => {
                log::warn!(
                    "{}: line {number} {what}; it was being written when the run stopped: cutting it off, \
                     step {} runs again",
                    path.display(),
                    steps.len() + 1
                );
            }
            Err(what) if is_last => {
                bail!(damaged(
                    number,
                    &format!("{what}: the run stopped while writing it (mezo train --resume repairs it)")
                ))
            }
            Err(what) => bail!(damaged(number, &what)),
        }
    }
    Ok(Trajectory { header, steps, last_check, valid_len })
}

/// A step's own consistency: its number, at least one direction, seeds of the step-seed stream.
fn check_step(step: &RecordedStep, expected: usize) -> Result<(), String> {
    if step.step != expected {
        return Err(format!("holds step {} where step {expected} belongs", step.step));
    }
    let directions = step.directions();
    if directions.is_empty() {
        return Err(format!("(step {}) has no seed and projected gradient", step.step));
    }
    if let Some((seed, _)) = directions.iter().find(|(seed, _)| *seed > u64::from(u32::MAX)) {
        return Err(format!("(step {}) has seed {seed}; step seeds are below 2^32", step.step));
    }
    if !step.lr.is_finite() || directions.iter().any(|(_, g)| !g.is_finite()) {
        return Err(format!("(step {}) has a non-finite learning rate or projected gradient", step.step));
    }
    Ok(())
}

/// Appends checked lines to a trajectory (rank 0 writes; other ranks hold no file).
pub struct TrajectoryWriter {
    file: Option<std::fs::File>,
    path: PathBuf,
    check: String,
}

impl TrajectoryWriter {
    /// Starts `RUN/trajectory.jsonl` with `header`.
    pub fn create(dist: &Dist, run: &Path, header: &serde_json::Value) -> Result<TrajectoryWriter> {
        let path = run.join(super::run_dir::TRAJECTORY);
        let file = if dist.is_root() {
            Some(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?)
        } else {
            None
        };
        let mut writer = TrajectoryWriter { file, path, check: String::new() };
        writer.write_line(&header.to_string())?;
        if dist.is_root() {
            crate::fsio::sync_parent(&writer.path)?;
        }
        Ok(writer)
    }

    /// Continues `trajectory` after its last verified line, cutting off anything after it.
    pub fn append(dist: &Dist, run: &Path, trajectory: &Trajectory) -> Result<TrajectoryWriter> {
        let path = run.join(super::run_dir::TRAJECTORY);
        let Some(check) = trajectory.last_check.clone() else {
            bail!(InputError(format!(
                "{}: written by an older mezo without checksums; it replays, but cannot be continued",
                path.display()
            )));
        };
        let file = if dist.is_root() {
            let opened = (|| -> std::io::Result<std::fs::File> {
                let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
                file.set_len(trajectory.valid_len)?;
                let mut last = [0u8];
                use std::io::{Read, Seek, SeekFrom};
                file.seek(SeekFrom::Start(trajectory.valid_len.saturating_sub(1)))?;
                file.read_exact(&mut last)?;
                file.seek(SeekFrom::End(0))?;
                if last[0] != b'\n' {
                    file.write_all(b"\n")?;
                }
                file.sync_data()?;
                Ok(file)
            })();
            Some(opened.with_context(|| format!("reopening {}", path.display()))?)
        } else {
            None
        };
        Ok(TrajectoryWriter { file, path, check })
    }

    /// Appends one step (or the header) and syncs it.
    pub fn record(&mut self, value: &serde_json::Value) -> Result<()> {
        self.write_line(&value.to_string())
    }

    fn write_line(&mut self, text: &str) -> Result<()> {
        let (line, check) = checked_line(&self.check, text);
        if let Some(file) = &mut self.file {
            file.write_all(line.as_bytes())
                .and_then(|()| file.sync_data())
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.check = check;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, grads: &[f64]) -> PathBuf {
        let dist = Dist::single();
        let mut w = TrajectoryWriter::create(&dist, dir, &serde_json::json!({"seed": 42})).unwrap();
        for (i, g) in grads.iter().enumerate() {
            w.record(&serde_json::json!({"step": i + 1, "seed": 7, "projected_grad": g, "lr": 1e-3}))
                .unwrap();
        }
        dir.join("trajectory.jsonl")
    }

    /// Every number of a trajectory reads back to the bits that were written. serde_json's
    /// default parser read -10.193407535552979, a projected gradient of a real run, as
    /// -10.19340753555298, which rounds to another f32: the replayed and resumed weights then
    /// differed from those of the uninterrupted run (hence its `float_roundtrip` feature).
    #[test]
    fn trajectories_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let grads: [f64; 4] =
            [-10.193407535552979, 1.4306604862213135, 3.6180317401885986, 0.46515464782714844];
        write(dir.path(), &grads);
        let t = read_trajectory(dir.path(), TornTail::Refuse).unwrap();
        assert_eq!(t.header, serde_json::json!({"seed": 42}));
        assert_eq!(t.steps.len(), grads.len());
        for (s, g) in t.steps.iter().zip(grads) {
            assert_eq!(s.projected_grad.map(f64::to_bits), Some(g.to_bits()), "step {}", s.step);
        }
    }

    #[test]
    fn a_torn_last_line_is_refused_by_replay_and_cut_off_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[0.5, 0.25, 0.125]);
        let full = std::fs::read(&path).unwrap();
        // A kill in the middle of writing step 3.
        std::fs::write(&path, &full[..full.len() - 20]).unwrap();
        let e = read_trajectory(dir.path(), TornTail::Refuse).unwrap_err();
        assert!(format!("{e:#}").contains("line 4") && format!("{e:#}").contains("--resume"), "{e:#}");
        let t = read_trajectory(dir.path(), TornTail::Repair).unwrap();
        assert_eq!(t.steps.len(), 2);
        let dist = Dist::single();
        let mut w = TrajectoryWriter::append(&dist, dir.path(), &t).unwrap();
        w.record(&serde_json::json!({"step": 3, "seed": 7, "projected_grad": 0.125, "lr": 1e-3})).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), full, "the repaired file is the uninterrupted one");
    }

    #[test]
    fn damage_before_the_last_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[0.5, 0.25, 0.125]);
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("0.25", "0.26", 1);
        std::fs::write(&path, edited).unwrap();
        for torn in [TornTail::Refuse, TornTail::Repair] {
            let e = read_trajectory(dir.path(), torn).unwrap_err();
            assert!(format!("{e:#}").contains("line 3 fails its checksum"), "{e:#}");
        }
        // A missing line breaks the chain too.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3])).unwrap();
        let e = read_trajectory(dir.path(), TornTail::Refuse).unwrap_err();
        assert!(format!("{e:#}").contains("line 3"), "{e:#}");
    }

    #[test]
    fn seeds_outside_the_stream_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dist = Dist::single();
        let mut w = TrajectoryWriter::create(&dist, dir.path(), &serde_json::json!({"seed": 1})).unwrap();
        w.record(&serde_json::json!({"step": 1, "seed": 1u64 << 40, "projected_grad": 1.0, "lr": 1e-3}))
            .unwrap();
        let e = read_trajectory(dir.path(), TornTail::Repair).unwrap_err();
        assert!(format!("{e:#}").contains("below 2^32"), "{e:#}");
    }
}
