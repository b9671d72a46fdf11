//! `basket-api`: each authenticated user's one basket, under REGARDS's paths.
//!
//! Routes (every one needs a token; anonymous callers get 401, and a user only ever reaches their own
//! basket, named by their identity, never by the path):
//! - `GET /order/basket`: the basket (REGARDS's BasketDto).
//! - `DELETE /order/basket`: empties it (204).
//! - `POST /order/basket/selection`: a BasketSelectionRequest: products by URN or providerId
//!   (`entityIdsToInclude`), or a dataset's search (`datasetUrn`, `searchParameters`) less
//!   `entityIdsToExclude`.
//! - `POST /order/basket/selection/upload`: a text file of ids, one per line (multipart part `file`,
//!   or the body itself as text/plain), at most `GRANARY_BASKET_UPLOAD_MAX_LINES` lines.
//! - `DELETE /order/basket/dataset/{id}` and `…/{id}/{itemsSelectionDate}`: remove a dataset selection
//!   or one dated selection.
//! - `PUT /order/basket/dataset/{id}/updateFileFilters` and `…/updateProcessing`: file filters or
//!   processing for a dataset selection (not both; an empty body removes them).
//!
//! Ids that match nothing the caller may see are listed in the answer (`unmatchedIds`); a selection
//! that matches nothing at all is refused with them. Counts (products, files, bytes) are computed when
//! a selection is made and recomputed for its dataset at each change. Concurrent changes of one basket
//! all land: each is written only over the version it read, and redone on a conflict.

pub mod openapi;

use chrono::{DateTime, Utc};
use granary_domain::basket::{
    Basket, BasketError, BasketSelectionRequest, Counts, DatedItemsSelection, FileFilter, FileSelectionDescription, StoredSelection,
};
use granary_domain::catalog::{Reader, dataset_label, dataset_uuid, datasets_of, product_files};
use granary_domain::storage::Locations;
use granary_lambda::http::{bad_request, body_text, conflict, json, not_found, percent_decode, unauthorized, unavailable};
use granary_lambda::{Config, Identity};
use granary_ports::Backend;
use granary_stores::baskets::{BasketStore, BasketWrite, MAX_BASKET_BYTES};
use granary_stores::selection::{Position, Selections};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// How often a change is redone when other changes of the same basket keep landing first.
const MAX_ATTEMPTS: usize = 10;

/// The basket as answered: REGARDS's BasketDto, and the ids of this change that matched nothing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasketAnswer {
    /// The user.
    pub owner: String,
    /// One per dataset, with its dated selections and counts.
    pub dataset_selections: Vec<granary_domain::basket::DatasetSelection>,
    /// Ids of this change that name no product the caller may see (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched_ids: Vec<String>,
}

/// The error of a route, answered as problem+json.
type RouteResult = Result<Response<Body>, Response<Body>>;

fn unavailable_on(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "storage failure");
    unavailable("storage is temporarily unavailable; retry later")
}

fn refused(e: BasketError) -> Response<Body> {
    match e {
        BasketError::NoDatasetSelection(_) | BasketError::NoDatedSelection(..) => not_found(&e.to_string()),
        BasketError::ProcessingAndFilters => conflict(&e.to_string()),
    }
}

/// Products selected from one dataset by one change, counted.
struct Group {
    dataset: Value,
    urns: Vec<String>,
    counts: Counts,
}

/// The handler and what it needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct BasketApi {
    backend: Backend,
    config: Config,
    baskets: BasketStore,
    selections: Selections,
    locations: Locations,
}

impl BasketApi {
    /// The handler over `backend`, configured by `config`.
    pub fn new(backend: Backend, config: Config) -> Self {
        let baskets = BasketStore::new(&config.orders_table);
        let selections = Selections::new(&config.features_table, &config.requests_table, &config.search_date_property);
        let locations = config.locations();
        let backend = granary_ports::access::guard(backend, "basket-api", baskets.grants().and(selections.grants()));
        Self { backend, config, baskets, selections, locations }
    }

    /// Answers one API Gateway (HTTP API) request.
    pub async fn handle(&self, req: Request) -> Result<Response<Body>, lambda_http::Error> {
        Ok(self.route(req).await.unwrap_or_else(|problem| problem))
    }

    async fn route(&self, req: Request) -> RouteResult {
        let identity = Identity::from_request(&req, &self.config.groups_claim).ok_or_else(unauthorized)?;
        let reader = Reader { admin: identity.is_admin(), groups: identity.groups.clone() };
        let owner = identity.user.as_str();
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let dataset_id = |id: &str| {
            id.parse::<u64>().map_err(|_| Box::new(bad_request("invalid dataset selection id", &[format!("id: {id:?} is not a number")])))
        };
        match (req.method().as_str(), segments.as_slice()) {
            ("GET", ["order", "basket"]) => {
                let (basket, _) = self.baskets.read(&self.backend, owner).await.map_err(unavailable_on)?;
                Ok(json(200, &answer(basket, vec![])))
            }
            ("DELETE", ["order", "basket"]) => self.empty(owner).await,
            ("POST", ["order", "basket", "selection"]) => {
                let text = body_text(req.body()).map_err(|e| bad_request(&e, &[]))?;
                let request: BasketSelectionRequest = serde_json::from_str(text)
                    .map_err(|e| bad_request("the body is not a BasketSelectionRequest", &[format!("body: {e}")]))?;
                // As many ids as an uploaded file may hold: a selection of more is a search's job.
                let ids = request.entity_ids_to_include.len() + request.entity_ids_to_exclude.len();
                if ids > self.config.basket_upload_max_lines {
                    let limit = self.config.basket_upload_max_lines;
                    return Err(bad_request(
                        "too many ids",
                        &[format!("entityIdsToInclude, entityIdsToExclude: {ids} ids; at most {limit}")],
                    ));
                }
                if let Some(engine) = request.engine_type.as_deref().filter(|e| !e.eq_ignore_ascii_case("legacy")) {
                    let shown: String = engine.chars().take(64).collect();
                    return Err(bad_request(
                        "unknown search engine",
                        &[format!("engineType: {shown:?} is not legacy, Granary's one search")],
                    ));
                }
                self.add_selection(owner, &reader, request).await
            }
            ("POST", ["order", "basket", "selection", "upload"]) => self.upload(owner, &reader, &req).await,
            ("DELETE", ["order", "basket", "dataset", id]) => {
                let id = dataset_id(id).map_err(|p| *p)?;
                self.change(owner, vec![], |b| b.remove_dataset(id).map(|()| vec![])).await
            }
            ("DELETE", ["order", "basket", "dataset", id, date]) => {
                let id = dataset_id(id).map_err(|p| *p)?;
                let decoded = percent_decode(date);
                let date: DateTime<Utc> = DateTime::parse_from_rfc3339(&decoded)
                    .map_err(|_| {
                        bad_request("invalid selection date", &[format!("itemsSelectionDate: {decoded:?} is not an ISO-8601 date")])
                    })?
                    .with_timezone(&Utc);
                self.change(owner, vec![], |b| b.remove_dated(id, date).map(|kept| if kept { vec![id] } else { vec![] })).await
            }
            ("PUT", ["order", "basket", "dataset", id, "updateFileFilters"]) => {
                let id = dataset_id(id).map_err(|p| *p)?;
                let filters: Option<FileSelectionDescription> = optional_body(&req, "FileSelectionDescription").map_err(|p| *p)?;
                if let Some(f) = &filters {
                    f.check().map_err(|errors| bad_request("invalid file filters", &errors))?;
                }
                self.change(owner, vec![], |b| b.set_file_filters(id, filters.clone()).map(|()| vec![id])).await
            }
            ("PUT", ["order", "basket", "dataset", id, "updateProcessing"]) => {
                let id = dataset_id(id).map_err(|p| *p)?;
                let processing: Option<Value> = optional_body(&req, "ProcessDatasetDescription").map_err(|p| *p)?;
                if let Some(p) = &processing {
                    let errors = self.processing_errors(p);
                    if !errors.is_empty() {
                        return Err(bad_request("invalid processing", &errors));
                    }
                }
                self.change(owner, vec![], |b| b.set_processing(id, processing.clone()).map(|()| vec![])).await
            }
            (method, _) => Err(not_found(&format!("no route {method} {path}"))),
        }
    }

    /// What is wrong with a ProcessDatasetDescription: it names the built-in `granary-pack` or a
    /// configured processing, with parameters as an object, and nothing else.
    fn processing_errors(&self, p: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        match p.get("processBusinessId") {
            Some(Value::String(id)) if id == granary_domain::dispatch::PACK_PROCESS || self.config.processes().contains_key(id) => {}
            Some(Value::String(id)) => {
                let mut known = vec![granary_domain::dispatch::PACK_PROCESS.to_owned()];
                known.extend(self.config.processes().into_keys());
                let shown: String = id.chars().take(64).collect();
                errors.push(format!("processBusinessId: {shown:?} is not a processing of this site ({})", known.join(", ")));
            }
            Some(_) => errors.push("processBusinessId: must be a string".into()),
            None => errors.push("processBusinessId: required".into()),
        }
        if p.get("parameters").is_some_and(|v| !v.is_object() && !v.is_null()) {
            errors.push("parameters: must be an object".into());
        }
        if let Some(other) = p.as_object().and_then(|o| o.keys().find(|k| *k != "processBusinessId" && *k != "parameters")) {
            let shown: String = other.chars().take(64).collect();
            errors.push(format!("{shown}: unknown field (processBusinessId, parameters)"));
        }
        errors
    }

    async fn empty(&self, owner: &str) -> RouteResult {
        for _ in 0..MAX_ATTEMPTS {
            let (_, version) = self.baskets.read(&self.backend, owner).await.map_err(unavailable_on)?;
            match self.baskets.clear(&self.backend, owner, version).await.map_err(unavailable_on)? {
                BasketWrite::Written => return Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default()),
                BasketWrite::Conflict | BasketWrite::TooLarge(_) => {}
            }
        }
        Err(unavailable("the basket kept changing; retry"))
    }

    /// Applies `change` to the owner's basket and writes it over the version read, redoing it on a
    /// conflict; `change` names the dataset selections whose counts to recompute.
    async fn change(
        &self,
        owner: &str,
        unmatched: Vec<String>,
        mut change: impl FnMut(&mut Basket) -> Result<Vec<u64>, BasketError>,
    ) -> RouteResult {
        for _ in 0..MAX_ATTEMPTS {
            let (mut basket, version) = self.baskets.read(&self.backend, owner).await.map_err(unavailable_on)?;
            let touched = change(&mut basket).map_err(refused)?;
            for id in touched {
                if let Ok(ds) = basket.dataset_mut(id) {
                    let counts = self.count(dataset_uuid(&ds.dataset_ipid), &ds.items_selections, &ds.file_filter()).await?;
                    (ds.objects_count, ds.files_count, ds.files_size) = (counts.objects, counts.files, counts.bytes);
                }
            }
            match self.baskets.write(&self.backend, &basket, version).await.map_err(unavailable_on)? {
                BasketWrite::Written => return Ok(json(200, &answer(basket, unmatched))),
                BasketWrite::Conflict => {}
                BasketWrite::TooLarge(n) => {
                    return Err(bad_request(
                        "the basket is full",
                        &[format!("basket: it would take {n} bytes, over {MAX_BASKET_BYTES}; order it or remove selections first")],
                    ));
                }
            }
        }
        Err(unavailable("the basket kept changing; retry"))
    }

    /// Counts the distinct products `items` select in `dataset`, and their files `filter` keeps.
    async fn count(&self, dataset: Uuid, items: &[DatedItemsSelection], filter: &FileFilter) -> Result<Counts, Response<Body>> {
        let mut counts = Counts::default();
        let mut selected = self.selections.selected(dataset, items, Position::Named(0));
        while let Some(batch) = selected.next(&self.backend).await.map_err(unavailable_on)? {
            for product in &batch {
                counts.add(&product_files(product, &self.locations), filter);
            }
        }
        Ok(counts)
    }

    async fn add_selection(&self, owner: &str, reader: &Reader, mut request: BasketSelectionRequest) -> RouteResult {
        let now = self.backend.clock.now();
        if !request.entity_ids_to_include.is_empty() {
            let hint = match &request.dataset_urn {
                Some(d) => Some(self.visible_dataset(reader, d).await?),
                None => None,
            };
            let ids = std::mem::take(&mut request.entity_ids_to_include);
            return self.add_ids(owner, reader, &ids, hint, request, now).await;
        }
        let Some(dataset_ref) = request.dataset_urn.clone() else {
            return Err(bad_request(
                "the selection selects nothing",
                &["datasetUrn: required unless entityIdsToInclude names the products".to_owned()],
            ));
        };
        request.search().map_err(|errors| bad_request("invalid search parameters", &errors))?;
        let dataset = self.visible_dataset(reader, &dataset_ref).await?;
        let dataset_urn = text(&dataset, "urn");
        request.dataset_urn = Some(dataset_urn.clone());
        request.selection_date = Some(now);
        let mut item = DatedItemsSelection {
            date: now,
            selection_request: StoredSelection { request },
            objects_count: 0,
            files_count: 0,
            files_size: 0,
        };
        let counts = self.count(dataset_uuid(&dataset_urn), std::slice::from_ref(&item), &FileFilter::all()).await?;
        if counts.objects == 0 {
            return Err(bad_request("the selection selects nothing", &[format!("searchParameters: no product of {dataset_ref} matches")]));
        }
        (item.objects_count, item.files_count, item.files_size) = (counts.objects, counts.files, counts.bytes);
        let label = dataset_label(&dataset);
        self.change(owner, vec![], |b| Ok(vec![b.add(&dataset_urn, &label, item.clone())])).await
    }

    /// The dataset named by `reference` if the caller may see it; 404 otherwise.
    async fn visible_dataset(&self, reader: &Reader, reference: &str) -> Result<Value, Response<Body>> {
        self.selections
            .catalog()
            .visible_dataset(&self.backend, reader, reference)
            .await
            .map_err(unavailable_on)?
            .ok_or_else(|| not_found(&format!("no dataset {reference}")))
    }

    /// Adds the products `ids` name (URNs, or providerIds meaning their latest version), one dated
    /// selection per dataset they are seen through (`hint` first when they belong to it).
    async fn add_ids(
        &self,
        owner: &str,
        reader: &Reader,
        ids: &[String],
        hint: Option<Value>,
        request: BasketSelectionRequest,
        now: DateTime<Utc>,
    ) -> RouteResult {
        let (groups, unmatched) = self.group_ids(reader, ids, hint).await?;
        if groups.is_empty() {
            let errors: Vec<String> = unmatched.iter().map(|id| format!("{id}: no product you may see")).collect();
            return Err(bad_request("no id names a product you may see", &errors));
        }
        let selections: Vec<(String, String, DatedItemsSelection)> = groups
            .into_values()
            .map(|g| {
                let urn = text(&g.dataset, "urn");
                let mut r = request.clone();
                r.dataset_urn = Some(urn.clone());
                r.entity_ids_to_include = g.urns;
                let item = DatedItemsSelection {
                    date: now,
                    selection_request: StoredSelection { request: r },
                    objects_count: g.counts.objects,
                    files_count: g.counts.files,
                    files_size: g.counts.bytes,
                };
                (urn, dataset_label(&g.dataset), item)
            })
            .collect();
        self.change(owner, unmatched, |b| Ok(selections.iter().map(|(urn, label, item)| b.add(urn, label, item.clone())).collect())).await
    }

    /// Resolves `ids` to products the caller may see, grouped by the dataset each is seen through;
    /// the ids that name none are returned apart, each once.
    async fn group_ids(
        &self,
        reader: &Reader,
        ids: &[String],
        hint: Option<Value>,
    ) -> Result<(BTreeMap<String, Group>, Vec<String>), Response<Body>> {
        let catalog = self.selections.catalog();
        let mut datasets: HashMap<Uuid, Option<Value>> = HashMap::new();
        let hint_uuid = hint.as_ref().map(|h| dataset_uuid(&text(h, "urn")));
        if let (Some(h), Some(u)) = (&hint, hint_uuid) {
            datasets.insert(u, Some(h.clone()));
        }
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut unmatched = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut products = std::collections::HashSet::new();
        for id in ids.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            if !seen.insert(id.to_owned()) {
                continue;
            }
            let Some(product) = self.selections.resolve(&self.backend, id).await.map_err(unavailable_on)? else {
                unmatched.push(id.to_owned());
                continue;
            };
            // A providerId and the URN of its latest version name one product: counted once.
            if !products.insert(text(&product, "urn")) {
                continue;
            }
            let mut candidates = datasets_of(&product);
            if let Some(h) = hint_uuid.filter(|h| candidates.contains(h)) {
                candidates.retain(|c| *c != h);
                candidates.insert(0, h);
            }
            let mut through = None;
            for d in candidates {
                let known = match datasets.get(&d) {
                    Some(known) => known.clone(),
                    None => {
                        let found = catalog.dataset_by_uuid(&self.backend, d).await.map_err(unavailable_on)?;
                        datasets.insert(d, found.clone());
                        found
                    }
                };
                if let Some(ds) = known.filter(|ds| reader.sees(ds)) {
                    through = Some(ds);
                    break;
                }
            }
            let Some(dataset) = through else {
                unmatched.push(id.to_owned());
                continue;
            };
            let group = groups.entry(text(&dataset, "urn")).or_insert_with(|| Group { dataset, urns: vec![], counts: Counts::default() });
            group.urns.push(text(&product, "urn"));
            group.counts.add(&product_files(&product, &self.locations), &FileFilter::all());
        }
        Ok((groups, unmatched))
    }

    async fn upload(&self, owner: &str, reader: &Reader, req: &Request) -> RouteResult {
        let bytes: &[u8] = match req.body() {
            Body::Text(t) => t.as_bytes(),
            Body::Binary(b) => b,
            _ => &[],
        };
        let content_type = req.headers().get(lambda_http::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("text/plain");
        let file = file_part(content_type, bytes).map_err(|e| bad_request("cannot read the uploaded file", &[e]))?;
        let text = std::str::from_utf8(file).map_err(|_| bad_request("cannot read the uploaded file", &["file: not UTF-8 text".into()]))?;
        let ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let max = self.config.basket_upload_max_lines;
        if ids.len() > max {
            return Err(bad_request(
                "too many lines in the uploaded file",
                &[format!("file: {} ids; at most {max} are taken at once (GRANARY_BASKET_UPLOAD_MAX_LINES)", ids.len())],
            ));
        }
        if ids.is_empty() {
            return Err(bad_request("the uploaded file names no product", &["file: no id in it (one URN or providerId per line)".into()]));
        }
        let now = self.backend.clock.now();
        self.add_ids(owner, reader, &ids, None, BasketSelectionRequest::default(), now).await
    }
}

/// The uploaded file: the part named `file` of a multipart/form-data body, or the body itself.
fn file_part<'a>(content_type: &str, body: &'a [u8]) -> Result<&'a [u8], String> {
    let lower = content_type.to_ascii_lowercase();
    if !lower.starts_with("multipart/form-data") {
        return Ok(body);
    }
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .ok_or("content-type: multipart/form-data without a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut rest = body;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else { break };
        let head = String::from_utf8_lossy(&rest[..head_end]).to_ascii_lowercase();
        let content = &rest[head_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes()).ok_or("file: the multipart body is cut short")?;
        if head.contains("name=\"file\"") {
            return Ok(&content[..end]);
        }
        rest = &content[end + 2..];
    }
    Err("file: no multipart part named \"file\"".into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An optional JSON object body of type `T`: none when the body is empty.
fn optional_body<T: serde::de::DeserializeOwned>(req: &Request, what: &str) -> Result<Option<T>, Box<Response<Body>>> {
    granary_lambda::http::optional_object(req.body(), what)
}

fn answer(basket: Basket, unmatched_ids: Vec<String>) -> BasketAnswer {
    BasketAnswer { owner: basket.owner, dataset_selections: basket.dataset_selections, unmatched_ids }
}

fn text(v: &Value, name: &str) -> String {
    v.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_read_from_multipart_or_plain_bodies() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nno\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ids.txt\"\r\nContent-Type: text/plain\r\n\r\na\nb\r\n--XyZ--\r\n";
        assert_eq!(file_part("multipart/form-data; boundary=XyZ", body).unwrap(), b"a\nb");
        assert_eq!(file_part("text/plain", b"a\nb").unwrap(), b"a\nb");
        assert!(file_part("multipart/form-data", body).is_err());
        assert!(
            file_part("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XyZ--")
                .is_err()
        );
        assert_eq!(percent_decode("2026-01-01T00%3A00%3A00Z"), "2026-01-01T00:00:00Z");
    }
}
