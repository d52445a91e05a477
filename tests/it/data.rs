//! Datasets through the library: image folders on disk and in a zip (class order, labels,
//! decoding, resize/crop), `.npz` with named keys and CHW arrays, and streaming order.

use crate::common;

use std::io::Write;

use common::arrays::{npy, npy_i64, write_npz};
use lopper::data::{self, select, Batches, DataSpec, OpenOptions, Preprocess, Resize, Transform};
use lopper::ir::DType;
use lopper::runtime::InputSpec;

/// A `w`×`h` RGB PNG filled with one color.
fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    let px: Vec<u8> = (0..w * h).flat_map(|_| rgb).collect();
    wr.write_image_data(&px).unwrap();
    wr.finish().unwrap();
    bytes
}

fn input(dims: &[Option<usize>]) -> InputSpec {
    InputSpec {
        name: "x".into(),
        dtype: DType::F32,
        dims: dims.to_vec(),
    }
}

/// Classes `b_red`, `a_green` (sorted: a_green = 0), with images of two sizes.
fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("b_red/2.png".into(), png(8, 8, [255, 0, 0])),
        ("a_green/1.png".into(), png(8, 8, [0, 255, 0])),
        ("b_red/1.png".into(), png(16, 12, [255, 0, 0])),
        ("a_green/sub/3.PNG".into(), png(8, 8, [0, 255, 0])),
        ("a_green/notes.txt".into(), b"not an image".to_vec()),
    ]
}

fn check_folder(spec: &str, split: Option<&str>) {
    let spec: DataSpec = spec.parse().unwrap();
    let opts = OpenOptions {
        split: split.map(str::to_string),
        ..OpenOptions::default()
    };
    let ds = data::open(&spec, &opts).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.class_names().unwrap(), ["a_green", "b_red"]);
    assert_eq!(ds.labels().unwrap(), [0, 0, 1, 1]);
    // Resize to 4x4 then NCHW with /255: green images give channel 1 = 1, red channel 0 = 1.
    let pre = Preprocess {
        resize: Some(Resize::Exact(4, 4)),
        scale: Some(1.0 / 255.0),
        ..Preprocess::default()
    };
    let t = Transform::plan(
        &input(&[None, Some(3), Some(4), Some(4)]),
        ds.sample_shape(),
        true,
        &pre,
    )
    .unwrap();
    let batches: Vec<_> = Batches::new(ds, t, select(4, None), 3)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), [3, 1]);
    let all: Vec<f32> = batches.iter().flat_map(|b| b.values.clone()).collect();
    for (i, sample) in all.chunks(48).enumerate() {
        let want = if i < 2 {
            [0.0, 1.0, 0.0]
        } else {
            [1.0, 0.0, 0.0]
        };
        for (c, plane) in sample.chunks(16).enumerate() {
            assert!(
                plane.iter().all(|v| (v - want[c]).abs() < 1e-6),
                "sample {i} channel {c}"
            );
        }
    }
    assert_eq!(batches[1].labels.as_deref(), Some(&[1i64][..]));
}

#[test]
fn image_folders_on_disk_and_in_zips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    for (name, bytes) in files() {
        let p = root.join("test").join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    std::fs::create_dir_all(root.join("train/a_green")).unwrap();
    std::fs::write(root.join("train/a_green/1.png"), png(8, 8, [0, 255, 0])).unwrap();
    check_folder(&format!("images:{}", root.display()), Some("test"));
    // No --split with train/ and test/ present: test.
    check_folder(&format!("{}", root.display()), None);
    check_folder(&format!("images:{}", root.join("test").display()), None);

    let zip_path = dir.path().join("imgs.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.add_directory("test/", stored).unwrap();
    for (name, bytes) in files() {
        z.start_file(format!("test/{name}"), stored).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
    check_folder(&format!("images:{}", zip_path.display()), Some("test"));
}

#[test]
fn images_of_the_wrong_size_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files() {
        let p = dir.path().join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    let spec: DataSpec = format!("images:{}", dir.path().display()).parse().unwrap();
    let ds = data::open(&spec, &OpenOptions::default()).unwrap();
    // The first image is 8x8: planned without resize, b_red/1.png (12x16) fails by name.
    let t = Transform::plan(
        &input(&[None, Some(3), Some(8), Some(8)]),
        ds.sample_shape(),
        true,
        &Preprocess::default(),
    )
    .unwrap();
    let err = Batches::new(ds, t, select(4, None), 4)
        .find_map(Result::err)
        .unwrap()
        .to_string();
    assert!(
        err.contains("b_red/1.png") && err.contains("12x16"),
        "{err}"
    );
}

#[test]
fn npz_named_keys_chw_arrays_and_float_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npz");
    // 5 samples [2, 6, 5] CHW float32, sample i filled with i.
    let x: Vec<u8> = (0..5)
        .flat_map(|i| std::iter::repeat_n(i as f32, 60))
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let y: Vec<u8> = [0.0f64, 1.0, 2.0, 1.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npz(
        &path,
        &[
            ("images", npy("<f4", &[5, 2, 6, 5], &x)),
            ("classes", npy("<f8", &[5], &y)),
            ("y_train", npy_i64(&[9; 5])),
        ],
    );
    let spec: DataSpec = format!("npz:{}", path.display()).parse().unwrap();
    let opts = OpenOptions {
        x_key: Some("images".into()),
        y_key: Some("classes".into()),
        ..OpenOptions::default()
    };
    let ds = data::open(&spec, &opts).unwrap();
    assert_eq!(ds.len(), 5);
    assert!(!ds.bytes());
    assert_eq!(ds.labels().unwrap(), [0, 1, 2, 1, 0]);
    // CHW samples into an NHWC model, every other sample.
    let t = Transform::plan(
        &input(&[None, Some(6), Some(5), Some(2)]),
        ds.sample_shape(),
        false,
        &Preprocess::default(),
    )
    .unwrap();
    let b: Vec<_> = Batches::new(ds, t, vec![1, 3], 8)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].labels.as_deref(), Some(&[1i64, 1][..]));
    assert!(b[0].values[..60].iter().all(|&v| v == 1.0));
    assert!(b[0].values[60..].iter().all(|&v| v == 3.0));
    // Default keys: no x_test/x here, so the error lists the arrays.
    let err = data::open(&spec, &OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("images") && err.contains("--x-key"), "{err}");
}

#[test]
fn raw_idx_files_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend((0..12).map(|v| v as u8 * 10));
    write("train-images-idx3-ubyte", &images);
    write(
        "train-labels-idx1-ubyte",
        &[0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9],
    );
    let spec: DataSpec = dir.path().display().to_string().parse().unwrap();
    let opts = OpenOptions {
        split: Some("train".into()),
        ..OpenOptions::default()
    };
    let ds = data::open(&spec, &opts).unwrap();
    assert_eq!(ds.labels().unwrap(), [7, 8, 9]);
    let t = Transform::plan(
        &input(&[None, Some(1), Some(2), Some(2)]),
        ds.sample_shape(),
        true,
        &Preprocess::default(),
    )
    .unwrap();
    let b: Vec<_> = Batches::new(ds, t, vec![0, 2], 1)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(b[0].values, [0.0, 10.0, 20.0, 30.0]);
    assert_eq!(b[1].values, [80.0, 90.0, 100.0, 110.0]);
    // The test split is missing here.
    let err = data::open(&spec, &OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("t10k-images-idx3-ubyte"), "{err}");
}
