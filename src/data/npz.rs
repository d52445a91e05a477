//! NumPy arrays as a dataset: a `.npz` archive (samples and labels under keys such as
//! `x_test`/`y_test` or `x`/`y`) or a lone `.npy` of samples (labels from another `.npy`).
//!
//! Labels are read whole (one integer per sample; one-hot or score rows are reduced by argmax).
//! Samples are streamed straight from the archive member (stored or deflated), never loaded
//! whole. Sample dims `[H,W,C]` with C ≤ 4 are read as HWC images, `[C,H,W]` as CHW,
//! `[H,W]` as one-channel images, anything else as plain arrays (`--data-layout` decides when
//! given).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::DeflateDecoder;
use zip::{CompressionMethod, ZipArchive};

use super::array_stream::ArrayStream;
use super::npy::{read_header, NpyHeader, NpyType};
use super::shared_file::SharedFile;
use super::transform::{ImageLayout, SampleShape, Scratch, Transform};
use super::{shown, Dataset, OpenOptions};
use crate::error::{Error, Result};

/// An archive member's bytes, checked against the archive's CRC-32 once all `total` bytes have
/// been read (a run reading only some samples checks nothing).
struct CrcChecked<R> {
    inner: R,
    crc: flate2::Crc,
    left: u64,
    want: u32,
}

impl<R: Read> Read for CrcChecked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.left == 0 {
            return Ok(n);
        }
        self.crc.update(&buf[..n]);
        self.left = self.left.saturating_sub(n as u64);
        if self.left == 0 && self.crc.sum() != self.want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "bad CRC-32: the member's bytes sum to {:08x}, the archive says {:08x} (corrupt archive)",
                    self.crc.sum(),
                    self.want
                ),
            ));
        }
        Ok(n)
    }
}

/// Samples (and labels) from NumPy arrays.
pub struct NpArrays {
    place: String,
    stream: ArrayStream,
    header: NpyHeader,
    shape: SampleShape,
    labels: Option<Vec<i64>>,
    raw: Vec<u8>,
    values: Vec<f32>,
    scratch: Scratch,
}

/// How the dims of one sample are read.
fn sample_shape(dims: &[usize], layout: Option<ImageLayout>) -> SampleShape {
    let small = |d: usize| (1..=4).contains(&d);
    match (dims, layout) {
        (&[h, w, c], Some(ImageLayout::Hwc)) => SampleShape::Image {
            h,
            w,
            c,
            layout: ImageLayout::Hwc,
        },
        (&[c, h, w], Some(ImageLayout::Chw)) => SampleShape::Image {
            h,
            w,
            c,
            layout: ImageLayout::Chw,
        },
        (&[h, w, c], None) if small(c) && !small(h) => SampleShape::Image {
            h,
            w,
            c,
            layout: ImageLayout::Hwc,
        },
        (&[c, h, w], None) if small(c) && !small(w) => SampleShape::Image {
            h,
            w,
            c,
            layout: ImageLayout::Chw,
        },
        (&[h, w], _) => SampleShape::Image {
            h,
            w,
            c: 1,
            layout: ImageLayout::Hwc,
        },
        _ => SampleShape::Array(dims.to_vec()),
    }
}

/// Reads a whole label array: integers, or rows reduced by argmax.
fn read_labels(r: &mut dyn Read, total: Option<u64>, place: &str) -> Result<(usize, Vec<i64>)> {
    let bad = |msg: String| Error::data(place, msg);
    let h = read_header(&mut &mut *r, total).map_err(bad)?;
    let n = h.shape.first().copied().unwrap_or(0);
    let per = if h.shape.len() == 1 {
        1
    } else {
        h.shape[1..].iter().product()
    };
    if h.shape.len() > 2 {
        return Err(bad(format!(
            "labels of shape {:?}: expected [N] or [N,K]",
            h.shape
        )));
    }
    let numel = h
        .numel()
        .ok_or_else(|| bad("label array too large".into()))?;
    let mut raw = vec![0u8; numel * h.dtype.size()];
    r.read_exact(&mut raw)
        .map_err(|e| bad(format!("reading labels: {e}")))?;
    let labels: Vec<i64> = if per == 1 {
        if let Some(v) = h.to_i64(&raw) {
            v
        } else {
            let mut f = vec![0f32; numel];
            h.to_f32(&raw, &mut f);
            if let Some(x) = f.iter().find(|x| x.fract() != 0.0) {
                return Err(bad(format!("labels must be class indices, found {x}")));
            }
            f.into_iter().map(|x| x as i64).collect()
        }
    } else {
        let mut f = vec![0f32; numel];
        h.to_f32(&raw, &mut f);
        f.chunks(per)
            .map(|row| {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                best as i64
            })
            .collect()
    };
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
        return Err(bad(format!("label {l} of sample {i} is negative")));
    }
    Ok((n, labels))
}

impl NpArrays {
    fn new(
        place: String,
        mut reader: Box<dyn Read + Send>,
        total: Option<u64>,
        labels: Option<(usize, Vec<i64>, String)>,
        layout: Option<ImageLayout>,
    ) -> Result<NpArrays> {
        let header = read_header(&mut reader, total).map_err(|e| Error::data(&place, e))?;
        let (n, dims) = header
            .shape
            .split_first()
            .ok_or_else(|| Error::data(&place, "a scalar, not an array of samples"))?;
        let shape = sample_shape(dims, layout);
        let sample_bytes = shape.len() * header.dtype.size();
        let labels = match labels {
            Some((ln, _, lplace)) if ln != *n => {
                return Err(Error::data(
                    lplace,
                    format!("{ln} labels for {n} samples in {place}"),
                ))
            }
            other => other.map(|(_, l, _)| l),
        };
        Ok(NpArrays {
            place,
            stream: ArrayStream::new(reader, sample_bytes, *n),
            raw: vec![0u8; sample_bytes],
            values: Vec::new(),
            header,
            shape,
            labels,
            scratch: Scratch::default(),
        })
    }

    /// Opens a `.npz`: samples under `--x-key` (default `x_<split>`, `x_test`, `x`), labels under
    /// `--y-key` (default `y_<split>`, `y_test`, `y`; none when absent).
    pub fn open_npz(path: &Path, opts: &OpenOptions) -> Result<NpArrays> {
        let file = SharedFile::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = ZipArchive::new(file.clone())
            .map_err(|e| Error::data(shown(path), format!("not a .npz (zip) archive: {e}")))?;
        let keys: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.strip_suffix(".npy"))
            .map(str::to_string)
            .collect();
        let has = |k: &str| keys.iter().any(|x| x == k);
        let listing = || keys.join(", ");
        let pick =
            |given: &Option<String>, prefix: &str, required: bool| -> Result<Option<String>> {
                if let Some(k) = given {
                    return if has(k) {
                        Ok(Some(k.clone()))
                    } else {
                        Err(Error::data(
                            shown(path),
                            format!("no array '{k}' (arrays: {})", listing()),
                        ))
                    };
                }
                let mut cands = Vec::new();
                match &opts.split {
                    Some(s) => cands.push(format!("{prefix}_{s}")),
                    None => {
                        cands.push(format!("{prefix}_test"));
                        cands.push(prefix.to_string());
                    }
                }
                match cands.iter().find(|c| has(c)) {
                    Some(c) => Ok(Some(c.clone())),
                    None if required => Err(Error::data(
                        shown(path),
                        format!(
                            "no array {} (arrays: {}); name it with --{prefix}-key",
                            cands.join(" or "),
                            listing()
                        ),
                    )),
                    None => Ok(None),
                }
            };
        let x_key = pick(&opts.x_key, "x", true)?.unwrap_or_default();
        let y_key = pick(&opts.y_key, "y", false)?;
        let labels = match &y_key {
            None => None,
            Some(k) => {
                let place = format!("{}:{k}", path.display());
                let mut member = zip
                    .by_name(&format!("{k}.npy"))
                    .map_err(|e| Error::data(&place, e.to_string()))?;
                let total = member.size();
                let (n, l) = read_labels(&mut member, Some(total), &place)?;
                // Reading to the end makes the zip reader compare the member's CRC-32.
                std::io::copy(&mut member, &mut std::io::sink())
                    .map_err(|e| Error::data(&place, format!("corrupt member: {e}")))?;
                Some((n, l, place))
            }
        };
        let place = format!("{}:{x_key}", path.display());
        let (start, size, method, total, crc) = {
            let member = zip
                .by_name(&format!("{x_key}.npy"))
                .map_err(|e| Error::data(&place, e.to_string()))?;
            let start = member
                .data_start()
                .ok_or_else(|| Error::data(&place, "member data not located"))?;
            (
                start,
                member.compressed_size(),
                member.compression(),
                member.size(),
                member.crc32(),
            )
        };
        let mut f = file;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
        let body = BufReader::with_capacity(1 << 16, f.take(size));
        let checked = |inner: Box<dyn Read + Send>| -> Box<dyn Read + Send> {
            Box::new(CrcChecked {
                inner,
                crc: flate2::Crc::new(),
                left: total,
                want: crc,
            })
        };
        let reader: Box<dyn Read + Send> = match method {
            CompressionMethod::Stored => checked(Box::new(body)),
            CompressionMethod::Deflated => checked(Box::new(BufReader::with_capacity(
                1 << 16,
                DeflateDecoder::new(body),
            ))),
            m => {
                return Err(Error::data(
                    &place,
                    format!("compression {m} is not supported (stored or deflate only)"),
                ))
            }
        };
        NpArrays::new(place, reader, Some(total), labels, opts.data_layout)
    }

    /// Opens a `.npy` of samples; labels from `opts.labels` (another `.npy`) when given.
    pub fn open_npy(path: &Path, opts: &OpenOptions) -> Result<NpArrays> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let labels = match &opts.labels {
            None => None,
            Some(lp) => {
                let lf = File::open(lp).map_err(|e| Error::io(lp, e))?;
                let place = shown(lp);
                let total = lf.metadata().ok().map(|m| m.len());
                let (n, l) = read_labels(&mut BufReader::new(lf), total, &place)?;
                Some((n, l, place))
            }
        };
        let total = f.metadata().ok().map(|m| m.len());
        let reader = Box::new(BufReader::with_capacity(1 << 16, f));
        NpArrays::new(shown(path), reader, total, labels, opts.data_layout)
    }
}

impl Dataset for NpArrays {
    fn describe(&self) -> String {
        format!(
            "{}: {} samples of {} {:?}{}",
            self.place,
            self.stream.len(),
            self.shape,
            self.header.dtype,
            if self.labels.is_none() {
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
        self.header.dtype == NpyType::U8
    }

    fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    fn read(&mut self, indices: &[usize], t: &Transform, out: &mut [f32]) -> Result<()> {
        let len = t.sample_len();
        let bytes = self.bytes() && !self.header.big_endian;
        for (&i, o) in indices.iter().zip(out.chunks_mut(len)) {
            let place = || format!("{} (sample {i})", self.place);
            self.stream
                .read(i, &mut self.raw)
                .map_err(|e| Error::data(place(), e.to_string()))?;
            let done = if bytes {
                t.apply(&self.raw, &self.shape, o, &mut self.scratch)
            } else {
                self.values.resize(self.shape.len(), 0.0);
                self.header.to_f32(&self.raw, &mut self.values);
                t.apply(&self.values, &self.shape, o, &mut self.scratch)
            };
            done.map_err(|e| Error::data(place(), e))?;
        }
        Ok(())
    }
}
