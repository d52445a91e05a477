//! Sequential access to the samples of an array stored sample after sample (a `.npy` body, an
//! IDX file): samples are read in increasing index order, skipping over the ones not asked for,
//! so compressed streams (gzip, deflate) work and nothing is held beyond one sample.

use std::io::{self, Read};

/// A stream of fixed-size samples.
pub struct ArrayStream {
    reader: Box<dyn Read + Send>,
    sample_bytes: usize,
    len: usize,
    /// Index of the next sample in the stream.
    pos: usize,
    skip: Vec<u8>,
}

impl ArrayStream {
    /// A stream of `len` samples of `sample_bytes` each, the reader at the first one.
    pub fn new(reader: Box<dyn Read + Send>, sample_bytes: usize, len: usize) -> ArrayStream {
        ArrayStream {
            reader,
            sample_bytes,
            len,
            pos: 0,
            skip: Vec::new(),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per sample.
    pub fn sample_bytes(&self) -> usize {
        self.sample_bytes
    }

    /// Reads sample `index` into `buf` (`sample_bytes` long). Indices must increase from call
    /// to call; earlier ones are an error.
    pub fn read(&mut self, index: usize, buf: &mut [u8]) -> io::Result<()> {
        if index < self.pos || index >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "sample {index} requested at position {} of {}",
                    self.pos, self.len
                ),
            ));
        }
        if index > self.pos {
            let mut left = (index - self.pos) as u64 * self.sample_bytes as u64;
            self.skip.resize(self.sample_bytes.clamp(1, 1 << 16), 0);
            while left > 0 {
                let n = left.min(self.skip.len() as u64) as usize;
                self.reader.read_exact(&mut self.skip[..n])?;
                left -= n as u64;
            }
        }
        self.reader.read_exact(&mut buf[..self.sample_bytes])?;
        self.pos = index + 1;
        Ok(())
    }
}
