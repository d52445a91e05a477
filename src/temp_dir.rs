//! Temporary files and folders, and their cleanup however the run ends.
//!
//! [`TempDir`]: a folder removed when dropped, where models are written to be run by a runtime
//! (oracle, activation statistics, latency timing). [`Registered`]: a path (a temporary
//! folder, an atomic write's temporary file) that is removed if the process is interrupted
//! while it exists. [`install_signal_cleanup`] makes SIGINT, SIGTERM and SIGHUP remove every
//! registered path and exit with 128 + the signal (130, 143, 129); [`sweep_stale`] removes the
//! temporary folders of earlier runs whose process is gone (killed with SIGKILL, crashed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Paths to remove on an interrupting signal, and whether that removal has begun (then no
/// path is made any more).
static REGISTERED: Mutex<Registry> = Mutex::new(Registry {
    paths: Vec::new(),
    closed: false,
});

/// The registered paths, in the order they were made.
struct Registry {
    paths: Vec<PathBuf>,
    closed: bool,
}

/// Locks the registry, also after a thread panicked while holding it.
fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTERED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A path registered for removal on an interrupting signal while this value lives; dropping
/// it unregisters the path (and removes nothing: the owner does that).
pub struct Registered(PathBuf);

impl Registered {
    /// Makes `path` with `make` and registers it, both under the registry's lock: an
    /// interrupting signal never finds the path made but not registered, or registered but not
    /// yet made. Once the removal has begun nothing is made: the error is `Interrupted`.
    pub fn create<T>(
        path: &Path,
        make: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> std::io::Result<(Registered, T)> {
        let mut r = registry();
        if r.closed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted by a signal",
            ));
        }
        let made = make(path)?;
        r.paths.push(path.to_path_buf());
        Ok((Registered(path.to_path_buf()), made))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut r = registry();
        if let Some(i) = r.paths.iter().rposition(|p| *p == self.0) {
            r.paths.remove(i);
        }
    }
}

/// Removes every registered path (folders with their contents), newest first, and makes no
/// path any more (see [`Registered::create`]). The registry stays locked throughout, so no
/// thread registers or unregisters meanwhile; a folder another thread is still writing into
/// is removed again until it is gone (a few tries).
pub fn remove_registered() {
    let mut r = registry();
    r.closed = true;
    for p in r.paths.drain(..).rev() {
        for _try in 0..20 {
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    if std::fs::remove_dir_all(&p).is_ok() {
                        break;
                    }
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&p);
                    break;
                }
                Err(_) => break,
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP remove the registered paths and exit with 128 + the
/// signal. Call it first thing, before any other thread starts: the signals are blocked in
/// this thread (and so in every thread started after) and taken by a thread of their own,
/// where the cleanup is not limited to async-signal-safe calls. Child processes start with
/// the signals unblocked (the standard library resets the mask).
#[cfg(unix)]
pub fn install_signal_cleanup() {
    // SAFETY: plain libc calls on a local signal set, initialised by `sigemptyset` first.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let waiter = move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised; `sig` is a valid out-pointer.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        remove_registered();
        std::process::exit(128 + sig);
    };
    let started = std::thread::Builder::new()
        .name("lopper-signals".into())
        .spawn(waiter);
    if started.is_err() {
        // No thread to take them: let the signals act as before.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Without Unix signals there is nothing to install.
#[cfg(not(unix))]
pub fn install_signal_cleanup() {}

/// Removes the `lopper-<what>-<pid>-<n>` folders under the system's temporary directory whose
/// process no longer runs (a run killed with SIGKILL cannot clean up after itself). Folders of
/// running processes, symlinks and anything else are left alone. Returns how many were removed.
pub fn sweep_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(lopper_dir_pid) else {
            continue;
        };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && pid != std::process::id() && !process_exists(pid) {
            removed += usize::from(std::fs::remove_dir_all(e.path()).is_ok());
        }
    }
    removed
}

/// The PID in a `lopper-<what>-<pid>-<n>` folder name.
fn lopper_dir_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("lopper-")?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let what = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(n) && !what.is_empty()).then_some(())?;
    pid.parse().ok().filter(|&p| p > 0 && digits(pid))
}

/// Whether process `pid` exists (when unsure, it does).
#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Without a way to ask, every process exists.
#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

/// A fresh folder under the system's temporary directory, removed (with its contents) on drop,
/// and on an interrupting signal (see [`install_signal_cleanup`]).
pub struct TempDir {
    path: PathBuf,
    /// Unregisters the folder after `drop` removed it.
    _registered: Registered,
}

impl TempDir {
    /// Creates `lopper-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "lopper-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let (registered, ()) =
            Registered::create(&p, |p| std::fs::create_dir_all(p)).map_err(|e| Error::io(&p, e))?;
        Ok(TempDir {
            path: p,
            _registered: registered,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_give_their_pid() {
        assert_eq!(lopper_dir_pid("lopper-oracle-1234-0"), Some(1234));
        assert_eq!(lopper_dir_pid("lopper-compress-check-77-12"), Some(77));
        assert_eq!(lopper_dir_pid("lopper-oracle-12x-0"), None);
        assert_eq!(lopper_dir_pid("lopper-1234-0"), None);
        assert_eq!(lopper_dir_pid("other-oracle-1234-0"), None);
    }

    #[test]
    fn registered_paths_are_removed_and_unregistered_on_drop() {
        let dir = TempDir::new("registry-test").unwrap();
        let file = dir.path().join("f");
        {
            let _r = Registered::create(&file, |f| std::fs::write(f, b"x")).unwrap();
        }
        // Dropped: no longer registered, so nothing removes it.
        assert!(registry().paths.iter().all(|p| *p != file));
        assert!(file.exists());
    }
}
