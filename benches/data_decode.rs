//! Decoding speed of the 60,000 CIFAR-10 JPEGs in `../shared/data/cifar10/cifar10-jpeg.zip`
//! (images/s), on 1 thread and on every core, against a reference measured in the same run:
//! reading the same members' bytes out of the zip without decoding them (the floor any decoder
//! sits on). Also the whole data path of `lopper eval` (decode, normalise to NCHW float, in
//! batches on the loader thread).
//!
//! Run with `cargo bench --bench data_decode`; under `cargo test` it only checks that it builds.

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lopper::data::decode::{decode, Image};
use lopper::data::shared_file::SharedFile;
use lopper::data::{self, select, Batches, DataSpec, OpenOptions, Preprocess, Transform};
use lopper::ir::DType;
use lopper::runtime::InputSpec;
use zip::ZipArchive;

const ROUNDS: usize = 3;

fn jpeg_members(zip: &ZipArchive<SharedFile>) -> Vec<usize> {
    (0..zip.len())
        .filter(|&i| zip.name_for_index(i).is_some_and(|n| n.ends_with(".jpg")))
        .collect()
}

/// Reads (and decodes when `decode_too`) every member in `ids` on `threads` threads; returns
/// seconds and a checksum (so nothing is optimised away).
fn pass(
    zip: &ZipArchive<SharedFile>,
    ids: &[usize],
    threads: usize,
    decode_too: bool,
) -> (f64, u64) {
    let t = Instant::now();
    let per = ids.len().div_ceil(threads);
    let sum = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(per)
            .map(|chunk| {
                let mut zip = zip.clone();
                s.spawn(move || {
                    let mut buf = Vec::new();
                    let mut img = Image::default();
                    let mut sum = 0u64;
                    for &i in chunk {
                        buf.clear();
                        let mut m = zip.by_index(i).expect("member");
                        m.read_to_end(&mut buf).expect("read");
                        if decode_too {
                            decode(&buf, &mut img).expect("decode");
                            sum += u64::from(img.data[img.data.len() / 2]);
                        } else {
                            sum += buf.len() as u64;
                        }
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    (t.elapsed().as_secs_f64(), sum)
}

/// The whole eval data path over one split: images/s.
fn pipeline(path: &Path, split: &str) -> (usize, f64) {
    let spec: DataSpec = format!("images:{}", path.display()).parse().expect("spec");
    let opts = OpenOptions {
        split: Some(split.into()),
        ..OpenOptions::default()
    };
    let ds = data::open(&spec, &opts).expect("open");
    let pre = Preprocess {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        ..Preprocess::default()
    };
    let input = InputSpec {
        name: "x".into(),
        dtype: DType::F32,
        dims: vec![None, Some(3), Some(32), Some(32)],
    };
    let t = Transform::plan(&input, ds.sample_shape(), true, &pre).expect("plan");
    let n = ds.len();
    let start = Instant::now();
    let mut seen = 0;
    for b in Batches::new(ds, t, select(n, None), 256) {
        seen += b.expect("batch").n;
    }
    (seen, start.elapsed().as_secs_f64())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("data_decode: run with `cargo bench --bench data_decode`");
        return;
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10/cifar10-jpeg.zip");
    let zip = ZipArchive::new(SharedFile::open(&path).expect("open zip")).expect("zip");
    let ids = jpeg_members(&zip);
    let n = ids.len() as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut rows: Vec<(String, f64)> = Vec::new();
    // Warm the page cache once, then interleave the variants round by round.
    pass(&zip, &ids, cores, false);
    let variants: Vec<(String, usize, bool)> = vec![
        (
            format!("read bytes only, {cores} threads (reference)"),
            cores,
            false,
        ),
        ("read + decode, 1 thread".into(), 1, true),
        (format!("read + decode, {cores} threads"), cores, true),
    ];
    let mut times = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (k, (_, threads, dec)) in variants.iter().enumerate() {
            times[k].push(pass(&zip, &ids, *threads, *dec).0);
        }
    }
    for ((name, _, _), t) in variants.iter().zip(times) {
        rows.push((name.clone(), median(t)));
    }
    let mut pipe = Vec::new();
    for _ in 0..ROUNDS {
        let (a, ta) = pipeline(&path, "train");
        let (b, tb) = pipeline(&path, "test");
        pipe.push((a + b, ta + tb));
    }
    let count = pipe[0].0;
    rows.push((
        format!("eval data path (decode + NCHW f32 normalise, {cores} threads)"),
        median(pipe.iter().map(|p| p.1).collect()),
    ));
    println!(
        "{} JPEGs (32x32, CIFAR-10 train + test), {cores} cores, median of {ROUNDS} rounds",
        ids.len()
    );
    println!(
        "{:<62} {:>9} {:>12} {:>14}",
        "", "time (s)", "images/s", "time/reference"
    );
    let reference = rows[0].1;
    for (name, t) in &rows {
        let imgs = if name.starts_with("eval") {
            count as f64
        } else {
            n
        };
        println!(
            "{name:<62} {t:>9.3} {:>12.0} {:>14.2}",
            imgs / t,
            t / reference
        );
    }
}
