//! A zip of an order's files, written as it is read: each stored object is streamed from the blob
//! store into the archive (stored, not compressed: Earth-observation products are compressed
//! already), then a NOTICE.txt lists what is not in it and why. The archive goes to any `Write` (an
//! HTTP response body on one machine), so memory does not grow with it.

use granary_ports::Backend;
use std::io::Write;
use tokio_util::io::SyncIoBridge;
use zip::write::SimpleFileOptions;

/// One file to put in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Its path in the archive.
    pub name: String,
    /// The bucket holding it.
    pub bucket: String,
    /// Its key there.
    pub key: String,
}

/// Writes `entries` and a NOTICE.txt of `notice` lines (plus any entry that could not be read) into a
/// zip on `out`. Runs on a blocking thread; `rt` reads the blobs. Returns the indexes of the entries
/// written whole.
pub fn write_zip(
    rt: &tokio::runtime::Handle,
    backend: &Backend,
    entries: &[ZipEntry],
    notice: &[String],
    out: impl Write,
) -> std::io::Result<Vec<usize>> {
    let mut zip = zip::ZipWriter::new_stream(out);
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    let mut written = Vec::new();
    let mut notes: Vec<String> = notice.to_vec();
    for (i, entry) in entries.iter().enumerate() {
        let reader = match rt.block_on(backend.blobs.get(&entry.bucket, &entry.key)) {
            Ok((_, reader)) => reader,
            Err(e) => {
                notes.push(format!("{}: not in this archive, it could not be read ({e}); download it alone", entry.name));
                continue;
            }
        };
        zip.start_file(entry.name.as_str(), options).map_err(std::io::Error::other)?;
        let mut bridge = SyncIoBridge::new_with_handle(reader, rt.clone());
        // A read failing halfway leaves a broken entry the client sees; the whole download fails.
        std::io::copy(&mut bridge, &mut zip)?;
        written.push(i);
    }
    zip.start_file("NOTICE.txt", options).map_err(std::io::Error::other)?;
    if notes.is_empty() {
        zip.write_all(b"Every file of the order that could be downloaded is in this archive.\n")?;
    } else {
        zip.write_all(b"Files of the order that are not in this archive:\n")?;
        for line in &notes {
            zip.write_all(format!("- {line}\n").as_bytes())?;
        }
    }
    zip.finish().map_err(std::io::Error::other)?;
    Ok(written)
}
