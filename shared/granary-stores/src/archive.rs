//! A zip of an order's files, written as it is read: each stored object is streamed from the blob
//! store into the archive (stored, not compressed: Earth-observation products are compressed
//! already), then a NOTICE.txt lists what is not in it and why. The archive goes to any `Write` (an
//! HTTP response body on one machine), so memory does not grow with it.

use crate::StoreError;
use crate::orders::OrderStore;
use granary_domain::catalog::ProductFile;
use granary_domain::dispatch::{Source, source_of};
use granary_domain::metalink::safe_path;
use granary_domain::storage::Locations;
use granary_ports::{Backend, Item};
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

/// Most files one zip holds (its plan is held in memory while it streams).
pub const MAX_ZIP_FILES: usize = 10_000;

/// What a zip of an order holds: the stored files available now, and a notice of the others.
#[derive(Debug, Clone, Default)]
pub struct ZipPlan {
    /// The order.
    pub order_id: String,
    /// The files to put in it.
    pub entries: Vec<ZipEntry>,
    /// Their order items, in the same order (to record their download).
    pub files: Vec<Item>,
    /// What is not in it, and why.
    pub notice: Vec<String>,
}

/// The zip of the files of order `order_id` available now: stored files go in it (named
/// `<providerId>/<filename>`, each once); files in error, files still pending, and referenced files
/// (read where they are) are listed in its notice.
pub async fn plan(backend: &Backend, orders: &OrderStore, order_id: &str, locations: &Locations) -> Result<ZipPlan, StoreError> {
    let mut plan = ZipPlan { order_id: order_id.to_owned(), ..ZipPlan::default() };
    let mut names = std::collections::BTreeSet::new();
    let mut cursor = None;
    loop {
        let (items, next) = orders.files(backend, order_id, None, cursor, 1000).await?;
        for item in items {
            let Some(file) = item.get("file").and_then(|f| serde_json::from_value::<ProductFile>(f.clone()).ok()) else { continue };
            let name = safe_path(&[item.get_str("providerId").unwrap_or_default(), &file.filename]);
            match (item.get_str("state").unwrap_or_default(), source_of(&file, locations)) {
                ("AVAILABLE", Source::Online { bucket, key } | Source::Nearline { bucket, key }) if plan.entries.len() < MAX_ZIP_FILES => {
                    // The same file named twice goes in once.
                    if names.insert(name.clone()) {
                        plan.entries.push(ZipEntry { name, bucket, key });
                        plan.files.push(item);
                    }
                }
                ("AVAILABLE", Source::Online { .. } | Source::Nearline { .. }) => {
                    plan.notice.push(format!("{name}: past the {MAX_ZIP_FILES} files of one archive; download it again for the rest"))
                }
                ("AVAILABLE", _) => plan.notice.push(format!("{name}: read where it is, {}", file.url)),
                ("PENDING", _) => plan.notice.push(format!("{name}: not available yet")),
                ("DOWNLOADED", _) => {}
                (state, _) => plan.notice.push(format!("{name}: {state}, {}", item.get_str("cause").unwrap_or("no cause recorded"))),
            }
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(plan),
        }
    }
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
    write_zip_with(rt, backend, entries, notice, None, out)
}

/// As [`write_zip`], with a MANIFEST.txt of `manifest` lines (one per entry, those written) too.
pub fn write_zip_with(
    rt: &tokio::runtime::Handle,
    backend: &Backend,
    entries: &[ZipEntry],
    notice: &[String],
    manifest: Option<&[String]>,
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
    if let Some(lines) = manifest {
        zip.start_file("MANIFEST.txt", options).map_err(std::io::Error::other)?;
        for (i, line) in lines.iter().enumerate() {
            if written.contains(&i) {
                zip.write_all(format!("{line}\n").as_bytes())?;
            }
        }
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
