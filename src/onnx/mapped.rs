//! Memory-mapped model files, and giving their pages back once a tensor is replaced.
//!
//! Large files are mapped read-only instead of read into the heap, and tensors keep `Bytes`
//! slices of the mapping. When pruning replaces a weight by a smaller copy, [`release`] tells
//! the kernel the old range is no longer needed (`MADV_DONTNEED`): the pages leave the
//! process's resident set, so peak memory stays near the file size instead of file + pruned
//! copy. This is transparent for correctness: the mapping is private and never written, so a
//! later read of a released range (e.g. by a clone kept for verification) faults the bytes back
//! in from the file.
//!
//! What it does not do: protect against the file being truncated by another process while
//! mapped (as with any mapping, that would fault). lopper itself never writes over an input in
//! place: saving writes a temporary file and renames it.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};

/// Files smaller than this are read into the heap (mapping them saves nothing).
const MAP_THRESHOLD: u64 = 1 << 20;

/// Live mappings, so [`release`] can find the one holding a slice.
static MAPS: Mutex<Vec<Weak<Mmap>>> = Mutex::new(Vec::new());

struct Owner(Arc<Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Opens `path` for reading without blocking (a FIFO would otherwise block `open` until a
/// writer appears) and refuses anything but a regular file: FIFOs, sockets, devices such as
/// `/dev/zero` (which would be read until memory runs out) and directories. The type is checked
/// on the opened handle, so a file swapped after a path check is caught too.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = file_kind(&meta);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({kind})"),
        ));
    }
    Ok(file)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    "not a plain file"
}

/// The contents of `path`, a regular file (see [`open_regular`]): mapped when large, read
/// otherwise. Never reads more than the size the file had when opened.
pub fn read_file(path: &Path) -> std::io::Result<Bytes> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len < MAP_THRESHOLD {
        use std::io::Read;
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut buf)?;
        return Ok(Bytes::from(buf));
    }
    // SAFETY: the mapping is read-only and private; lopper never writes to its input files in
    // place (saves go to a temporary file that is renamed), see the module comment.
    let map = match unsafe { Mmap::map(&file) } {
        Ok(m) => Arc::new(m),
        Err(_) => {
            use std::io::Read;
            let mut buf = Vec::with_capacity(len as usize);
            (&file).take(len).read_to_end(&mut buf)?;
            return Ok(Bytes::from(buf));
        }
    };
    if let Ok(mut maps) = MAPS.lock() {
        maps.retain(|w| w.strong_count() > 0);
        maps.push(Arc::downgrade(&map));
    }
    Ok(Bytes::from_owner(Owner(map)))
}

/// Hints that `data` (a slice of a mapped file) will not be read again soon: its whole pages
/// leave the resident set. Does nothing for heap data.
pub fn release(data: &[u8]) {
    if data.len() < 2 * page_size() {
        return;
    }
    let Ok(maps) = MAPS.lock() else { return };
    let start = data.as_ptr() as usize;
    for map in maps.iter().filter_map(Weak::upgrade) {
        let base = map.as_ptr() as usize;
        if start < base || start + data.len() > base + map.len() {
            continue;
        }
        let page = page_size();
        let first = (start - base).div_ceil(page) * page;
        let end = (start - base + data.len()) / page * page;
        if end > first {
            // SAFETY: the mapping is private and read-only, so dropping its pages loses
            // nothing: later reads fault them back in from the file.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first)
            };
        }
        return;
    }
}

/// Gives heap memory freed by the allocator back to the kernel (glibc keeps freed blocks in
/// its arenas, so a model's dropped weights would otherwise stay in the resident set while
/// the runtimes load their copies). Does nothing on other platforms.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn page_size() -> usize {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let bytes = read_file(&path).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        let part = bytes.slice(100_000..2_500_000);
        release(&part);
        assert_eq!(&part[..], &data[100_000..2_500_000]);
        assert_eq!(&bytes[..], &data[..]);
    }
}
