//! Metalink 4 (RFC 5854) documents listing an order's files: each with its name, size, checksum and
//! the URL that serves it, so `aria2c -M` fetches them all and verifies each against its hash.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use std::borrow::Cow;

/// One file of a metalink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetalinkFile {
    /// Its path in the download directory (see [`safe_path`]).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its checksum algorithm as Granary records it (MD5, SHA-256, ...).
    pub algorithm: String,
    /// Its checksum, hex.
    pub checksum: String,
    /// Where to fetch it.
    pub url: String,
}

/// The IANA hash name (RFC 5854 section 4.2.4) of an algorithm, when Metalink has one.
pub fn hash_type(algorithm: &str) -> Option<&'static str> {
    match algorithm.to_ascii_uppercase().replace(['-', '_'], "").as_str() {
        "MD5" => Some("md5"),
        "SHA1" => Some("sha-1"),
        "SHA256" => Some("sha-256"),
        "SHA384" => Some("sha-384"),
        "SHA512" => Some("sha-512"),
        _ => None,
    }
}

/// A relative path made of `parts`, each made safe: no separator, no `.` or `..`, no control
/// character, never empty. A downloader writes it under its directory and nowhere else.
pub fn safe_path(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            let cleaned: String = p.chars().map(|c| if c == '/' || c == '\\' || c.is_control() || c == ':' { '_' } else { c }).collect();
            let trimmed = cleaned.trim();
            match trimmed {
                "" | "." | ".." => "_".to_owned(),
                t => t.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `c` may appear in an XML 1.0 document (its `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}

/// `text` with each character XML cannot carry replaced by U+FFFD. quick-xml escapes markup but writes
/// other characters as they are: one U+FFFF in a producer's file name (which [`safe_path`] keeps, not
/// being a control character) made the whole document malformed, and a downloader refused every file
/// of the order (found by tests/fuzz.rs).
fn xml_text(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().map(|c| if is_xml_char(c) { c } else { '\u{fffd}' }).collect())
    }
}

/// The metalink document of `files`, published at `published` (RFC 3339).
pub fn metalink(files: &[MetalinkFile], published: &str) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let _ = write(&mut w, files, published);
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

fn write(w: &mut Writer<Vec<u8>>, files: &[MetalinkFile], published: &str) -> std::io::Result<()> {
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("metalink").with_attribute(("xmlns", "urn:ietf:params:xml:ns:metalink")).write_inner_content(|w| {
        w.create_element("generator").write_text_content(BytesText::new(concat!("Granary/", env!("CARGO_PKG_VERSION"))))?;
        w.create_element("published").write_text_content(BytesText::new(&xml_text(published)))?;
        for f in files {
            w.create_element("file").with_attribute(("name", &*xml_text(&f.name))).write_inner_content(|w| {
                w.create_element("size").write_text_content(BytesText::new(&f.size.to_string()))?;
                if let Some(kind) = hash_type(&f.algorithm) {
                    w.create_element("hash").with_attribute(("type", kind)).write_text_content(BytesText::new(&xml_text(&f.checksum)))?;
                }
                w.create_element("url").write_text_content(BytesText::new(&xml_text(&f.url)))?;
                Ok::<(), std::io::Error>(())
            })?;
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metalink_lists_each_file_with_size_hash_and_url_escaped() {
        let files = vec![
            MetalinkFile {
                name: safe_path(&["tile <1>", "a&b.zip"]),
                size: 12,
                algorithm: "MD5".into(),
                checksum: "9e107d9d372bb6826bd81d3542a419d6".into(),
                url: "http://127.0.0.1:1/orders/public/files/x.1.0?orderToken=a&b".into(),
            },
            MetalinkFile { name: "n".into(), size: 0, algorithm: "CRC32".into(), checksum: "0".into(), url: "u".into() },
        ];
        let doc = metalink(&files, "2026-11-23T10:00:00Z");
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(doc.contains("<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">"));
        assert!(doc.contains("<file name=\"tile &lt;1&gt;/a&amp;b.zip\">"), "{doc}");
        assert!(doc.contains("<hash type=\"md5\">9e107d9d372bb6826bd81d3542a419d6</hash>"));
        assert!(doc.contains("orderToken=a&amp;b</url>"));
        assert_eq!(doc.matches("<hash").count(), 1, "no hash for an algorithm Metalink does not name");
        assert!(doc.contains("<published>2026-11-23T10:00:00Z</published>"));
    }

    #[test]
    fn paths_stay_under_the_download_directory() {
        assert_eq!(safe_path(&["..", "../../etc/passwd"]), "_/.._.._etc_passwd");
        assert_eq!(safe_path(&["/abs", " ", "C:\\x"]), "_abs/_/C__x");
        assert_eq!(safe_path(&["p1", "f.zip"]), "p1/f.zip");
        assert_eq!(hash_type("sha-256"), Some("sha-256"));
        assert_eq!(hash_type("SHA256"), Some("sha-256"));
    }
}
