//! Datasets for evaluation, streamed in batches: NumPy `.npz`/`.npy` arrays, MNIST-style IDX
//! files (`.gz` or raw), and image folders `root/<class>/*.{jpg,png}` on disk or inside a
//! `.zip` (class index = position of the class name in sorted order).
//!
//! A [`Dataset`] knows its length, sample shape and labels up front and reads samples in
//! increasing index order through a [`Transform`] (the preprocessing planned against the
//! model's input); [`Batches`] runs it on a background thread a few batches ahead of the
//! consumer. Nothing is decoded before it is asked for, and large arrays are never held whole.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

pub mod array_stream;
pub mod decode;
pub mod idx;
pub mod images;
pub mod npy;
pub mod npz;
pub mod resize;
pub mod shared_file;
pub mod spec;
pub mod subset;
pub mod transform;

pub use spec::{DataSpec, Format, OpenOptions};
pub use transform::{ImageLayout, Layout, Preprocess, Resize, SampleShape, Scratch, Transform};

/// A source of labelled (or unlabelled) samples.
pub trait Dataset: Send {
    /// One line saying what was opened (format, file, split, count, sample shape).
    fn describe(&self) -> String;

    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of a sample (image folders: the first image's; others may differ in size).
    fn sample_shape(&self) -> &SampleShape;

    /// Whether raw values are bytes (0–255): decides the default `--scale`.
    fn bytes(&self) -> bool;

    /// Every sample's class index, in order, when the dataset has labels.
    fn labels(&self) -> Option<&[i64]>;

    /// Class names, when the dataset names them (image folders).
    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// Reads the samples `indices` (increasing, and after those of earlier calls) through `t`
    /// into `out` (`indices.len() · t.sample_len()` values).
    fn read(&mut self, indices: &[usize], t: &Transform, out: &mut [f32]) -> Result<()>;
}

/// Opens a dataset from its command-line spec.
pub fn open(spec: &DataSpec, opts: &OpenOptions) -> Result<Box<dyn Dataset>> {
    if !spec.path.exists() {
        return Err(Error::data(
            spec.path.display(),
            "no such file or folder".to_string(),
        ));
    }
    let data: Box<dyn Dataset> = match spec.format {
        Format::Mnist => Box::new(idx::Idx::open(&spec.path, opts)?),
        Format::Npz => Box::new(npz::NpArrays::open_npz(&spec.path, opts)?),
        Format::Npy => Box::new(npz::NpArrays::open_npy(&spec.path, opts)?),
        Format::Images => Box::new(images::ImageFolder::open(&spec.path, opts)?),
    };
    if data.is_empty() {
        // Nothing to evaluate or train on: an accuracy of 0/0 would be a made-up number.
        return Err(Error::data(data.describe(), "the dataset holds no samples"));
    }
    Ok(data)
}

/// `count` sample indices spread evenly over `len` (every `len/count`-th, deterministic), so
/// that a limited run over a class-sorted folder still sees every class; all when `count`
/// is `None` or at least `len`.
pub fn select(len: usize, count: Option<usize>) -> Vec<usize> {
    match count {
        Some(n) if n < len => (0..n).map(|i| i * len / n).collect(),
        _ => (0..len).collect(),
    }
}

/// One batch of preprocessed samples.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `n · sample_len` values in the model's layout.
    pub values: Vec<f32>,
    /// Samples in the batch.
    pub n: usize,
    /// Their labels, when the dataset has them.
    pub labels: Option<Vec<i64>>,
}

/// Batches read on a background thread, up to a few ahead of the consumer.
pub struct Batches {
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl Batches {
    /// Streams the samples `indices` of `dataset` through `t` in batches of `batch`.
    pub fn new(
        mut dataset: Box<dyn Dataset>,
        t: Transform,
        indices: Vec<usize>,
        batch: usize,
    ) -> Batches {
        let batch = batch.max(1);
        // Read in chunks of at least 256 samples so that parallel decoding has work to split.
        let chunk = batch * 256usize.div_ceil(batch);
        let (tx, rx) = sync_channel::<Result<Batch>>(4.max(2 * chunk / batch));
        let worker = std::thread::spawn(move || {
            let len = t.sample_len();
            let labels = dataset.labels().map(<[i64]>::to_vec);
            for ids in indices.chunks(chunk) {
                let mut values = vec![0f32; ids.len() * len];
                if let Err(e) = dataset.read(ids, &t, &mut values) {
                    let _ = tx.send(Err(e));
                    return;
                }
                for (k, part) in ids.chunks(batch).enumerate() {
                    let start = k * batch * len;
                    let b = Batch {
                        values: values[start..start + part.len() * len].to_vec(),
                        n: part.len(),
                        labels: labels
                            .as_ref()
                            .map(|l| part.iter().map(|&i| l[i]).collect()),
                    };
                    if tx.send(Ok(b)).is_err() {
                        return;
                    }
                }
            }
        });
        Batches {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let got = self.rx.as_ref()?.recv().ok();
        if got.is_none() {
            self.rx = None;
            if let Some(w) = self.worker.take() {
                if w.join().is_err() {
                    return Some(Err(Error::Usage("the data loader thread panicked".into())));
                }
            }
        }
        got
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Dropping the receiver stops the worker at its next send.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// `path` as shown in messages.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::select;

    #[test]
    fn select_spreads_evenly() {
        assert_eq!(select(10, Some(5)), vec![0, 2, 4, 6, 8]);
        assert_eq!(select(3, Some(5)), vec![0, 1, 2]);
        assert_eq!(select(4, None), vec![0, 1, 2, 3]);
        let s = select(10_000, Some(1000));
        assert_eq!((s.len(), s[1], s[999]), (1000, 10, 9990));
    }
}
