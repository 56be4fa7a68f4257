//! The element storage of a tensor: an owned vector, or a read-only view of bytes someone else
//! owns (a memory-mapped weights file; a caller's array, shared by a binding).
//!
//! A model folder's weights are hundreds of megabytes. Copying them out of the file costs more
//! than the rest of a warm start (the kernel zeroes every freshly touched page of the copy), so
//! the safetensors reader hands out views of the mapping instead ([`Elements::mapped`]): the
//! map stays alive, shared by an [`Arc`], as long as any tensor views it. Reading a view is
//! reading the slice; writing one (a backend reusing an input's buffer for an output) first
//! copies it into an owned vector (copy on write), so a mapped file is never written.

use std::fmt;
use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

/// The bytes a view reads: a whole file's read-only memory map, or any other read-only bytes
/// that stay valid and unchanged as long as the `Arc` lives (a binding's view of a caller's
/// array).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The elements of a tensor in row-major order: an owned `Vec<T>` or a view of a mapped file.
///
/// It dereferences to `[T]` either way. Mutable access ([`DerefMut`], [`Elements::make_owned`])
/// copies a mapped view into an owned vector first; cloning a mapped view shares the mapping.
pub struct Elements<T: bytemuck::Pod> {
    repr: Repr<T>,
}

enum Repr<T> {
    Owned(Vec<T>),
    Mapped {
        bytes: SharedBytes,
        /// Byte offset of the first element in `bytes`, a multiple of `T`'s alignment.
        start: usize,
        /// Number of elements.
        len: usize,
    },
}

impl<T: bytemuck::Pod> Elements<T> {
    /// A view of the little-endian elements at byte range `range` of `bytes`, or `None` when
    /// they cannot be read in place: the range is out of bounds, not a whole number of
    /// elements, or not aligned for `T`, or the host is big-endian. The caller then copies.
    pub fn mapped(bytes: &SharedBytes, range: Range<usize>) -> Option<Elements<T>> {
        let size = std::mem::size_of::<T>();
        let raw = (**bytes).as_ref().get(range.clone())?;
        if cfg!(target_endian = "big") || raw.len() % size != 0 {
            return None;
        }
        // `try_cast_slice` checks the alignment (and the length, again).
        bytemuck::try_cast_slice::<u8, T>(raw).ok()?;
        Some(Elements {
            repr: Repr::Mapped {
                bytes: Arc::clone(bytes),
                start: range.start,
                len: raw.len() / size,
            },
        })
    }

    /// Whether the elements are read in place from a mapped file (not owned).
    pub fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }

    /// The elements as a slice.
    pub fn as_slice(&self) -> &[T] {
        match &self.repr {
            Repr::Owned(v) => v,
            Repr::Mapped { bytes, start, len } => {
                let size = std::mem::size_of::<T>();
                // Checked when the view was made (`Elements::mapped`): in bounds and aligned.
                bytemuck::cast_slice(&(**bytes).as_ref()[*start..*start + *len * size])
            }
        }
    }

    /// The owned vector, copying a mapped view into one first (copy on write).
    pub fn make_owned(&mut self) -> &mut Vec<T> {
        if let Repr::Mapped { .. } = self.repr {
            self.repr = Repr::Owned(self.as_slice().to_vec());
        }
        match &mut self.repr {
            Repr::Owned(v) => v,
            Repr::Mapped { .. } => unreachable!("a mapped view was just copied"),
        }
    }

    /// The elements as an owned vector (no copy when they are owned already).
    pub fn into_vec(mut self) -> Vec<T> {
        std::mem::take(self.make_owned())
    }
}

impl<T: bytemuck::Pod> Deref for Elements<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

/// Mutable access copies a mapped view into an owned vector first (see [`Elements::make_owned`]).
impl<T: bytemuck::Pod> DerefMut for Elements<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.make_owned()
    }
}

impl<T: bytemuck::Pod> From<Vec<T>> for Elements<T> {
    fn from(v: Vec<T>) -> Elements<T> {
        Elements {
            repr: Repr::Owned(v),
        }
    }
}

impl<T: bytemuck::Pod> FromIterator<T> for Elements<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Elements<T> {
        Vec::from_iter(iter).into()
    }
}

impl<'a, T: bytemuck::Pod> IntoIterator for &'a Elements<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> std::slice::Iter<'a, T> {
        self.as_slice().iter()
    }
}

/// Cloning an owned vector copies it; cloning a mapped view shares the mapping.
impl<T: bytemuck::Pod> Clone for Elements<T> {
    fn clone(&self) -> Elements<T> {
        let repr = match &self.repr {
            Repr::Owned(v) => Repr::Owned(v.clone()),
            Repr::Mapped { bytes, start, len } => Repr::Mapped {
                bytes: Arc::clone(bytes),
                start: *start,
                len: *len,
            },
        };
        Elements { repr }
    }
}

/// Equal when the elements are, however they are stored.
impl<T: bytemuck::Pod + PartialEq> PartialEq for Elements<T> {
    fn eq(&self, other: &Elements<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// Printed as the list of elements, as a `Vec` is.
impl<T: bytemuck::Pod + fmt::Debug> fmt::Debug for Elements<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn map_of(bytes: &[u8]) -> (tempfile_path::TempFile, SharedBytes) {
        let file = tempfile_path::TempFile::new(bytes);
        let f = std::fs::File::open(&file.0).unwrap();
        // SAFETY: the test's own temporary file, not written while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        (file, Arc::new(map))
    }

    mod tempfile_path {
        use super::*;
        use std::sync::atomic::{AtomicUsize, Ordering};
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(bytes: &[u8]) -> TempFile {
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "tttc-elements-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::File::create(&path)
                    .unwrap()
                    .write_all(bytes)
                    .unwrap();
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn a_view_reads_the_file_and_copies_on_write() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let mut bytes = vec![0u8; 4]; // the elements start at byte 4: aligned for f32
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let (_file, map) = map_of(&bytes);
        let mut e = Elements::<f32>::mapped(&map, 4..20).unwrap();
        assert!(e.is_mapped());
        assert_eq!(&*e, &values);
        let shared = e.clone();
        assert!(shared.is_mapped());
        assert_eq!(shared, Elements::from(values.to_vec()));
        e[0] = 7.0; // copies
        assert!(!e.is_mapped());
        assert_eq!(&*e, &[7.0, -2.0, 3.25, 0.0]);
        assert_eq!(&*shared, &values, "the mapping is untouched");
        assert_eq!(format!("{shared:?}"), format!("{:?}", values.to_vec()));
        assert_eq!(shared.into_vec(), values.to_vec());
    }

    #[test]
    fn unaligned_or_ragged_ranges_are_not_viewed() {
        let (_file, map) = map_of(&[0u8; 64]);
        assert!(Elements::<f32>::mapped(&map, 1..9).is_none(), "unaligned");
        assert!(Elements::<f32>::mapped(&map, 4..10).is_none(), "ragged");
        assert!(
            Elements::<f32>::mapped(&map, 60..68).is_none(),
            "out of bounds"
        );
        assert!(Elements::<f64>::mapped(&map, 8..24).is_some());
    }
}
