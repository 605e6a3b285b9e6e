//! An XFS filesystem made with reflinks (`mkfs.xfs -m reflink=1`), loop-mounted from an image
//! file, for a worker's storage: what the branch tests and the branch benchmark run on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An XFS filesystem with reflinks, loop-mounted at `dir` for as long as it lives (as root;
/// elsewhere `dir` is a plain directory and copies are whole).
pub struct Reflinks {
    pub dir: PathBuf,
    pub mounted: bool,
}

impl Reflinks {
    /// `size`: the image's, as `truncate -s` takes it (`3G`); the image is `dir.img`.
    pub fn at(dir: &Path, size: &str) -> Reflinks {
        std::fs::create_dir_all(dir).unwrap();
        // `/proc/self` belongs to the process's effective user.
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if root {
            let image = dir.with_extension("img");
            let run = |cmd: &mut Command| {
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "{cmd:?}: {out:?}");
            };
            run(Command::new("truncate").arg("-s").arg(size).arg(&image));
            run(Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image));
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir));
        }
        Reflinks {
            dir: dir.to_path_buf(),
            mounted: root,
        }
    }

    /// How many of `file`'s bytes share their blocks with another file (a reflink copy's
    /// not yet written over), and its size, from its extent map (`filefrag`).
    pub fn shared(file: &Path) -> (u64, u64) {
        let out = Command::new("filefrag")
            .args(["-v", "-b1"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "filefrag {file:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let shared = text
            .lines()
            .filter(|l| l.trim_end().ends_with("shared") || l.contains("shared,"))
            .map(|l| {
                // ext: logical: physical: length: [expected:] flags
                l.split(':').nth(3).unwrap().trim().parse::<u64>().unwrap()
            })
            .sum();
        (shared, std::fs::metadata(file).unwrap().len())
    }
}

impl Drop for Reflinks {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
