//! One HDF5 file shared by all ranks, written in row blocks with collective MPI-IO.
//!
//! Kernel matrices are [N, C, M, C] arrays whose leading axis (train examples) is split over ranks.
//! Each rank writes its own rows, and all ranks do so in *one* collective `H5Dwrite`, which lets
//! MPI-IO aggregate the blocks into few large contiguous writes. hdf5-metno's typed writers always
//! use independent I/O, so the transfers here go through `hdf5-sys` with an MPI-IO collective
//! transfer property list.
//!
//! Every metadata operation of parallel HDF5 (create, open, dataset and attribute creation, close)
//! is collective: all ranks call these methods in the same order with the same arguments. Without
//! MPI the same code runs on the default (POSIX) driver.
//!
//! A file made with [`H5File::create`] lives under a `.partial` name until [`H5File::commit`]
//! has closed it, synced it to disk and renamed it, so that a crashed run or a full disk never
//! leaves a file that looks complete.
//!
//! Closing is collective too, so an [`H5File`] dropped without [`H5File::commit`] or
//! [`H5File::close`] (a rank leaving on an error while the others wait in a collective write) is
//! not closed under MPI: the rank goes on to end the job (MPI_Abort) instead of waiting forever in
//! a close the others never reach. Alone, a dropped file is closed as usual.

use crate::dist::Dist;
use anyhow::{bail, ensure, Context, Result};
use hdf5::{Dataset, H5Type};
use hdf5_sys::h5d::{H5D_mpio_actual_io_mode_t, H5Dread, H5Dwrite};
use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5p::{H5FD_mpio_xfer_t, H5Pclose, H5Pcreate, H5Pset_dxpl_mpio, H5P_CLS_DATASET_XFER};
use hdf5_sys::h5s::{H5S_seloper_t, H5Sselect_hyperslab, H5Sselect_none};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An open HDF5 file, shared by all ranks of a [`Dist`].
#[derive(Debug)]
pub struct H5File {
    /// Closed by [`H5File::commit`], [`H5File::close`], or by `drop` when not collective.
    file: ManuallyDrop<hdf5::File>,
    path: PathBuf,
    /// Where [`H5File::commit`] moves the file; `None` for files opened in place.
    final_path: Option<PathBuf>,
    collective: bool,
}

pub use crate::fsio::partial_path;

impl H5File {
    /// Creates (truncates) `partial_path(path)`; collective.
    pub fn create(dist: &Dist, path: &Path) -> Result<H5File> {
        Self::partial(dist, path, true)
    }

    /// Reopens the `.partial` file of an interrupted [`H5File::create`] for writing; collective.
    pub fn resume(dist: &Dist, path: &Path) -> Result<H5File> {
        Self::partial(dist, path, false)
    }

    fn partial(dist: &Dist, path: &Path, create: bool) -> Result<H5File> {
        let partial = partial_path(path);
        let file = if create { builder(dist).create(&partial) } else { builder(dist).open_rw(&partial) }
            .with_context(|| {
                format!("{} HDF5 file {}", if create { "creating" } else { "reopening" }, partial.display())
            })?;
        Ok(H5File {
            file: ManuallyDrop::new(file),
            path: partial,
            final_path: Some(path.to_owned()),
            collective: dist.uses_mpi(),
        })
    }

    /// Opens a complete file for reading; collective.
    pub fn open(dist: &Dist, path: &Path) -> Result<H5File> {
        let file =
            builder(dist).open(path).with_context(|| format!("opening HDF5 file {}", path.display()))?;
        Ok(H5File {
            file: ManuallyDrop::new(file),
            path: path.to_owned(),
            final_path: None,
            collective: dist.uses_mpi(),
        })
    }

    /// The underlying file, for attributes and groups (collective when writing). Handles taken
    /// from it must be dropped before [`H5File::commit`]: parallel HDF5 does not close a file
    /// with open objects.
    pub fn file(&self) -> &hdf5::File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a dataset of `shape`; collective.
    pub fn create_dataset<T: H5Type>(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.file
            .new_dataset::<T>()
            .shape(shape)
            .create(name)
            .with_context(|| format!("creating dataset '{name}' {shape:?} in {}", self.path.display()))?;
        Ok(())
    }

    /// Shape of dataset `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.dataset(name)?.shape())
    }

    /// Writes `block` into rows `first_row..first_row + block.shape()[0]` of dataset `name`.
    /// Collective: every rank calls it once, a rank without rows passes a block with zero rows.
    /// Returns how HDF5 actually carried the transfer out.
    pub fn write_rows<T: H5Type + Clone>(
        &self,
        name: &str,
        first_row: usize,
        block: ArrayViewD<T>,
    ) -> Result<TransferMode> {
        let dataset = self.dataset(name)?;
        let rows = rows_of(name, &dataset, first_row, block.shape())?;
        let mut offset = vec![0; block.ndim()];
        offset[0] = rows.start;
        self.write_block(name, &offset, block)
    }

    /// Writes `block` at `offset` (one index per axis) of dataset `name`, e.g. rows along the
    /// second axis of a `[2, N, ...]` dataset. Collective like [`H5File::write_rows`]; a rank with
    /// nothing to write passes a block with a zero-length axis.
    pub fn write_block<T: H5Type + Clone>(
        &self,
        name: &str,
        offset: &[usize],
        block: ArrayViewD<T>,
    ) -> Result<TransferMode> {
        let dataset = self.dataset(name)?;
        let block = block.as_standard_layout();
        let shape = dataset.shape();
        ensure!(
            offset.len() == shape.len()
                && block.ndim() == shape.len()
                && (0..shape.len()).all(|a| offset[a] + block.shape()[a] <= shape[a]),
            "a block of shape {:?} at {offset:?} does not fit dataset '{name}' {shape:?}",
            block.shape()
        );
        // SAFETY: `block` is contiguous, of the memory space's shape, and outlives the call.
        self.transfer::<T>(&dataset, offset, block.shape(), |ds, mem_t, mspace, fspace, dxpl| unsafe {
            H5Dwrite(ds, mem_t, mspace, fspace, dxpl, block.as_ptr().cast())
        })
        .with_context(|| format!("writing at {offset:?} of dataset '{name}' in {}", self.path.display()))
    }

    /// Reads `rows` (all trailing axes) of dataset `name`. Collective like [`H5File::write_rows`].
    pub fn read_rows<T: H5Type + Clone + Default>(
        &self,
        name: &str,
        rows: Range<usize>,
    ) -> Result<ArrayD<T>> {
        let dataset = self.dataset(name)?;
        let mut shape = dataset.shape();
        ensure!(!shape.is_empty(), "dataset '{name}' is a scalar");
        shape[0] = rows.len();
        let mut out = ArrayD::<T>::default(IxDyn(&shape));
        let rows = rows_of(name, &dataset, rows.start, &shape)?;
        let mut offset = vec![0; shape.len()];
        offset[0] = rows.start;
        let ptr = out.as_mut_ptr();
        // SAFETY: `out` is a fresh contiguous array of the memory space's shape.
        self.transfer::<T>(&dataset, &offset, &shape, |ds, mem_t, mspace, fspace, dxpl| unsafe {
            H5Dread(ds, mem_t, mspace, fspace, dxpl, ptr.cast())
        })
        .with_context(|| format!("reading dataset '{name}' of {}", self.path.display()))?;
        Ok(out)
    }

    fn dataset(&self, name: &str) -> Result<Dataset> {
        self.file.dataset(name).with_context(|| format!("no dataset '{name}' in {}", self.path.display()))
    }

    /// Takes the file out of `self`, which then drops without closing anything.
    fn into_parts(self) -> (hdf5::File, PathBuf, Option<PathBuf>) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so each field is moved out exactly once.
        unsafe {
            (ManuallyDrop::take(&mut this.file), std::ptr::read(&this.path), std::ptr::read(&this.final_path))
        }
    }

    /// Closes the file; collective.
    pub fn close(self) -> Result<()> {
        let (file, path, _) = self.into_parts();
        file.close().with_context(|| format!("closing {}", path.display()))
    }

    /// Closes the file, syncs it to disk and, for a created file, renames it to its final name;
    /// collective. Every rank returns the same outcome.
    pub fn commit(self, dist: &Dist) -> Result<PathBuf> {
        let (file, path, final_path) = self.into_parts();
        let closed = file.close().with_context(|| format!("closing {}", path.display()));
        let done = final_path.unwrap_or_else(|| path.clone());
        let mut failed = [u8::from(closed.is_err())];
        dist.all_reduce(&mut failed, crate::dist::Reduce::Max);
        closed?;
        if failed[0] != 0 {
            bail!(crate::error::all_ranks_error(format!("another rank could not close {}", path.display())));
        }
        if done != path {
            dist.on_root(|| {
                crate::fsio::sync_file(&path).and_then(|()| crate::fsio::rename_synced(&path, &done))
            })?;
        }
        Ok(done)
    }

    /// Transfers the hyperslab `offset .. offset + count` of `dataset` (an empty selection when
    /// any count is 0).
    fn transfer<T: H5Type>(
        &self,
        dataset: &Dataset,
        offset: &[usize],
        count: &[usize],
        io: impl FnOnce(hid_t, hid_t, hid_t, hid_t, hid_t) -> i32,
    ) -> Result<TransferMode> {
        let empty = count.contains(&0);
        let count: Vec<u64> = count.iter().map(|&c| c as u64).collect();
        let start: Vec<u64> = offset.iter().map(|&o| o as u64).collect();
        let file_space = dataset.space()?;
        let mem_space = hdf5::Dataspace::try_new(count.iter().map(|&c| c as usize).collect::<Vec<_>>())?;
        let mem_type = hdf5::Datatype::from_type::<T>()?;
        let collective = self.collective;
        let mut mode = H5D_mpio_actual_io_mode_t::H5D_MPIO_NO_COLLECTIVE;
        let mut failure = String::new();
        let rc = hdf5::sync::sync(|| unsafe {
            // SAFETY: ids are valid for the duration; start/count have the dataset's rank.
            let selected = if empty {
                H5Sselect_none(file_space.id()).min(H5Sselect_none(mem_space.id()))
            } else {
                H5Sselect_hyperslab(
                    file_space.id(),
                    H5S_seloper_t::H5S_SELECT_SET,
                    start.as_ptr(),
                    std::ptr::null(),
                    count.as_ptr(),
                    std::ptr::null(),
                )
            };
            if selected < 0 {
                return selected;
            }
            let dxpl = H5Pcreate(*H5P_CLS_DATASET_XFER);
            if collective {
                H5Pset_dxpl_mpio(dxpl, H5FD_mpio_xfer_t::H5FD_MPIO_COLLECTIVE);
            }
            let rc = io(dataset.id(), mem_type.id(), mem_space.id(), file_space.id(), dxpl);
            if rc < 0 {
                failure = last_hdf5_error();
            }
            if collective && rc >= 0 {
                H5Pget_mpio_actual_io_mode(dxpl, &mut mode);
            }
            H5Pclose(dxpl);
            rc
        });
        if rc < 0 {
            // MPI-IO reports its own error classes, which seldom carry the OS error: say how much
            // room the file system has, which tells a full disk at once.
            let needed = count.iter().product::<u64>() * std::mem::size_of::<T>() as u64;
            if let Some(limit) = crate::fsio::file_size_limit() {
                let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
                if size + needed > limit {
                    failure +=
                        &format!(" (File too large: the file-size limit, ulimit -f, is {limit} bytes)");
                }
            }
            if !failure.contains("No space left") && !failure.contains("File too large") {
                if let Some(free) = crate::fsio::free_space(&self.path) {
                    failure += &format!(" ({free} bytes free on the file system of {}", self.path.display());
                    failure += &if free < needed {
                        format!(", this write needs {needed}: No space left on device)")
                    } else {
                        ")".to_string()
                    };
                }
            }
            bail!("HDF5 transfer failed: {failure}");
        }
        Ok(match mode {
            H5D_mpio_actual_io_mode_t::H5D_MPIO_NO_COLLECTIVE => TransferMode::Independent,
            _ => TransferMode::Collective,
        })
    }
}

impl Drop for H5File {
    fn drop(&mut self) {
        if !self.collective {
            // SAFETY: the file is not used again; commit and close never reach this drop.
            unsafe { ManuallyDrop::drop(&mut self.file) }
        }
    }
}

/// What the HDF5 error stack says of the last failure: the operating system's message (a full
/// disk, a lost file system) when a frame carries one, else the top frame's description.
fn last_hdf5_error() -> String {
    let Ok(error) = hdf5::Error::query() else { return "unknown HDF5 error".into() };
    let Some(stack) = error.stack() else { return error.to_string() };
    stack
        .iter()
        .find_map(|frame| {
            let after = frame.description().split("error message = '").nth(1)?;
            after.split('\'').next().map(str::to_string)
        })
        .unwrap_or_else(|| error.to_string())
}

/// The rows a block of `block_shape` covers at `first_row`, checked against the dataset.
fn rows_of(name: &str, dataset: &Dataset, first_row: usize, block_shape: &[usize]) -> Result<Range<usize>> {
    let shape = dataset.shape();
    ensure!(
        block_shape.len() == shape.len() && block_shape[1..] == shape[1..],
        "block of shape {block_shape:?} does not fit rows of dataset '{name}' {shape:?}"
    );
    let rows = first_row..first_row + block_shape[0];
    ensure!(rows.end <= shape[0], "rows {rows:?} are outside dataset '{name}' {shape:?}");
    Ok(rows)
}

/// How HDF5 carried out a transfer (`H5Pget_mpio_actual_io_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMode {
    /// Each rank on its own: always the case without MPI.
    Independent,
    /// One collective MPI-IO operation.
    Collective,
}

extern "C" {
    // Exported by parallel libhdf5 but not bound by hdf5-metno-sys.
    fn H5Pget_mpio_actual_io_mode(dxpl: hid_t, mode: *mut H5D_mpio_actual_io_mode_t) -> i32;
}

fn builder(dist: &Dist) -> hdf5::file::FileBuilder {
    let mut builder = hdf5::File::with_options();
    if let Some(comm) = dist.raw_comm() {
        builder.with_fapl(|p| p.mpio(comm, None));
    }
    // No sieve buffer: HDF5 1.10 drops the write errors of a sieve buffer flush (a full disk
    // returned success and left zeros where rows should be), while a direct write reports them.
    // Row blocks are large contiguous writes, which a sieve buffer does not speed up.
    builder.with_fapl(|p| p.sieve_buf_size(0));
    builder
}

/// HDF5 library version, and whether it was built with MPI-IO (read from the library's own
/// configuration summary, so it describes the library actually loaded).
pub fn library_info() -> (String, bool) {
    let (major, minor, release) = hdf5::library_version();
    extern "C" {
        // A NUL-terminated configuration summary that libhdf5 exports.
        static H5libhdf5_settings: std::ffi::c_char;
    }
    // SAFETY: the symbol is a NUL-terminated string constant of the loaded libhdf5.
    let settings = unsafe { std::ffi::CStr::from_ptr(&raw const H5libhdf5_settings) };
    let parallel = settings
        .to_string_lossy()
        .lines()
        .any(|l| l.trim_start().starts_with("Parallel HDF5:") && l.trim_end().ends_with("yes"));
    (format!("{major}.{minor}.{release}"), parallel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn single_process_blocks_round_trip_through_partial_name() {
        let dist = Dist::single();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.h5");
        let f = H5File::create(&dist, &path).unwrap();
        assert!(partial_path(&path).exists() && !path.exists());
        f.create_dataset::<f64>("train", &[5, 2, 3, 2]).unwrap();
        let all = Array::from_shape_fn(IxDyn(&[5, 2, 3, 2]), |i| {
            (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f64 + 0.25
        });
        let mode = f.write_rows("train", 0, all.slice(ndarray::s![0..3, .., .., ..]).into_dyn()).unwrap();
        assert_eq!(mode, TransferMode::Independent);
        f.write_rows("train", 3, all.slice(ndarray::s![3..3, .., .., ..]).into_dyn()).unwrap();
        f.write_rows("train", 3, all.slice(ndarray::s![3..5, .., .., ..]).into_dyn()).unwrap();
        assert_eq!(
            f.read_rows::<f64>("train", 1..4).unwrap(),
            all.slice(ndarray::s![1..4, .., .., ..]).into_dyn()
        );
        let done = f.commit(&dist).unwrap();
        assert_eq!(done, path);
        assert!(path.exists() && !partial_path(&path).exists());
        let f = H5File::open(&dist, &path).unwrap();
        assert_eq!(f.shape("train").unwrap(), [5, 2, 3, 2]);
        assert_eq!(f.read_rows::<f64>("train", 0..5).unwrap(), all);
        assert!(f.read_rows::<f64>("test", 0..1).unwrap_err().to_string().contains("'test'"));
    }

    #[test]
    fn an_interrupted_file_resumes() {
        let dist = Dist::single();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.h5");
        assert!(H5File::resume(&dist, &path).unwrap_err().to_string().contains("reopening HDF5 file"));
        let f = H5File::create(&dist, &path).unwrap();
        f.create_dataset::<i64>("rows", &[4, 2]).unwrap();
        let first = ArrayD::from_shape_fn(IxDyn(&[2, 2]), |i| (i[0] * 2 + i[1]) as i64);
        f.write_rows("rows", 0, first.view()).unwrap();
        drop(f); // interrupted: never committed
        assert!(!path.exists());
        let f = H5File::resume(&dist, &path).unwrap();
        let rest = ArrayD::from_shape_fn(IxDyn(&[2, 2]), |i| (4 + i[0] * 2 + i[1]) as i64);
        f.write_rows("rows", 2, rest.view()).unwrap();
        f.commit(&dist).unwrap();
        let f = H5File::open(&dist, &path).unwrap();
        let all: Vec<i64> = f.read_rows::<i64>("rows", 0..4).unwrap().into_iter().collect();
        assert_eq!(all, (0..8).collect::<Vec<i64>>());
    }

    #[test]
    fn blocks_that_do_not_fit_are_errors() {
        let dist = Dist::single();
        let dir = tempfile::tempdir().unwrap();
        let f = H5File::create(&dist, &dir.path().join("bad.h5")).unwrap();
        f.create_dataset::<i64>("labels", &[4, 3]).unwrap();
        let wrong_width = ArrayD::<i64>::zeros(IxDyn(&[2, 2]));
        let e = f.write_rows("labels", 0, wrong_width.view()).unwrap_err();
        assert!(format!("{e:#}").contains("does not fit") && format!("{e:#}").contains("'labels'"), "{e:#}");
        let too_far = ArrayD::<i64>::zeros(IxDyn(&[2, 3]));
        assert!(format!("{:#}", f.write_rows("labels", 3, too_far.view()).unwrap_err()).contains("outside"));
    }

    #[test]
    fn linked_hdf5_is_parallel() {
        let (version, parallel) = library_info();
        assert!(version.starts_with("1."), "{version}");
        assert!(parallel, "mezo is built against parallel HDF5; found a serial one");
    }
}
