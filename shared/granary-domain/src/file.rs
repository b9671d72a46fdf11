//! A feature's files (REGARDS's FeatureFile): where each file is (`locations`, at least one, each with
//! a URL) and what it is (`attributes`: dataType, mimeType, filename, filesize, algorithm, checksum,
//! all required, the checksum in the form its algorithm gives).

use serde_json::Value;

/// REGARDS's DataType: what a file is to its product.
pub const DATA_TYPES: [&str; 9] =
    ["RAWDATA", "QUICKLOOK_SD", "QUICKLOOK_MD", "QUICKLOOK_HD", "DOCUMENT", "THUMBNAIL", "OTHER", "AIP", "DESCRIPTION"];

/// A checksum algorithm, by the name Java's `MessageDigest` (and so REGARDS) gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// MD5, 32 hex digits.
    Md5,
    /// SHA-1, 40 hex digits.
    Sha1,
    /// SHA-256, 64 hex digits.
    Sha256,
    /// SHA-512, 128 hex digits.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Every algorithm, as named in requests.
    pub const NAMES: [&'static str; 4] = ["MD5", "SHA-1", "SHA-256", "SHA-512"];

    /// The algorithm named `name` (case-insensitively, as `MessageDigest.getInstance` takes it).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "MD5" => Some(Self::Md5),
            "SHA-1" | "SHA1" => Some(Self::Sha1),
            "SHA-256" | "SHA256" => Some(Self::Sha256),
            "SHA-512" | "SHA512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// How many hex digits a checksum of this algorithm has.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Md5 => 32,
            Self::Sha1 => 40,
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// Every error of `files` (a feature's `files` member, at `path`), each naming its path.
pub fn check_files(files: &Value, path: &str, errors: &mut Vec<String>) {
    let list = match files {
        Value::Null => return,
        Value::Array(list) => list,
        _ => return errors.push(format!("{path}: must be an array of files")),
    };
    // (checksum, filename, filesize) of each file seen, to check files that share a checksum.
    let mut seen: Vec<(String, Option<&str>, Option<u64>, usize)> = Vec::new();
    for (i, file) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(obj) = file.as_object() else {
            errors.push(format!("{at}: must be an object with locations and attributes"));
            continue;
        };
        check_locations(obj.get("locations"), &format!("{at}.locations"), errors);
        let Some(attrs) = obj.get("attributes").and_then(Value::as_object) else {
            errors.push(format!("{at}.attributes: required (dataType, mimeType, filename, filesize, algorithm, checksum)"));
            continue;
        };
        let at = format!("{at}.attributes");
        let text = |name: &str, errors: &mut Vec<String>| -> Option<&str> {
            match attrs.get(name) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
                Some(Value::String(_)) => {
                    errors.push(format!("{at}.{name}: must not be blank"));
                    None
                }
                None | Some(Value::Null) => {
                    errors.push(format!("{at}.{name}: required"));
                    None
                }
                Some(_) => {
                    errors.push(format!("{at}.{name}: must be a string"));
                    None
                }
            }
        };
        if let Some(t) = text("dataType", errors)
            && !DATA_TYPES.contains(&t)
        {
            errors.push(format!("{at}.dataType: {t:?} is not one of {}", DATA_TYPES.join(", ")));
        }
        if let Some(m) = text("mimeType", errors)
            && !is_mime_type(m)
        {
            errors.push(format!("{at}.mimeType: {m:?} is not a media type such as application/zip"));
        }
        let filename = text("filename", errors);
        if let Some(n) = filename
            && (n.contains('/') || n.contains('\\') || n == "." || n == "..")
        {
            errors.push(format!("{at}.filename: {n:?} must be a file name, not a path"));
        }
        let filesize = match attrs.get("filesize") {
            Some(v) if v.as_u64().is_some() => v.as_u64(),
            None | Some(Value::Null) => {
                errors.push(format!("{at}.filesize: required (bytes)"));
                None
            }
            Some(_) => {
                errors.push(format!("{at}.filesize: must be a whole number of bytes, 0 or more"));
                None
            }
        };
        let algorithm = text("algorithm", errors).and_then(|a| {
            let parsed = ChecksumAlgorithm::parse(a);
            if parsed.is_none() {
                errors.push(format!("{at}.algorithm: {a:?} is not one of {}", ChecksumAlgorithm::NAMES.join(", ")));
            }
            parsed
        });
        let checksum = text("checksum", errors);
        if let (Some(alg), Some(sum)) = (algorithm, checksum) {
            if sum.len() != alg.hex_len() || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!("{at}.checksum: {sum:?} is not a {} checksum ({} hex digits)", attrs["algorithm"], alg.hex_len()));
            } else {
                let sum = sum.to_ascii_lowercase();
                if let Some((_, other_name, other_size, j)) = seen.iter().find(|s| s.0 == sum)
                    && (*other_name != filename || *other_size != filesize)
                {
                    errors.push(format!(
                        "{at}.checksum: files[{j}] has the same checksum but another filename or filesize; one content is one file"
                    ));
                }
                seen.push((sum, filename, filesize, i));
            }
        }
    }
}

/// A file's `locations`: at least one, each with a `url` (and an optional `storage` name).
fn check_locations(locations: Option<&Value>, at: &str, errors: &mut Vec<String>) {
    let list = match locations {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) | None | Some(Value::Null) => return errors.push(format!("{at}: at least one location is required")),
        Some(_) => return errors.push(format!("{at}: must be an array of {{storage, url}}")),
    };
    for (i, location) in list.iter().enumerate() {
        match location.get("url") {
            Some(Value::String(u)) => {
                if let Err(e) = url::Url::parse(u) {
                    errors.push(format!("{at}[{i}].url: {u:?} is not an absolute URL ({e})"));
                }
            }
            None | Some(Value::Null) => errors.push(format!("{at}[{i}].url: required")),
            Some(_) => errors.push(format!("{at}[{i}].url: must be a string")),
        }
        if let Some(s) = location.get("storage").filter(|s| !s.is_null() && !s.is_string()) {
            errors.push(format!("{at}[{i}].storage: must be a string, not {s}"));
        }
    }
}

/// `type/subtype` with RFC 6838 token characters (parameters allowed after `;`).
fn is_mime_type(m: &str) -> bool {
    let essence = m.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file() -> Value {
        json!({
            "locations": [{"storage": "disk", "url": "file:///data/S2A.zip"}],
            "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": "S2A.zip",
                           "filesize": 734003200, "algorithm": "MD5", "checksum": "5d41402abc4b2a76b9719d911017c592"}
        })
    }

    fn errors_of(files: Value) -> Vec<String> {
        let mut errors = Vec::new();
        check_files(&files, "feature.files", &mut errors);
        errors
    }

    #[test]
    fn complete_files_pass_and_the_brief_example_too() {
        assert!(errors_of(json!([file()])).is_empty());
        assert!(errors_of(Value::Null).is_empty());
        let example: Value = serde_json::from_str(include_str!("../../../infra/granary-local/tests/fixtures/sqs-creation.json")).unwrap();
        assert_eq!(errors_of(example["feature"]["files"].clone()), Vec::<String>::new());
    }

    #[test]
    fn each_wrong_attribute_is_named_by_its_path() {
        type Change = fn(&mut Value);
        let cases: [(Change, &str); 15] = [
            (|f| f["locations"] = json!([]), "feature.files[0].locations: at least one location is required"),
            (|f| f["locations"] = json!([{"storage": "disk"}]), "feature.files[0].locations[0].url: required"),
            (|f| f["locations"][0]["url"] = json!("not a url"), "feature.files[0].locations[0].url: \"not a url\" is not an absolute URL"),
            (|f| f["attributes"]["dataType"] = json!("PICTURE"), "feature.files[0].attributes.dataType: \"PICTURE\" is not one of"),
            (|f| drop(f["attributes"].as_object_mut().unwrap().remove("dataType")), "feature.files[0].attributes.dataType: required"),
            (|f| f["attributes"]["mimeType"] = json!("zip"), "feature.files[0].attributes.mimeType: \"zip\" is not a media type"),
            (|f| f["attributes"]["filename"] = json!("../x.zip"), "feature.files[0].attributes.filename: \"../x.zip\" must be a file name"),
            (|f| f["attributes"]["filename"] = json!(" "), "feature.files[0].attributes.filename: must not be blank"),
            (|f| f["attributes"]["filesize"] = json!(-1), "feature.files[0].attributes.filesize: must be a whole number"),
            (|f| f["attributes"]["filesize"] = json!("12"), "feature.files[0].attributes.filesize: must be a whole number"),
            (|f| drop(f["attributes"].as_object_mut().unwrap().remove("filesize")), "feature.files[0].attributes.filesize: required"),
            (|f| f["attributes"]["algorithm"] = json!("CRC32"), "feature.files[0].attributes.algorithm: \"CRC32\" is not one of"),
            (
                |f| f["attributes"]["checksum"] = json!("5d41402a"),
                "feature.files[0].attributes.checksum: \"5d41402a\" is not a \"MD5\" checksum (32",
            ),
            (|f| f["attributes"]["algorithm"] = json!("SHA-256"), "is not a \"SHA-256\" checksum (64 hex digits)"),
            (|f| f["attributes"] = json!(null), "feature.files[0].attributes: required"),
        ];
        for (change, expected) in cases {
            let mut f = file();
            change(&mut f);
            let errors = errors_of(json!([f]));
            assert!(errors.iter().any(|e| e.contains(expected)), "expected {expected:?} in {errors:?}");
            assert_eq!(errors.len(), 1, "one error for one fault: {errors:?}");
        }
    }

    #[test]
    fn every_error_of_every_file_is_listed_and_shared_checksums_must_agree() {
        let mut second = file();
        second["attributes"]["filename"] = json!("other.zip");
        let mut third = file();
        third["attributes"]["mimeType"] = json!("nope");
        third["attributes"]["checksum"] = json!("zz");
        let errors = errors_of(json!([file(), second, third, "x"]));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("feature.files[1].attributes.checksum: files[0] has the same checksum"), "{errors:?}");
        assert!(errors[1].starts_with("feature.files[2].attributes.mimeType"), "{errors:?}");
        assert!(errors[2].starts_with("feature.files[2].attributes.checksum"), "{errors:?}");
        assert!(errors[3].starts_with("feature.files[3]: must be an object"), "{errors:?}");
        // The same file twice (one content, one name) is not an error.
        assert!(errors_of(json!([file(), file()])).is_empty());
        assert_eq!(errors_of(json!({"a": 1})), vec!["feature.files: must be an array of files".to_owned()]);
    }

    #[test]
    fn algorithms_take_java_names_and_checksums_their_lengths() {
        for (name, len) in [("MD5", 32), ("sha-1", 40), ("SHA-256", 64), ("SHA512", 128)] {
            assert_eq!(ChecksumAlgorithm::parse(name).map(ChecksumAlgorithm::hex_len), Some(len), "{name}");
        }
        assert!(ChecksumAlgorithm::parse("CRC32").is_none());
        assert!(is_mime_type("application/vnd.geo+json; charset=utf-8") && is_mime_type("image/png"));
        assert!(!is_mime_type("image/") && !is_mime_type("image png"));
    }
}
