//! Dataset and preprocessing flags (`--data`, `--split`, `--mean`, ...), parsed into the
//! library's [`DataSpec`], [`OpenOptions`] and [`Preprocess`] at the edge.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::data::spec::{parse_crop, parse_floats, parse_resize, parse_scale};
use crate::data::{self, DataSpec, Dataset, ImageLayout, Layout, OpenOptions, Preprocess, Resize};
use crate::ir::DType;

/// `--layout` of the model input.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LayoutArg {
    /// `[N, C, H, W]` (PyTorch).
    Nchw,
    /// `[N, H, W, C]` (TensorFlow/Keras).
    Nhwc,
}

/// `--data-layout` of array samples.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DataLayoutArg {
    /// Samples `[H, W, C]`.
    Hwc,
    /// Samples `[C, H, W]`.
    Chw,
}

/// `--dtype` fed to the model.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DTypeArg {
    /// float32.
    F32,
    /// float16.
    F16,
    /// float64.
    F64,
    /// uint8.
    U8,
    /// int8.
    I8,
    /// int32.
    I32,
    /// int64.
    I64,
}

/// A comma-separated list of numbers (a newtype, so that clap takes it as one value).
#[derive(Clone, Debug)]
pub struct Floats(pub Vec<f32>);

fn floats(s: &str) -> Result<Floats, String> {
    parse_floats(s).map(Floats)
}

/// Where the samples come from and how they are preprocessed.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Dataset: mnist:DIR, npz:FILE, npy:FILE, images:DIR|FILE.zip (or a path whose format
    /// is recognised). Required by `eval`; gives `prune` calibration data.
    #[arg(long, value_parser = |s: &str| s.parse::<DataSpec>())]
    pub data: Option<DataSpec>,
    /// Split: MNIST train/test, .npz key suffix (x_test), image-folder subfolder
    /// [default: test where the dataset has one].
    #[arg(long)]
    pub split: Option<String>,
    /// .npz key of the samples [default: x_<split>, x_test, x].
    #[arg(long)]
    pub x_key: Option<String>,
    /// .npz key of the labels [default: y_<split>, y_test, y].
    #[arg(long)]
    pub y_key: Option<String>,
    /// Labels of a .npy dataset (another .npy).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// How array samples are stored [default: recognised from their shape].
    #[arg(long, value_enum)]
    pub data_layout: Option<DataLayoutArg>,
    /// Factor applied to raw values, e.g. 1/255 [default: 1/255 for byte data with a
    /// --mean/--std in [0, 1], else 1].
    #[arg(long, value_parser = parse_scale)]
    pub scale: Option<f32>,
    /// Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406.
    #[arg(long, value_parser = floats)]
    pub mean: Option<Floats>,
    /// Per-channel standard deviation divided by, e.g. 0.229,0.224,0.225.
    #[arg(long, value_parser = floats)]
    pub std: Option<Floats>,
    /// The model input's layout [default: recognised from its shape].
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Resize images first: S (shorter side) or HxW (antialiased bilinear).
    #[arg(long, value_parser = parse_resize)]
    pub resize: Option<Resize>,
    /// Then crop the center: S or HxW.
    #[arg(long, value_parser = parse_crop)]
    pub crop: Option<(usize, usize)>,
    /// Element type fed to the model [default: the input's declared type].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

impl DataArgs {
    /// The first `samples` samples of the dataset, preprocessed for `model`'s input, as
    /// calibration batches (of `batch_size`, or the model's fixed batch) held in memory
    /// (recalibration, compensation).
    pub fn calibration(
        &self,
        model: &crate::ir::Model,
        batch_size: Option<usize>,
        samples: usize,
    ) -> crate::Result<Vec<crate::analysis::activation_stats::CalibrationBatch>> {
        let (dataset, pre) = self.open()?;
        crate::analysis::activation_stats::calibration_batches(
            model,
            dataset,
            &pre,
            batch_size,
            Some(samples),
        )?
        .collect()
    }

    /// Opens the dataset and returns it with the preprocessing options.
    pub fn open(&self) -> crate::Result<(Box<dyn Dataset>, Preprocess)> {
        let opts = OpenOptions {
            split: self.split.clone(),
            x_key: self.x_key.clone(),
            y_key: self.y_key.clone(),
            labels: self.labels.clone(),
            data_layout: self.data_layout.map(|l| match l {
                DataLayoutArg::Hwc => ImageLayout::Hwc,
                DataLayoutArg::Chw => ImageLayout::Chw,
            }),
        };
        let Some(spec) = &self.data else {
            return Err(crate::Error::Usage(
                "no dataset: pass --data (mnist:DIR, npz:FILE, npy:FILE or images:DIR|FILE.zip)"
                    .into(),
            ));
        };
        let ds = data::open(spec, &opts)?;
        let pre = Preprocess {
            scale: self.scale,
            mean: self.mean.clone().map(|f| f.0).unwrap_or_default(),
            std: self.std.clone().map(|f| f.0).unwrap_or_default(),
            layout: self.layout.map(|l| match l {
                LayoutArg::Nchw => Layout::Nchw,
                LayoutArg::Nhwc => Layout::Nhwc,
            }),
            resize: self.resize,
            crop: self.crop,
            dtype: self.dtype.map(|d| match d {
                DTypeArg::F32 => DType::F32,
                DTypeArg::F16 => DType::F16,
                DTypeArg::F64 => DType::F64,
                DTypeArg::U8 => DType::U8,
                DTypeArg::I8 => DType::I8,
                DTypeArg::I32 => DType::I32,
                DTypeArg::I64 => DType::I64,
            }),
        };
        Ok((ds, pre))
    }
}
