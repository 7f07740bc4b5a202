//! Sweeps: one mezo command line run at every point of a grid of values.
//!
//! The papers' numbers are grids: MeZO's `mezo.sh` and LM-BFF's `finetune.sh` loop over tasks,
//! data seeds and learning rates, LM-Kernel-FT's `run_fewshot.sh` over tasks, seeds and kernel
//! formulas. A sweep is such a loop written down once, so that it can be run here point after
//! point or submitted as a Slurm job array, interrupted, and run again without redoing or losing
//! any point.
//!
//! A grid is a list of axes `KEY=V1,V2,...`; its points are their cartesian product, the last
//! axis varying fastest (as nested shell loops). A point's command line is the sweep's command
//! with, for each axis:
//! * every `{KEY}` in it replaced by the value, when the command names `{KEY}` anywhere (a data
//!   directory per seed: `--data-dir data/16-{seed}`);
//! * else the value of the flag `--KEY` replaced (`--KEY V` or `--KEY=V`), or `--KEY V` appended.
//!
//! The axis `ranks` is the number of MPI ranks of a point (substituted only where `{ranks}` is
//! written). Each point owns the directory `DIR/runs/<name>`, its name made of the point's
//! `key=value` pairs: `{dir}` in the command stands for it, and a command that names neither
//! `{dir}` nor `--out` gets `--out <that directory>` (a training run's directory). The sweep
//! directory holds
//! * `sweep.json`: the command, the grid and the points as expanded ([`Manifest`]);
//! * `runs/<name>/`: each point's output, where `mezo gather` and `mezo plot` find the runs;
//! * `status/<name>`: written when a point's command finished its work, so that running the sweep
//!   again skips it; a point stopped by a signal or killed has no status and runs again, which
//!   continues it (training runs resume from their trajectory, kernels from their `.partial`);
//! * `logs/`: each point's output when run here, each array task's under Slurm.

use crate::error::InputError;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The grid axis that sets a point's rank count.
pub const RANKS: &str = "ranks";
/// Stands for a point's own directory in the command line.
pub const DIR_PLACEHOLDER: &str = "{dir}";
pub const MANIFEST: &str = "sweep.json";

/// One axis of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// Parses `KEY=V1,V2,...`.
    pub fn parse(spec: &str) -> Result<Axis, InputError> {
        let bad = |why: &str| InputError(format!("--grid {spec}: {why}"));
        let (key, values) = spec.split_once('=').ok_or_else(|| bad("expected KEY=V1,V2,..."))?;
        let key = key.trim().trim_start_matches("--");
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("the key must be a flag name (letters, digits, '-', '_')"));
        }
        if key == "dir" {
            return Err(bad("`dir` is reserved: {dir} stands for each point's directory"));
        }
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(bad("an empty value"));
        }
        let mut unique = values.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != values.len() {
            return Err(bad("a value given twice"));
        }
        if key == RANKS && values.iter().any(|v| v.parse::<usize>().map_or(true, |n| n == 0)) {
            return Err(bad("ranks must be positive integers"));
        }
        Ok(Axis { key: key.to_string(), values })
    }
}

/// One point of the grid, its command line expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub index: usize,
    pub name: String,
    /// `(key, value)` in axis order.
    pub values: Vec<(String, String)>,
    pub ranks: usize,
    /// The mezo command line (without the program name).
    pub args: Vec<String>,
}

/// What `sweep.json` holds: the sweep as given and its points as expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub program: String,
    /// The command line with its placeholders, as given.
    pub command: Vec<String>,
    pub axes: Vec<Axis>,
    /// Ranks of each point when no axis sets them.
    pub ranks: usize,
    pub points: Vec<Point>,
}

impl Manifest {
    /// Expands `command` over the grid, each point's directory below `dir`.
    pub fn new(
        dir: &Path,
        command: Vec<String>,
        axes: Vec<Axis>,
        ranks: usize,
    ) -> Result<Manifest, InputError> {
        if command.is_empty() {
            return Err(InputError("mezo sweep needs the command to run, after `--`".into()));
        }
        if axes.is_empty() {
            return Err(InputError("mezo sweep needs at least one --grid KEY=V1,V2,...".into()));
        }
        if ranks == 0 {
            return Err(InputError("--ranks must be positive".into()));
        }
        for (i, axis) in axes.iter().enumerate() {
            if axes[..i].iter().any(|a| a.key == axis.key) {
                return Err(InputError(format!("--grid {}: the key is given twice", axis.key)));
            }
        }
        let mut points = Vec::new();
        for (index, values) in product(&axes).into_iter().enumerate() {
            let name = point_name(&values);
            if let Some(other) = points.iter().find(|p: &&Point| p.name == name) {
                return Err(InputError(format!(
                    "grid points {:?} and {:?} get the same directory name {name}: use values that differ in \
                     letters, digits, '.', '+' or '-'",
                    other.values, values
                )));
            }
            let point_ranks = values
                .iter()
                .find(|(k, _)| k == RANKS)
                .map_or(ranks, |(_, v)| v.parse().expect("checked by parse"));
            let args = expand(&command, &values, &point_dir(dir, &name))?;
            points.push(Point { index, name, values, ranks: point_ranks, args });
        }
        Ok(Manifest { program: format!("mezo {}", env!("CARGO_PKG_VERSION")), command, axes, ranks, points })
    }

    /// Reads `dir/sweep.json` and expands it again for where `dir` is now.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let recorded: Manifest = serde_json::from_str(&text)
            .map_err(|e| InputError(format!("{}: not a sweep manifest ({e})", path.display())))?;
        Ok(Some(Manifest::new(dir, recorded.command, recorded.axes, recorded.ranks)?))
    }

    /// Writes `dir/sweep.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::fsio::write_atomic(&dir.join(MANIFEST), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// Why `other` (a sweep given again) is not this sweep, if it is not.
    pub fn difference(&self, other: &Manifest) -> Option<String> {
        if self.command != other.command {
            Some(format!("its command is {:?}", self.command))
        } else if self.axes != other.axes {
            let axes: Vec<String> =
                self.axes.iter().map(|a| format!("{}={}", a.key, a.values.join(","))).collect();
            Some(format!("its grid is {}", axes.join(" ")))
        } else if self.ranks != other.ranks {
            Some(format!("its points run as {} rank(s)", self.ranks))
        } else {
            None
        }
    }

    pub fn point(&self, name_or_index: &str) -> Result<&Point, InputError> {
        self.points
            .iter()
            .find(|p| p.name == name_or_index || p.index.to_string() == name_or_index)
            .ok_or_else(|| InputError(format!("the sweep has no point {name_or_index}")))
    }
}

/// The cartesian product of the axes, the last varying fastest.
fn product(axes: &[Axis]) -> Vec<Vec<(String, String)>> {
    axes.iter().fold(vec![Vec::new()], |points, axis| {
        points
            .iter()
            .flat_map(|point| {
                axis.values.iter().map(move |value| {
                    let mut next = point.clone();
                    next.push((axis.key.clone(), value.clone()));
                    next
                })
            })
            .collect()
    })
}

/// `lr=1e-6,seed=13`: each value kept to letters, digits and `.+-` (others become `_`).
fn point_name(values: &[(String, String)]) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || ".+-".contains(c) { c } else { '_' }).collect()
    };
    values.iter().map(|(k, v)| format!("{}={}", clean(k), clean(v))).collect::<Vec<_>>().join(",")
}

/// The directory of the point named `name`.
pub fn point_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("runs").join(name)
}

fn status_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("status").join(name)
}

/// Whether the point named `name` has finished its work.
pub fn is_done(dir: &Path, name: &str) -> bool {
    status_path(dir, name).is_file()
}

/// Records that the point named `name` finished its work.
pub fn mark_done(dir: &Path, name: &str) -> Result<()> {
    let path = status_path(dir, name);
    std::fs::create_dir_all(path.parent().expect("below the sweep directory"))
        .with_context(|| format!("creating {}", dir.join("status").display()))?;
    let seconds =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::fsio::write_atomic(&path, format!("{{\"finished\": {seconds}}}\n").as_bytes())
}

/// The command line of one point: placeholders filled, flags set, `--out` added where needed.
fn expand(
    command: &[String],
    values: &[(String, String)],
    point_dir: &Path,
) -> Result<Vec<String>, InputError> {
    let mut args = command.to_vec();
    for (key, value) in values {
        let placeholder = format!("{{{key}}}");
        if args.iter().any(|a| a.contains(&placeholder)) {
            for arg in &mut args {
                *arg = arg.replace(&placeholder, value);
            }
        } else if key != RANKS {
            set_flag(&mut args, key, value)?;
        }
    }
    let dir = point_dir.to_string_lossy();
    if args.iter().any(|a| a.contains(DIR_PLACEHOLDER)) {
        for arg in &mut args {
            *arg = arg.replace(DIR_PLACEHOLDER, &dir);
        }
    } else if args.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        return Err(InputError(
            "the command's --out would be the same for every point: write {dir} in it (e.g. --out {dir}/kernel.h5), \
             or leave --out out to get each point's directory"
                .into(),
        ));
    } else {
        args.extend(["--out".to_string(), dir.into_owned()]);
    }
    if let Some(left) = args.iter().find_map(|a| unknown_placeholder(a)) {
        return Err(InputError(format!("{{{left}}} in the command is not a grid key")));
    }
    Ok(args)
}

/// Sets `--key value` in `args`: replaces the value given, or appends the flag.
pub fn set_flag(args: &mut Vec<String>, key: &str, value: &str) -> Result<(), InputError> {
    let flag = format!("--{key}");
    let joined = format!("{flag}=");
    if let Some(i) = args.iter().position(|a| *a == flag) {
        if i + 1 >= args.len() {
            return Err(InputError(format!("{flag} ends the command without a value")));
        }
        args[i + 1] = value.to_string();
    } else if let Some(i) = args.iter().position(|a| a.starts_with(&joined)) {
        args[i] = format!("{joined}{value}");
    } else {
        args.extend([flag, value.to_string()]);
    }
    Ok(())
}

/// The value of `--key` in `args` (`--key V` or `--key=V`), if given.
pub fn flag_value(args: &[String], key: &str) -> Option<String> {
    let flag = format!("--{key}");
    let joined = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&joined).map(str::to_string)
        }
    })
}

/// A `{name}` left in `arg`, if any.
fn unknown_placeholder(arg: &str) -> Option<String> {
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        if let Some(end) = after.find('}') {
            let name = &after[..end];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Some(name.to_string());
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn points_are_the_product_last_axis_fastest() {
        let axes = vec![Axis::parse("lr=1e-6,1e-7").unwrap(), Axis::parse("seed=13,21").unwrap()];
        let command = strings(&["train", "--task", "sst-2", "--data-dir", "data/16-{seed}", "--lr", "1e-3"]);
        let m = Manifest::new(Path::new("S"), command, axes, 1).unwrap();
        let names: Vec<&str> = m.points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["lr=1e-6,seed=13", "lr=1e-6,seed=21", "lr=1e-7,seed=13", "lr=1e-7,seed=21"]);
        assert_eq!(
            m.points[1].args,
            strings(&[
                "train",
                "--task",
                "sst-2",
                "--data-dir",
                "data/16-21",
                "--lr",
                "1e-6",
                "--out",
                "S/runs/lr=1e-6,seed=21"
            ])
        );
    }

    #[test]
    fn flags_are_set_or_appended_and_dir_is_substituted() {
        let axes = vec![Axis::parse("formula=sgd,signgd").unwrap(), Axis::parse("ranks=1,2").unwrap()];
        let command = strings(&["kernel", "--formula=x", "--out", "{dir}/k.h5"]);
        let m = Manifest::new(Path::new("S"), command, axes, 1).unwrap();
        assert_eq!(m.points.len(), 4);
        assert_eq!(
            m.points[3].args,
            strings(&["kernel", "--formula=signgd", "--out", "S/runs/formula=signgd,ranks=2/k.h5"])
        );
        assert_eq!(m.points.iter().map(|p| p.ranks).collect::<Vec<_>>(), [1, 2, 1, 2]);
        let axes = vec![Axis::parse("eps=1e-3").unwrap()];
        let m = Manifest::new(Path::new("S"), strings(&["train", "--seed", "1"]), axes, 3).unwrap();
        assert_eq!(
            m.points[0].args,
            strings(&["train", "--seed", "1", "--eps", "1e-3", "--out", "S/runs/eps=1e-3"])
        );
        assert_eq!(m.points[0].ranks, 3);
    }

    #[test]
    fn bad_grids_and_commands_are_input_errors() {
        for spec in ["lr", "=1", "lr=", "lr=1,,2", "lr=1,1", "ranks=0", "ranks=two", "dir=a", "a b=1"] {
            assert!(Axis::parse(spec).is_err(), "{spec}");
        }
        let axes = || vec![Axis::parse("seed=1,2").unwrap()];
        let new = |c: &[&str]| Manifest::new(Path::new("S"), strings(c), axes(), 1);
        assert!(new(&[]).unwrap_err().0.contains("after `--`"));
        assert!(new(&["kernel", "--out", "k.h5"]).unwrap_err().0.contains("same for every point"));
        assert!(new(&["train", "--data-dir", "d/{sed}"]).unwrap_err().0.contains("{sed}"));
        assert!(new(&["train", "--lr", "1", "--seed"]).unwrap_err().0.contains("without a value"));
        let twice = vec![Axis::parse("seed=1").unwrap(), Axis::parse("seed=2").unwrap()];
        assert!(Manifest::new(Path::new("S"), strings(&["train"]), twice, 1).is_err());
        let clash = vec![Axis::parse("data=a/b,a_b").unwrap()];
        assert!(Manifest::new(Path::new("S"), strings(&["train"]), clash, 1)
            .unwrap_err()
            .0
            .contains("same directory"));
    }

    #[test]
    fn a_manifest_round_trips_and_tells_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::new(dir.path(), strings(&["train"]), vec![Axis::parse("seed=1,2").unwrap()], 1)
            .unwrap();
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap().unwrap(), m);
        let other = Manifest::new(dir.path(), strings(&["train"]), vec![Axis::parse("seed=1,3").unwrap()], 1)
            .unwrap();
        assert!(m.difference(&other).unwrap().contains("seed=1,2"));
        assert!(m.difference(&m.clone()).is_none());
        assert!(!is_done(dir.path(), "seed=1"));
        mark_done(dir.path(), "seed=1").unwrap();
        assert!(is_done(dir.path(), "seed=1"));
        assert_eq!(m.point("1").unwrap().name, "seed=2");
        assert!(m.point("seed=9").is_err());
    }
}
