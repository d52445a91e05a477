//! [`Subset`]: a dataset seen through a list of its indices, so that one split can be cut
//! into parts that share no sample (AdaPruner scores inheritance candidates on training
//! samples the candidates did not train on). It copies nothing; reads go to the inner
//! dataset.

use crate::error::Result;

use super::{Dataset, SampleShape, Transform};

/// The samples `indices` (increasing) of `inner`, renumbered from 0.
pub struct Subset {
    inner: Box<dyn Dataset>,
    indices: Vec<usize>,
    labels: Option<Vec<i64>>,
    mapped: Vec<usize>,
}

impl Subset {
    /// `inner` restricted to `indices`, which must be increasing and below its length (others
    /// are dropped).
    pub fn new(inner: Box<dyn Dataset>, indices: Vec<usize>) -> Subset {
        let len = inner.len();
        let mut indices: Vec<usize> = indices.into_iter().filter(|&i| i < len).collect();
        indices.dedup();
        let labels = inner
            .labels()
            .map(|l| indices.iter().map(|&i| l[i]).collect());
        Subset {
            inner,
            indices,
            labels,
            mapped: Vec::new(),
        }
    }

    /// The two complementary parts of `inner`: `count` samples spread evenly over it
    /// ([`super::select`]) and every other sample, in that order.
    pub fn split(
        open: &dyn Fn() -> Result<Box<dyn Dataset>>,
        count: usize,
    ) -> Result<(Subset, Subset)> {
        let a = open()?;
        let picked = super::select(a.len(), Some(count));
        let mut is_picked = vec![false; a.len()];
        for &i in &picked {
            is_picked[i] = true;
        }
        let rest = (0..a.len()).filter(|&i| !is_picked[i]).collect();
        Ok((Subset::new(a, picked), Subset::new(open()?, rest)))
    }
}

impl Dataset for Subset {
    fn describe(&self) -> String {
        format!(
            "{} samples of {}",
            self.indices.len(),
            self.inner.describe()
        )
    }

    fn len(&self) -> usize {
        self.indices.len()
    }

    fn sample_shape(&self) -> &SampleShape {
        self.inner.sample_shape()
    }

    fn bytes(&self) -> bool {
        self.inner.bytes()
    }

    fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    fn class_names(&self) -> Option<&[String]> {
        self.inner.class_names()
    }

    fn read(&mut self, indices: &[usize], t: &Transform, out: &mut [f32]) -> Result<()> {
        let mut mapped = std::mem::take(&mut self.mapped);
        mapped.clear();
        for &i in indices {
            mapped.push(*self.indices.get(i).ok_or_else(|| {
                crate::error::Error::Usage(format!(
                    "sample {i} of a subset of {} samples",
                    self.indices.len()
                ))
            })?);
        }
        let r = self.inner.read(&mapped, t, out);
        self.mapped = mapped;
        r
    }
}
