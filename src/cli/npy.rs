//! Reading and writing the .npy files of `run`.
//!
//! Inputs may be little- or big-endian and in C or Fortran order; they are returned row-major.
//! Outputs are written to a temporary file next to the target and renamed into place only after
//! every output of the command has been written, so a failed command leaves no partial file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use npyz::{AutoSerialize, Deserialize, NpyFile, Order, TypeChar, WriterBuilder};
use sigsoftmax::{f16, DType, Element};

use super::{cli_error, CliError};

/// The values of a float .npy file, in its own type.
pub enum FloatData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A float array read from a .npy file, row-major.
pub struct FloatArray {
    pub shape: Vec<usize>,
    pub data: FloatData,
}

impl FloatArray {
    /// Returns the storage type matching the file's type.
    pub fn dtype(&self) -> DType {
        match self.data {
            FloatData::F16(_) => DType::F16,
            FloatData::F32(_) => DType::F32,
            FloatData::F64(_) => DType::F64,
        }
    }

    /// Converts the values to the storage type `T`, rounding to nearest even where `T` is
    /// narrower (each value is widened to f64 exactly and rounded once).
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        match &self.data {
            FloatData::F16(values) => values.iter().map(|v| T::from_f64(v.to_f64())).collect(),
            FloatData::F32(values) => values.iter().map(|&v| T::from_f64(f64::from(v))).collect(),
            FloatData::F64(values) => values.iter().map(|&v| T::from_f64(v)).collect(),
        }
    }
}

/// Reads a float16, float32 or float64 .npy file; `role` names it in messages ("logits").
pub fn read_float(path: &Path, role: &str) -> Result<FloatArray, CliError> {
    let npy = open(path, role)?;
    let shape = shape_of(&npy, path, role)?;
    let order = npy.order();
    let data = match plain_type(&npy) {
        Some((TypeChar::Float, 2)) => FloatData::F16(read_values(npy, &shape, order, path, role)?),
        Some((TypeChar::Float, 4)) => FloatData::F32(read_values(npy, &shape, order, path, role)?),
        Some((TypeChar::Float, 8)) => FloatData::F64(read_values(npy, &shape, order, path, role)?),
        _ => {
            return Err(cli_error!(
                "{role} file `{}` has dtype {} but must be float16, float32 or float64; \
                 convert it, for example with array.astype(numpy.float32)",
                path.display(),
                describe_dtype(&npy)
            ));
        }
    };
    Ok(FloatArray { shape, data })
}

/// Reads an int32 or int64 .npy file of any shape into i64 values and its shape.
pub fn read_int(path: &Path, role: &str) -> Result<(Vec<usize>, Vec<i64>), CliError> {
    let npy = open(path, role)?;
    let shape = shape_of(&npy, path, role)?;
    let order = npy.order();
    let values = match plain_type(&npy) {
        Some((TypeChar::Int, 4)) => {
            let values: Vec<i32> = read_values(npy, &shape, order, path, role)?;
            values.into_iter().map(i64::from).collect()
        }
        Some((TypeChar::Int, 8)) => read_values(npy, &shape, order, path, role)?,
        _ => {
            return Err(cli_error!(
                "{role} file `{}` has dtype {} but must be int32 or int64; \
                 convert it, for example with array.astype(numpy.int64)",
                path.display(),
                describe_dtype(&npy)
            ));
        }
    };
    Ok((shape, values))
}

fn open(path: &Path, role: &str) -> Result<NpyFile<BufReader<File>>, CliError> {
    let file = File::open(path).map_err(|error| {
        let hint = match error.kind() {
            std::io::ErrorKind::NotFound => "; check the path",
            _ => "",
        };
        cli_error!(
            "failed to open {role} file `{}`: {error}{hint}",
            path.display()
        )
    })?;
    NpyFile::new(BufReader::new(file)).map_err(|error| {
        cli_error!(
            "{role} file `{}` is not a valid .npy file ({error}); write it with numpy.save",
            path.display()
        )
    })
}

fn shape_of<R: std::io::Read>(
    npy: &NpyFile<R>,
    path: &Path,
    role: &str,
) -> Result<Vec<usize>, CliError> {
    let too_large = || {
        cli_error!(
            "{role} file `{}` has shape {:?}, too large for this machine",
            path.display(),
            npy.shape()
        )
    };
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&dim| usize::try_from(dim).map_err(|_| too_large()))
        .collect::<Result<_, _>>()?;
    shape
        .iter()
        .try_fold(1usize, |len, &dim| len.checked_mul(dim))
        .ok_or_else(too_large)?;
    Ok(shape)
}

/// Returns the type character and byte size of a plain (not structured) dtype.
fn plain_type<R: std::io::Read>(npy: &NpyFile<R>) -> Option<(TypeChar, u64)> {
    match npy.dtype() {
        npyz::DType::Plain(type_str) => Some((type_str.type_char(), type_str.size_field())),
        _ => None,
    }
}

fn describe_dtype<R: std::io::Read>(npy: &NpyFile<R>) -> String {
    match npy.dtype() {
        npyz::DType::Plain(type_str) => format!("`{type_str}`"),
        other => format!("`{}` (a structured type)", other.descr()),
    }
}

/// Reads every element and reorders a Fortran-order 2-D array to row-major.
fn read_values<T: Deserialize + Copy, R: std::io::Read>(
    npy: NpyFile<R>,
    shape: &[usize],
    order: Order,
    path: &Path,
    role: &str,
) -> Result<Vec<T>, CliError> {
    let len: usize = shape.iter().product();
    let read_error = |error: std::io::Error| {
        cli_error!(
            "failed to read {role} file `{}`: {error}; check that the file is complete",
            path.display()
        )
    };
    let reader = npy
        .data::<T>()
        .map_err(|error| read_error(std::io::Error::other(error)))?;

    let mut values = Vec::new();
    values.try_reserve_exact(len).map_err(|_| {
        cli_error!(
            "failed to allocate memory for {role} file `{}`",
            path.display()
        )
    })?;
    for value in reader {
        values.push(value.map_err(read_error)?);
    }

    // Element (r, c) of a Fortran-order [rows, cols] array is stored at c * rows + r. Other
    // ranks are rejected by the callers, and order does not matter for 0-d and 1-d arrays.
    if order == Order::Fortran && shape.len() == 2 {
        let (rows, cols) = (shape[0], shape[1]);
        let mut row_major = Vec::with_capacity(len);
        for r in 0..rows {
            row_major.extend((0..cols).map(|c| values[c * rows + r]));
        }
        values = row_major;
    }
    Ok(values)
}

/// Values ready to be written, in the type the output file gets.
pub enum OutputData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl OutputData {
    /// Converts values computed in storage type `T` to the output type: float64 for f64,
    /// float16 for f16 and float32 otherwise (exact for f32 and bf16, as numpy has no bf16).
    pub fn from_storage<T: Element>(values: &[T]) -> Self {
        Self::from_f64_values(T::DTYPE, values.iter().map(|value| value.to_f64()))
    }

    /// Converts values held as f64 to the output type of storage type `dtype` (see
    /// [`OutputData::from_storage`]) except that f16 gives float32: use it for losses, which
    /// the library computes in at least f32.
    pub fn losses(dtype: DType, values: impl Iterator<Item = f64>) -> Self {
        match dtype {
            DType::F64 => OutputData::F64(values.collect()),
            _ => OutputData::F32(values.map(|value| value as f32).collect()),
        }
    }

    fn from_f64_values(dtype: DType, values: impl Iterator<Item = f64>) -> Self {
        match dtype {
            DType::F64 => OutputData::F64(values.collect()),
            DType::F16 => OutputData::F16(values.map(f16::from_f64).collect()),
            DType::F32 | DType::BF16 => OutputData::F32(values.map(|value| value as f32).collect()),
        }
    }
}

/// An output written to a temporary file. [`PendingOutput::commit`] renames it into place, and
/// dropping it uncommitted deletes it.
pub struct PendingOutput {
    temporary: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingOutput {
    /// Renames the temporary file to the target path.
    pub fn commit(mut self) -> Result<(), CliError> {
        std::fs::rename(&self.temporary, &self.target).map_err(|error| {
            cli_error!(
                "failed to move `{}` to `{}`: {error}",
                self.temporary.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file may already be gone, and a drop cannot report an error.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Checks that `target` can name an output file: not a folder, in a folder that exists. Run it
/// before the work, so a typo in the path fails fast.
pub fn check_output_path(target: &Path, role: &str) -> Result<(), CliError> {
    let text = target.as_os_str().to_string_lossy();
    if target.is_dir() || text.ends_with(std::path::is_separator) {
        return Err(cli_error!(
            "{role} path `{}` is a folder; pass a file path such as out.npy",
            target.display()
        ));
    }
    let folder = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(cli_error!(
            "folder `{}` of {role} file `{}` does not exist; create it first",
            folder.display(),
            target.display()
        ));
    }
    Ok(())
}

/// Writes `data` with `shape` (empty for a 0-d array) to a temporary file next to `target`.
pub fn write_pending(
    target: &Path,
    role: &str,
    shape: &[usize],
    data: &OutputData,
) -> Result<PendingOutput, CliError> {
    let file_name = target.file_name().ok_or_else(|| {
        cli_error!(
            "{role} path `{}` names no file; pass a file path such as out.npy",
            target.display()
        )
    })?;
    let folder = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let pending = PendingOutput {
        temporary: folder.join(temporary_name),
        target: target.to_path_buf(),
        committed: false,
    };

    let write_error = |error: std::io::Error| {
        cli_error!(
            "failed to write {role} file `{}`: {error}",
            target.display()
        )
    };
    let file = File::create(&pending.temporary).map_err(write_error)?;
    let shape: Vec<u64> = shape.iter().map(|&dim| dim as u64).collect();
    let mut writer = BufWriter::new(file);
    match data {
        OutputData::F16(values) => write_values(&mut writer, &shape, values),
        OutputData::F32(values) => write_values(&mut writer, &shape, values),
        OutputData::F64(values) => write_values(&mut writer, &shape, values),
    }
    .and_then(|()| writer.flush())
    .map_err(write_error)?;
    Ok(pending)
}

fn write_values<T: AutoSerialize + Copy>(
    writer: &mut BufWriter<File>,
    shape: &[u64],
    values: &[T],
) -> std::io::Result<()> {
    let mut npy = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(writer)
        .begin_nd()?;
    npy.extend(values.iter().copied())?;
    npy.finish()
}
