//! A user's basket, as REGARDS keeps it: per dataset, the dated selection requests that filled it (a
//! search of the dataset with ids to exclude, or ids to include), with objects, files and bytes counted
//! when each selection was made, and the file filters or processing chosen for the dataset. Pure
//! rules; the basket-api resolves ids and counts products through the catalog.

use crate::catalog::{ORDERABLE_TYPES, ProductFile, ProductSearch};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Selection requests as REGARDS's `BasketSelectionRequest`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasketSelectionRequest {
    /// REGARDS's search engine: `legacy` or none (Granary has one search); another is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_type: Option<String>,
    /// The dataset searched (URN or providerId); required unless ids are included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_urn: Option<String>,
    /// Search parameters as the product search takes them (`from`, `to`, `bbox`, `property.<name>`),
    /// each a value or a list of one value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub search_parameters: BTreeMap<String, OneOrMany>,
    /// Products to select (URNs, or providerIds meaning their latest version); when given, exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity_ids_to_include: Vec<String>,
    /// Products the search must leave out (URNs or providerIds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity_ids_to_exclude: Vec<String>,
    /// Set by Granary to the time the selection is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_date: Option<DateTime<Utc>>,
}

/// A value of a multi-value map: REGARDS sends lists, people send strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// A list of values.
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

impl BasketSelectionRequest {
    /// The product search its parameters describe, naming every bad parameter.
    pub fn search(&self) -> Result<ProductSearch, Vec<String>> {
        let mut pairs = Vec::new();
        let mut errors = Vec::new();
        for (name, values) in &self.search_parameters {
            match values.values().as_slice() {
                [one] => pairs.push((name.as_str(), *one)),
                _ => errors.push(format!("searchParameters.{name}: give exactly one value")),
            }
        }
        match ProductSearch::from_params(pairs, &[]) {
            Ok(s) if errors.is_empty() => Ok(s),
            Ok(_) => Err(errors),
            Err(e) => Err(errors.into_iter().chain(e.into_iter().map(|e| format!("searchParameters.{e}"))).collect()),
        }
    }
}

/// What a dated selection holds, once resolved: a dataset search less exclusions, or products by URN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredSelection {
    /// The request as the user sent it (`entityIdsToInclude` resolved to URNs).
    #[serde(flatten)]
    pub request: BasketSelectionRequest,
}

impl StoredSelection {
    /// Whether `product` (a feature version) is selected by this request, `search` being its parsed search.
    pub fn selects(&self, product: &Value, search: &ProductSearch, date_property: &str) -> bool {
        let urn = product.get("urn").and_then(Value::as_str).unwrap_or_default();
        if !self.request.entity_ids_to_include.is_empty() {
            return self.request.entity_ids_to_include.iter().any(|u| u == urn);
        }
        let id = product.get("id").and_then(Value::as_str).unwrap_or_default();
        !self.request.entity_ids_to_exclude.iter().any(|x| x == urn || x == id) && search.matches(product, date_property)
    }
}

/// REGARDS's `BasketDatedItemsSelectionDto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatedItemsSelection {
    /// When it was made; names it in `DELETE /order/basket/dataset/{id}/{itemsSelectionDate}`.
    pub date: DateTime<Utc>,
    /// What it selects.
    pub selection_request: StoredSelection,
    /// Products selected when it was made.
    pub objects_count: u64,
    /// Their files of the orderable types.
    pub files_count: u64,
    /// Those files' bytes.
    pub files_size: u64,
}

/// REGARDS's `FileSelectionDescriptionDto`: which files of a dataset's products to order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSelectionDescription {
    /// File types to keep (RAWDATA, QUICKLOOK_SD, QUICKLOOK_MD, QUICKLOOK_HD); all when empty.
    #[serde(default)]
    pub file_types: Vec<String>,
    /// A regular expression the whole file name must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name_pattern: Option<String>,
}

impl FileSelectionDescription {
    /// Checks the filter, naming each problem.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errors: Vec<String> = self
            .file_types
            .iter()
            .filter(|t| !ORDERABLE_TYPES.contains(&t.as_str()))
            .map(|t| format!("fileTypes: {t:?} is not one of {}", ORDERABLE_TYPES.join(", ")))
            .collect();
        if let Some(p) = &self.file_name_pattern
            && let Err(e) = regex::Regex::new(&format!("^(?:{p})$"))
        {
            errors.push(format!("fileNamePattern: not a regular expression: {e}"));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// The filter ready to apply (an unusable pattern keeps nothing; [`FileSelectionDescription::check`]
    /// refuses it first).
    pub fn compile(&self) -> FileFilter {
        FileFilter {
            types: self.file_types.clone(),
            pattern: self.file_name_pattern.as_ref().map(|p| regex::Regex::new(&format!("^(?:{p})$")).map_err(drop)),
        }
    }
}

/// A compiled [`FileSelectionDescription`].
#[derive(Debug, Clone)]
pub struct FileFilter {
    types: Vec<String>,
    pattern: Option<Result<regex::Regex, ()>>,
}

impl FileFilter {
    /// Keeps every orderable file.
    pub fn all() -> Self {
        Self { types: vec![], pattern: None }
    }

    /// Whether `file` is ordered: of an orderable type, of a kept type, matching the pattern.
    pub fn keeps(&self, file: &ProductFile) -> bool {
        ORDERABLE_TYPES.contains(&file.data_type.as_str())
            && (self.types.is_empty() || self.types.contains(&file.data_type))
            && match &self.pattern {
                None => true,
                Some(Ok(re)) => re.is_match(&file.filename),
                Some(Err(())) => false,
            }
    }
}

/// REGARDS's `BasketDatasetSelectionDto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSelection {
    /// Its id in this basket (`/order/basket/dataset/{id}`).
    pub id: u64,
    /// The dataset's URN.
    pub dataset_ipid: String,
    /// The dataset's label.
    pub dataset_label: String,
    /// Distinct products its selections hold (counted when they change).
    pub objects_count: u64,
    /// Their files kept by the file filters.
    pub files_count: u64,
    /// Those files' bytes.
    pub files_size: u64,
    /// The dated selections, oldest first.
    pub items_selections: Vec<DatedItemsSelection>,
    /// Processing chosen for the dataset (`{processBusinessId, parameters}`), kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_dataset_description: Option<Value>,
    /// File filters chosen for the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_selection_description: Option<FileSelectionDescription>,
}

impl DatasetSelection {
    /// The file filter in force.
    pub fn file_filter(&self) -> FileFilter {
        self.file_selection_description.as_ref().map(FileSelectionDescription::compile).unwrap_or_else(FileFilter::all)
    }
}

/// A user's basket (REGARDS's `BasketDto`, with the version that guards its writes).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Basket {
    /// The user.
    pub owner: String,
    /// One per dataset.
    pub dataset_selections: Vec<DatasetSelection>,
    /// The id the next dataset selection gets.
    #[serde(default)]
    pub next_id: u64,
}

/// Counts of a set of products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Products.
    pub objects: u64,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Counts {
    /// Adds one product with `files`, those `filter` keeps.
    pub fn add(&mut self, files: &[ProductFile], filter: &FileFilter) {
        self.objects += 1;
        for f in files.iter().filter(|f| filter.keeps(f)) {
            self.files += 1;
            self.bytes = self.bytes.saturating_add(f.size);
        }
    }
}

/// Why a basket change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BasketError {
    /// No dataset selection has that id.
    #[error("the basket has no dataset selection {0}")]
    NoDatasetSelection(u64),
    /// No dated selection of the dataset selection has that date.
    #[error("dataset selection {0} has no selection dated {1}")]
    NoDatedSelection(u64, String),
    /// Processing and file filters were both asked for.
    #[error("a dataset selection cannot have both processing and file filters: remove one first")]
    ProcessingAndFilters,
}

impl Basket {
    /// An empty basket of `owner`.
    pub fn empty(owner: &str) -> Self {
        Self { owner: owner.to_owned(), dataset_selections: vec![], next_id: 1 }
    }

    /// Adds a dated selection of products to the dataset's selection (made if new), returning the
    /// dataset selection's id. Its date is `now`, moved on by a millisecond while the dataset already
    /// has a selection of that date, so that a date names one selection.
    pub fn add(&mut self, dataset_urn: &str, dataset_label: &str, mut selection: DatedItemsSelection) -> u64 {
        let index = match self.dataset_selections.iter().position(|d| d.dataset_ipid == dataset_urn) {
            Some(i) => i,
            None => {
                let id = self.next_id.max(1);
                self.next_id = id + 1;
                self.dataset_selections.push(DatasetSelection {
                    id,
                    dataset_ipid: dataset_urn.to_owned(),
                    dataset_label: dataset_label.to_owned(),
                    objects_count: 0,
                    files_count: 0,
                    files_size: 0,
                    items_selections: vec![],
                    process_dataset_description: None,
                    file_selection_description: None,
                });
                self.dataset_selections.len() - 1
            }
        };
        let ds = &mut self.dataset_selections[index];
        while ds.items_selections.iter().any(|s| s.date == selection.date) {
            selection.date += chrono::Duration::milliseconds(1);
        }
        selection.selection_request.request.selection_date = Some(selection.date);
        ds.items_selections.push(selection);
        ds.id
    }

    /// The dataset selection `id`.
    pub fn dataset_mut(&mut self, id: u64) -> Result<&mut DatasetSelection, BasketError> {
        self.dataset_selections.iter_mut().find(|d| d.id == id).ok_or(BasketError::NoDatasetSelection(id))
    }

    /// Removes the dataset selection `id`.
    pub fn remove_dataset(&mut self, id: u64) -> Result<(), BasketError> {
        let before = self.dataset_selections.len();
        self.dataset_selections.retain(|d| d.id != id);
        if self.dataset_selections.len() == before { Err(BasketError::NoDatasetSelection(id)) } else { Ok(()) }
    }

    /// Removes the selection dated `date` from the dataset selection `id` (the dataset selection too
    /// when it was its last). Returns whether the dataset selection is still there.
    pub fn remove_dated(&mut self, id: u64, date: DateTime<Utc>) -> Result<bool, BasketError> {
        let ds = self.dataset_mut(id)?;
        let before = ds.items_selections.len();
        ds.items_selections.retain(|s| s.date != date);
        if ds.items_selections.len() == before {
            return Err(BasketError::NoDatedSelection(id, date.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        }
        if ds.items_selections.is_empty() {
            self.remove_dataset(id)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Sets (or, with `None`, removes) the file filters of the dataset selection `id`.
    pub fn set_file_filters(&mut self, id: u64, filters: Option<FileSelectionDescription>) -> Result<(), BasketError> {
        let ds = self.dataset_mut(id)?;
        if filters.is_some() && ds.process_dataset_description.is_some() {
            return Err(BasketError::ProcessingAndFilters);
        }
        ds.file_selection_description = filters;
        Ok(())
    }

    /// Sets (or, with `None`, removes) the processing of the dataset selection `id`.
    pub fn set_processing(&mut self, id: u64, processing: Option<Value>) -> Result<(), BasketError> {
        let ds = self.dataset_mut(id)?;
        if processing.is_some() && ds.file_selection_description.is_some() {
            return Err(BasketError::ProcessingAndFilters);
        }
        ds.process_dataset_description = processing;
        Ok(())
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.dataset_selections.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dated(date: &str, include: &[&str]) -> DatedItemsSelection {
        DatedItemsSelection {
            date: date.parse().unwrap(),
            selection_request: StoredSelection {
                request: BasketSelectionRequest {
                    entity_ids_to_include: include.iter().map(|s| (*s).to_owned()).collect(),
                    ..Default::default()
                },
            },
            objects_count: include.len() as u64,
            files_count: 0,
            files_size: 0,
        }
    }

    #[test]
    fn selections_group_by_dataset_and_dates_name_one_selection_each() {
        let mut b = Basket::empty("ann");
        let a = b.add("urn:A", "A", dated("2026-01-01T00:00:00Z", &["u1"]));
        let a2 = b.add("urn:A", "A", dated("2026-01-01T00:00:00Z", &["u2"]));
        let bb = b.add("urn:B", "B", dated("2026-01-01T00:00:00Z", &["u3"]));
        assert_eq!((a, a2, bb), (1, 1, 2));
        let dates: Vec<String> = b.dataset_selections[0].items_selections.iter().map(|s| s.date.to_rfc3339()).collect();
        assert_eq!(dates, ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.001+00:00"]);
        assert_eq!(
            b.dataset_selections[0].items_selections[1].selection_request.request.selection_date,
            Some("2026-01-01T00:00:00.001Z".parse().unwrap())
        );
        assert!(b.remove_dated(1, "2026-01-01T00:00:00Z".parse().unwrap()).unwrap());
        assert!(matches!(b.remove_dated(1, "2026-01-01T00:00:00Z".parse().unwrap()), Err(BasketError::NoDatedSelection(1, _))));
        assert!(!b.remove_dated(1, "2026-01-01T00:00:00.001Z".parse().unwrap()).unwrap());
        assert_eq!(b.dataset_selections.len(), 1);
        assert_eq!(b.remove_dataset(1), Err(BasketError::NoDatasetSelection(1)));
        // Ids are not reused.
        assert_eq!(b.add("urn:A", "A", dated("2026-01-02T00:00:00Z", &["u1"])), 3);
    }

    #[test]
    fn processing_and_filters_exclude_each_other() {
        let mut b = Basket::empty("ann");
        let id = b.add("urn:A", "A", dated("2026-01-01T00:00:00Z", &["u1"]));
        b.set_processing(id, Some(json!({"processBusinessId": "p"}))).unwrap();
        assert_eq!(b.set_file_filters(id, Some(FileSelectionDescription::default())), Err(BasketError::ProcessingAndFilters));
        b.set_processing(id, None).unwrap();
        b.set_file_filters(id, Some(FileSelectionDescription::default())).unwrap();
        assert_eq!(b.set_processing(id, Some(json!({}))), Err(BasketError::ProcessingAndFilters));
        assert_eq!(b.set_file_filters(9, None), Err(BasketError::NoDatasetSelection(9)));
    }

    fn file(data_type: &str, name: &str) -> ProductFile {
        ProductFile {
            data_type: data_type.into(),
            filename: name.into(),
            mime_type: String::new(),
            size: 5,
            checksum: String::new(),
            algorithm: String::new(),
            online: true,
            reference: false,
            storage: None,
            url: String::new(),
        }
    }

    #[test]
    fn file_filters_keep_types_and_names_and_never_other_types() {
        let all = FileFilter::all();
        assert!(all.keeps(&file("RAWDATA", "a.zip")) && all.keeps(&file("QUICKLOOK_HD", "q.jpg")));
        assert!(!all.keeps(&file("THUMBNAIL", "t.png")) && !all.keeps(&file("DESCRIPTION", "d.pdf")));
        let f = FileSelectionDescription { file_types: vec!["RAWDATA".into()], file_name_pattern: Some(r".*\.zip".into()) };
        assert!(f.check().is_ok());
        let f = f.compile();
        assert!(f.keeps(&file("RAWDATA", "a.zip")) && !f.keeps(&file("RAWDATA", "a.zip.md5")) && !f.keeps(&file("QUICKLOOK_SD", "q.zip")));
        let bad = FileSelectionDescription { file_types: vec!["PICTURE".into()], file_name_pattern: Some("(".into()) };
        assert_eq!(bad.check().unwrap_err().len(), 2);
        let mut counts = Counts::default();
        counts.add(&[file("RAWDATA", "a.zip"), file("QUICKLOOK_SD", "q.jpg"), file("THUMBNAIL", "t")], &FileFilter::all());
        assert_eq!(counts, Counts { objects: 1, files: 2, bytes: 10 });
    }

    #[test]
    fn selections_select_included_urns_or_the_search_less_exclusions() {
        let p = json!({"id": "p1", "urn": "URN:1", "properties": {"mission": "S2A"}});
        let include =
            StoredSelection { request: BasketSelectionRequest { entity_ids_to_include: vec!["URN:1".into()], ..Default::default() } };
        assert!(include.selects(&p, &ProductSearch::default(), "d"));
        assert!(!include.selects(&json!({"id": "p2", "urn": "URN:2"}), &ProductSearch::default(), "d"));
        let mut request = BasketSelectionRequest::default();
        request.search_parameters.insert("property.mission".into(), OneOrMany::Many(vec!["S2A".into()]));
        let search = request.search().unwrap();
        let sel = StoredSelection { request: request.clone() };
        assert!(sel.selects(&p, &search, "d"));
        let mut excluding = request.clone();
        excluding.entity_ids_to_exclude = vec!["p1".into()];
        assert!(!StoredSelection { request: excluding }.selects(&p, &search, "d"));
        request.search_parameters.insert("from".into(), OneOrMany::Many(vec!["a".into(), "b".into()]));
        request.search_parameters.insert("colour".into(), OneOrMany::One("red".into()));
        assert_eq!(request.search().unwrap_err().len(), 2);
    }
}
