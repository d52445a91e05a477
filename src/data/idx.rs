//! MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST): `<prefix>-images-idx3-ubyte` with
//! `<prefix>-labels-idx1-ubyte`, gzipped (`.gz`) or raw; prefix `train`, or `t10k`/`test` for the
//! test split. Images are streamed; labels (one byte each) are read up front.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::array_stream::ArrayStream;
use super::transform::{ImageLayout, SampleShape, Scratch, Transform};
use super::{shown, Dataset, OpenOptions};
use crate::error::{Error, Result};

/// Samples larger than this (1 GiB) mean a corrupt header.
const MAX_SAMPLE_BYTES: usize = 1 << 30;

/// An IDX image file and its labels.
pub struct Idx {
    images: PathBuf,
    stream: ArrayStream,
    shape: SampleShape,
    labels: Vec<i64>,
    split: String,
    buf: Vec<u8>,
    scratch: Scratch,
}

/// Opens a file, through gzip when it ends in `.gz`.
fn open_stream(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(BufReader::new(GzDecoder::new(BufReader::new(f))))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// Reads an IDX header: element type code and dims.
fn header(r: &mut dyn Read, path: &Path) -> Result<Vec<usize>> {
    let bad = |msg: String| Error::data(shown(path), msg);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .map_err(|e| bad(format!("not an IDX file: {e}")))?;
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4 {
        return Err(bad("not an IDX file (bad magic)".into()));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x} is not supported (only unsigned bytes)",
            magic[2]
        )));
    }
    let mut dims = Vec::with_capacity(usize::from(magic[3]));
    for _ in 0..magic[3] {
        let mut d = [0u8; 4];
        r.read_exact(&mut d)
            .map_err(|e| bad(format!("IDX header: {e}")))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok(dims)
}

/// The first existing file among the name variants of `<prefix>-<kind>-idx<n>-ubyte[.gz]`.
fn find(dir: &Path, prefixes: &[&str], kind: &str) -> Option<PathBuf> {
    let mut names = Vec::new();
    for p in prefixes {
        for sep in ["-", "."] {
            names.push(format!("{p}-{kind}{sep}ubyte"));
        }
    }
    names
        .iter()
        .flat_map(|n| [dir.join(format!("{n}.gz")), dir.join(n)])
        .find(|p| p.is_file())
}

impl Idx {
    /// Opens the split of an IDX folder (`path` a folder), or an images file and the labels
    /// file next to it (`path` the images file).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Idx> {
        let split = opts.split.clone().unwrap_or_else(|| "test".into());
        let (images, labels) = if path.is_dir() {
            let prefixes: &[&str] = match split.as_str() {
                "train" => &["train"],
                "test" | "t10k" => &["t10k", "test"],
                other => {
                    return Err(Error::Usage(format!(
                        "--split {other}: MNIST folders have the splits train and test"
                    )))
                }
            };
            let images = find(path, prefixes, "images-idx3").ok_or_else(|| {
                Error::data(
                    shown(path),
                    format!("no {}-images-idx3-ubyte[.gz] here", prefixes[0]),
                )
            })?;
            (images.clone(), find(path, prefixes, "labels-idx1"))
        } else {
            let name = path.to_string_lossy();
            let labels = PathBuf::from(name.replace("images-idx3", "labels-idx1"));
            (
                path.to_path_buf(),
                (labels != path && labels.is_file()).then_some(labels),
            )
        };
        let mut r = open_stream(&images)?;
        let dims = header(&mut r, &images)?;
        let (n, shape) = match dims[..] {
            [n, h, w] => (
                n,
                SampleShape::Image {
                    h,
                    w,
                    c: 1,
                    layout: ImageLayout::Hwc,
                },
            ),
            [n, h, w, c] => (
                n,
                SampleShape::Image {
                    h,
                    w,
                    c,
                    layout: ImageLayout::Hwc,
                },
            ),
            [n, f] => (n, SampleShape::Array(vec![f])),
            _ => {
                return Err(Error::data(
                    shown(&images),
                    format!("IDX images of rank {} (dims {dims:?})", dims.len()),
                ))
            }
        };
        let sample_bytes = dims[1..]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&b| b <= MAX_SAMPLE_BYTES)
            .ok_or_else(|| {
                Error::data(shown(&images), format!("IDX dims {dims:?} are implausible"))
            })?;
        let labels = match labels {
            None => Vec::new(),
            Some(lp) => {
                let mut lr = open_stream(&lp)?;
                let ld = header(&mut lr, &lp)?;
                if ld != [n] {
                    return Err(Error::data(
                        shown(&lp),
                        format!("labels have dims {ld:?}, the images file has {n} images"),
                    ));
                }
                let mut raw = Vec::new();
                lr.take(n as u64)
                    .read_to_end(&mut raw)
                    .map_err(|e| Error::data(shown(&lp), format!("reading labels: {e}")))?;
                if raw.len() != n {
                    return Err(Error::data(
                        shown(&lp),
                        format!("{} labels in the file, its header says {n}", raw.len()),
                    ));
                }
                raw.into_iter().map(i64::from).collect()
            }
        };
        Ok(Idx {
            images,
            stream: ArrayStream::new(r, sample_bytes, n),
            shape,
            labels,
            split,
            buf: vec![0u8; sample_bytes],
            scratch: Scratch::default(),
        })
    }
}

impl Dataset for Idx {
    fn describe(&self) -> String {
        format!(
            "IDX {} (split {}): {} samples of {}{}",
            self.images.display(),
            self.split,
            self.stream.len(),
            self.shape,
            if self.labels.is_empty() {
                ", no labels"
            } else {
                ""
            }
        )
    }

    fn len(&self) -> usize {
        self.stream.len()
    }

    fn sample_shape(&self) -> &SampleShape {
        &self.shape
    }

    fn bytes(&self) -> bool {
        true
    }

    fn labels(&self) -> Option<&[i64]> {
        (!self.labels.is_empty()).then_some(self.labels.as_slice())
    }

    fn read(&mut self, indices: &[usize], t: &Transform, out: &mut [f32]) -> Result<()> {
        let len = t.sample_len();
        for (&i, o) in indices.iter().zip(out.chunks_mut(len)) {
            let place = || format!("{} (sample {i})", self.images.display());
            self.stream
                .read(i, &mut self.buf)
                .map_err(|e| Error::data(place(), e.to_string()))?;
            t.apply(&self.buf, &self.shape, o, &mut self.scratch)
                .map_err(|e| Error::data(place(), e))?;
        }
        Ok(())
    }
}
