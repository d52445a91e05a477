//! Image-folder datasets: `root/<class>/**/*.{jpg,jpeg,png}` on disk or inside a `.zip`
//! (optionally under a split folder, `root/<split>/<class>/...`). Class index = position of
//! the class folder's name in sorted order; samples are ordered by class, then path.
//!
//! Images are decoded when read, in parallel over the available cores, each worker with its
//! own handle on the archive (positioned reads of one shared file).

use std::io::Read;
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::decode::{decode, Image};
use super::shared_file::SharedFile;
use super::transform::{ImageLayout, SampleShape, Scratch, Transform};
use super::{shown, Dataset, OpenOptions};
use crate::error::{Error, Result};

/// Where the files are.
#[derive(Clone)]
enum Store {
    /// A folder on disk.
    Dir,
    /// A zip archive (cloned per worker: the directory is shared).
    Zip(ZipArchive<SharedFile>),
}

/// One image: its location (path under the folder, or the archive member's index) and label.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    index: usize,
    label: i64,
}

/// An image-folder dataset.
pub struct ImageFolder {
    path: PathBuf,
    store: Store,
    split: Option<String>,
    entries: Vec<Entry>,
    labels: Vec<i64>,
    classes: Vec<String>,
    shape: SampleShape,
    workers: usize,
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
}

/// Files under `dir`, recursively, as `/`-separated paths relative to `base`.
fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_dir() {
            walk(&p, base, out)?;
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Class entries from `(relative name, member index)` pairs under the split prefix.
fn classify(names: Vec<(String, usize)>, prefix: &str) -> (Vec<String>, Vec<Entry>) {
    let mut found: Vec<(String, String, usize)> = names
        .into_iter()
        .filter_map(|(name, index)| {
            let rest = name.strip_prefix(prefix)?;
            let (class, file) = rest.split_once('/')?;
            let hidden = class.starts_with('.')
                || class == "__MACOSX"
                || file.split('/').any(|p| p.starts_with('.'));
            (!hidden && !file.is_empty() && is_image(file))
                .then(|| (class.to_string(), name.clone(), index))
        })
        .collect();
    found.sort();
    let mut classes: Vec<String> = found.iter().map(|(c, _, _)| c.clone()).collect();
    classes.dedup();
    let entries = found
        .into_iter()
        .map(|(class, name, index)| Entry {
            label: classes.binary_search(&class).unwrap_or(0) as i64,
            name,
            index,
        })
        .collect();
    (classes, entries)
}

impl ImageFolder {
    /// Opens a folder or `.zip`. With `--split S` the classes are under `S/`; without, under
    /// `test/` when the root has both `train/` and `test/`, else under the root.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<ImageFolder> {
        let (store, names) = if path.is_dir() {
            let mut names = Vec::new();
            walk(path, path, &mut names)?;
            let names: Vec<(String, usize)> = names.into_iter().map(|n| (n, 0)).collect();
            (Store::Dir, names)
        } else {
            let file = SharedFile::open(path).map_err(|e| Error::io(path, e))?;
            let zip = ZipArchive::new(file)
                .map_err(|e| Error::data(shown(path), format!("not a zip archive: {e}")))?;
            let names: Vec<(String, usize)> = (0..zip.len())
                .filter_map(|i| zip.name_for_index(i).map(|n| (n.to_string(), i)))
                .collect();
            (Store::Zip(zip), names)
        };
        let top_dirs: std::collections::BTreeSet<String> = if path.is_dir() {
            std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        } else {
            names
                .iter()
                .filter_map(|(n, _)| n.split_once('/').map(|(t, _)| t.to_string()))
                .collect()
        };
        let split = match &opts.split {
            Some(s) => {
                if !top_dirs.contains(s) {
                    let have: Vec<&str> = top_dirs.iter().map(String::as_str).collect();
                    return Err(Error::data(
                        shown(path),
                        format!(
                            "no split folder '{s}/' (top-level folders: {})",
                            have.join(", ")
                        ),
                    ));
                }
                Some(s.clone())
            }
            None if top_dirs.contains("train") && top_dirs.contains("test") => {
                Some("test".to_string())
            }
            None => None,
        };
        let prefix = split.as_ref().map(|s| format!("{s}/")).unwrap_or_default();
        let (classes, entries) = classify(names, &prefix);
        if entries.is_empty() {
            return Err(Error::data(
                shown(path),
                format!("no images under {prefix}<class>/ (expected .jpg, .jpeg or .png files)"),
            ));
        }
        let labels = entries.iter().map(|e| e.label).collect();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut me = ImageFolder {
            path: path.to_path_buf(),
            store,
            split,
            entries,
            labels,
            classes,
            shape: SampleShape::Array(Vec::new()),
            workers,
        };
        // The first image fixes the nominal sample shape (checked against the model up front).
        let mut reader = me.reader();
        let mut img = Image::default();
        let first = me.entries[0].clone();
        reader.load(&first, &mut img)?;
        me.shape = SampleShape::Image {
            h: img.h,
            w: img.w,
            c: img.c,
            layout: ImageLayout::Hwc,
        };
        Ok(me)
    }

    /// A reader for one worker.
    fn reader(&self) -> Reader {
        Reader {
            root: self.path.clone(),
            store: self.store.clone(),
            buf: Vec::new(),
        }
    }

    /// The number of decoding threads (default: available cores).
    pub fn set_workers(&mut self, n: usize) {
        self.workers = n.max(1);
    }
}

/// Reads and decodes images for one worker.
struct Reader {
    root: PathBuf,
    store: Store,
    buf: Vec<u8>,
}

impl Reader {
    fn load(&mut self, e: &Entry, img: &mut Image) -> Result<()> {
        let place = || format!("{}:{}", self.root.display(), e.name);
        self.buf.clear();
        match &mut self.store {
            Store::Dir => {
                let p = self.root.join(&e.name);
                let mut f = std::fs::File::open(&p).map_err(|err| Error::io(&p, err))?;
                f.read_to_end(&mut self.buf)
                    .map_err(|err| Error::io(&p, err))?;
            }
            Store::Zip(zip) => {
                let mut m = zip
                    .by_index(e.index)
                    .map_err(|err| Error::data(place(), err.to_string()))?;
                m.read_to_end(&mut self.buf)
                    .map_err(|err| Error::data(place(), err.to_string()))?;
            }
        }
        decode(&self.buf, img).map_err(|err| Error::data(place(), err))
    }
}

impl Dataset for ImageFolder {
    fn describe(&self) -> String {
        format!(
            "images {}{}: {} samples in {} classes, first {}",
            self.path.display(),
            self.split
                .as_ref()
                .map(|s| format!(" (split {s})"))
                .unwrap_or_default(),
            self.entries.len(),
            self.classes.len(),
            self.shape
        )
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn sample_shape(&self) -> &SampleShape {
        &self.shape
    }

    fn bytes(&self) -> bool {
        true
    }

    fn labels(&self) -> Option<&[i64]> {
        Some(&self.labels)
    }

    fn class_names(&self) -> Option<&[String]> {
        Some(&self.classes)
    }

    fn read(&mut self, indices: &[usize], t: &Transform, out: &mut [f32]) -> Result<()> {
        let len = t.sample_len();
        let per = indices.len().div_ceil(self.workers).max(1);
        let work = |ids: &[usize], out: &mut [f32], mut reader: Reader| -> Result<()> {
            let mut img = Image::default();
            let mut scratch = Scratch::default();
            for (&i, o) in ids.iter().zip(out.chunks_mut(len)) {
                let e = &self.entries[i];
                reader.load(e, &mut img)?;
                let shape = SampleShape::Image {
                    h: img.h,
                    w: img.w,
                    c: img.c,
                    layout: ImageLayout::Hwc,
                };
                t.apply(&img.data, &shape, o, &mut scratch).map_err(|err| {
                    Error::data(format!("{}:{}", self.path.display(), e.name), err)
                })?;
            }
            Ok(())
        };
        if self.workers == 1 || indices.len() < 2 * self.workers {
            return work(indices, out, self.reader());
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = indices
                .chunks(per)
                .zip(out.chunks_mut(per * len))
                .map(|(ids, o)| {
                    let reader = self.reader();
                    let work = &work;
                    s.spawn(move || work(ids, o, reader))
                })
                .collect();
            let mut first = Ok(());
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Error::Usage("an image decoding thread panicked".into()))
                });
                if first.is_ok() {
                    first = r;
                }
            }
            first
        })
    }
}
