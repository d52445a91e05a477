//! The dataset spec of the command line, `FORMAT:PATH` (`mnist:`, `npz:`, `npy:`, `images:`)
//! or a bare path whose format is recognised, and the options that pick what to read from it.

use std::path::PathBuf;
use std::str::FromStr;

use super::transform::{ImageLayout, Resize};

/// A dataset format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// MNIST/Fashion-MNIST IDX files in a folder (`*-images-idx3-ubyte[.gz]` + labels).
    Mnist,
    /// A NumPy `.npz` archive.
    Npz,
    /// A NumPy `.npy` array (labels from `--labels`).
    Npy,
    /// An image folder `root/<class>/*.{jpg,png}`, or the same inside a `.zip`.
    Images,
}

/// Where the data is and in which format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// The format.
    pub format: Format,
    /// The file or folder.
    pub path: PathBuf,
}

impl FromStr for DataSpec {
    type Err = String;

    /// `mnist:DIR`, `npz:FILE`, `npy:FILE`, `images:DIR|FILE.zip`, or a bare path: `.npz`,
    /// `.npy` and `.zip` by extension, a folder with IDX files as MNIST, other folders as
    /// image folders.
    fn from_str(s: &str) -> Result<DataSpec, String> {
        if let Some((kind, path)) = s.split_once(':') {
            let format = match kind {
                "mnist" | "idx" => Some(Format::Mnist),
                "npz" => Some(Format::Npz),
                "npy" => Some(Format::Npy),
                "images" | "folder" => Some(Format::Images),
                _ => None,
            };
            if let Some(format) = format {
                if path.is_empty() {
                    return Err(format!("'{s}': the path after '{kind}:' is missing"));
                }
                return Ok(DataSpec {
                    format,
                    path: PathBuf::from(path),
                });
            }
        }
        let path = PathBuf::from(s);
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let format = match ext.as_deref() {
            Some("npz") => Format::Npz,
            Some("npy") => Format::Npy,
            Some("zip") => Format::Images,
            _ if path.is_dir() && has_idx(&path) => Format::Mnist,
            _ if path.is_dir() => Format::Images,
            _ => {
                return Err(format!(
                    "'{s}': unknown dataset format; write mnist:PATH, npz:PATH, npy:PATH or \
                     images:PATH"
                ))
            }
        };
        Ok(DataSpec { format, path })
    }
}

fn has_idx(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("-idx"))
    })
}

/// What to read from a dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The split: MNIST `train`/`test`; `.npz` key suffix (`x_test`); image folder subfolder.
    /// `None`: `test` where the dataset has one, else everything.
    pub split: Option<String>,
    /// The `.npz` key of the samples (default `x_<split>`, else `x`).
    pub x_key: Option<String>,
    /// The `.npz` key of the labels (default `y_<split>`, else `y`).
    pub y_key: Option<String>,
    /// Labels of a `.npy` dataset, another `.npy` file.
    pub labels: Option<PathBuf>,
    /// How array samples are stored (`None`: recognised from their shape).
    pub data_layout: Option<ImageLayout>,
}

/// Parses `--resize`: `S` (shorter side) or `HxW`.
pub fn parse_resize(s: &str) -> Result<Resize, String> {
    match parse_size(s)? {
        (h, w, false) => Ok(Resize::Exact(h, w)),
        (s, _, true) => Ok(Resize::Shorter(s)),
    }
}

/// Parses `--crop`: `S` (square) or `HxW`.
pub fn parse_crop(s: &str) -> Result<(usize, usize), String> {
    parse_size(s).map(|(h, w, _)| (h, w))
}

/// `N` → (N, N, true); `HxW` → (H, W, false). Sizes must be positive.
fn parse_size(s: &str) -> Result<(usize, usize, bool), String> {
    let num = |v: &str| -> Result<usize, String> {
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 && n <= 1 << 16 => Ok(n),
            _ => Err(format!(
                "'{s}': expected a size N or HxW (integers from 1 to 65536)"
            )),
        }
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((num(h)?, num(w)?, false)),
        None => num(s).map(|n| (n, n, true)),
    }
}

/// Parses a comma-separated list of numbers (`--mean 0.485,0.456,0.406`).
pub fn parse_floats(s: &str) -> Result<Vec<f32>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("'{v}' in '{s}' is not a number"))
        })
        .collect()
}

/// Parses `--scale`: a number or a fraction `1/255`.
pub fn parse_scale(s: &str) -> Result<f32, String> {
    let num = |v: &str| v.trim().parse::<f32>().ok().filter(|x| x.is_finite());
    let v = match s.split_once('/') {
        Some((a, b)) => num(a)
            .zip(num(b))
            .and_then(|(a, b)| (b != 0.0).then(|| a / b)),
        None => num(s),
    };
    v.ok_or_else(|| format!("'{s}': expected a number or a fraction like 1/255"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_sizes_parse() {
        let d: DataSpec = "mnist:../x".parse().unwrap();
        assert_eq!((d.format, d.path), (Format::Mnist, PathBuf::from("../x")));
        let d: DataSpec = "a/b.NPZ".parse().unwrap();
        assert_eq!(d.format, Format::Npz);
        assert_eq!("c.zip".parse::<DataSpec>().unwrap().format, Format::Images);
        assert!("npz:".parse::<DataSpec>().unwrap_err().contains("missing"));
        assert!("nothing.txt"
            .parse::<DataSpec>()
            .unwrap_err()
            .contains("unknown"));
        assert_eq!(parse_resize("256"), Ok(Resize::Shorter(256)));
        assert_eq!(parse_resize("24x32"), Ok(Resize::Exact(24, 32)));
        assert_eq!(parse_crop("224"), Ok((224, 224)));
        assert!(parse_crop("0x3").is_err());
        assert_eq!(parse_floats("0.5, 1"), Ok(vec![0.5, 1.0]));
        assert!(parse_floats("0.5,x").is_err());
        assert_eq!(parse_scale("1/255"), Ok(1.0 / 255.0));
        assert!(parse_scale("1/0").is_err());
    }
}
