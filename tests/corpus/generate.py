#!/usr/bin/env python3
"""Writes the bad-input corpus: one JSON Lines file per entry point, every line one malformed or
hostile input that Granary must refuse with a clear 4xx or a DENIED event (or, for acknowledgements and
storage events, a dead-lettered message with its reason), never a 5xx, a panic, a hang or a write
outside its place. granary-local's e2e test `every_corpus_input_is_refused_cleanly` replays it.

Deterministic: run it again after changing it (`python3 tests/corpus/generate.py`) and commit the
result. Big inputs are not stored whole: a body is a string, or a list of parts where
`{"repeat": s, "times": n}` stands for s repeated n times and `{"b64": ...}` for raw (maybe invalid
UTF-8) bytes.

Hosts: file locations and webhooks name hosts under `.invalid` or 127.0.0.1 ports nobody listens on;
the test runs granary-local with an outbound policy that refuses them, so no traffic leaves.
"""

import base64
import copy
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
URN = "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1"
MD5 = "0123456789abcdef0123456789abcdef"

# ------------------------------------------------------------------ seeds (valid inputs, then broken)

FILE = {"locations": [{"url": "https://files.example.invalid/p.zip"}],
        "attributes": {"dataType": "RAWDATA", "mimeType": "application/zip", "filename": "p.zip",
                       "filesize": 3, "algorithm": "MD5", "checksum": MD5}}
FEATURE = {"type": "Feature", "id": "corpus-product", "entityType": "DATA", "model": "M",
           "geometry": {"type": "Point", "coordinates": [1.0, 43.2]}, "properties": {"n": 1}, "files": [FILE]}
CREATION = {"metadata": {"sessionOwner": "corpus", "session": "s1", "priority": "NORMAL",
                         "storages": [{"pluginBusinessId": "online", "storePath": "corpus"}]},
            "features": [FEATURE]}
PATCH = {"metadata": {"priority": "HIGH"}, "features": [{"type": "Feature", "urn": URN, "properties": {"n": 2}}]}
DELETION = {"featuresUrns": [URN], "priority": "LOW"}
NOTIFY = {"featuresUrns": [URN], "priority": "HIGH", "recipients": ["catalog"]}
MODEL = {"name": "C", "type": "DATA", "attributes": [
    {"name": "n", "type": "INTEGER", "optional": True, "restriction": {"type": "INTEGER_RANGE", "min": 0, "max": 9}},
    {"name": "s", "type": "STRING", "optional": False, "restriction": {"type": "PATTERN", "pattern": "^[a-z]+$"}}]}
RECIPIENT = {"target": {"type": "webhook", "url": "https://hooks.example.invalid/h"}, "ackRequired": False,
             "blocking": False, "secret": "a webhook secret of some length"}
LOCATION = {"bucket": "archive", "prefix": "corpus", "class": "ONLINE"}
SETTINGS = {"active": True}
SELECTION = {"datasetUrn": "S2", "entityIdsToInclude": ["corpus-product"], "selectionDate": "2026-11-24T10:00:00Z"}
FILTERS = {"fileTypes": ["RAWDATA"], "fileNamePattern": "p.*"}
PROCESSING = {"processBusinessId": "granary-pack", "parameters": {}}
ORDER = {"label": "corpus order"}
SEARCH = {"owner": "ann@example.org", "status": "RUNNING"}
QUOTA = {"maxFiles": 10, "maxBytes": 1000, "periodHours": 24}
SQS_CREATION = {"metadata": {"sessionOwner": "corpus", "session": "sqs", "priority": "HIGH",
                             "storages": [{"pluginBusinessId": "online"}]},
                "feature": FEATURE}
ACK = {"urn": URN, "recipientLabel": "mirror"}
STORAGE_EVENT = {"type": "AVAILABLE", "message": "restored", "checksum": MD5, "originStorage": "nearline",
                 "owners": [URN], "location": {"storage": "nearline", "url": "s3://storage/nearline/" + MD5},
                 "groupIds": ["no-such-group"]}

# ------------------------------------------------------------------ generic mutations

NOT_JSON = [
    "", " ", "\n", "{", "}", "[", "]", "{\"a\":", "{'a': 1}", "{\"a\": 1,}", "[1, 2,]", "NaN", "{\"a\": NaN}",
    "{\"a\": Infinity}", "{\"a\": -Infinity}", "// comment\n{}", "/* c */ {}", "\ufeff{}", "{\"a\" 1}", "{\"a\": 01}",
    "{\"a\": \"\\x41\"}", "{\"a\": \"unterminated}", "{\"a\": tru}", "nul", "{} {}", "{\"a\": 1}garbage",
    "{\"a\": \"\\ud800\"}", "{\"a\": \"\\udc00\\ud800\"}", "{\"a\": 1e99999}", "{\"a\": -}", "{\"a\": .5}",
    "{\"a\": 0x10}", "{\"a\": +1}", "{\"\\u0000\": }", "{\"a\": [1, 2}", "{\"a\": {\"b\": 1]}", "<xml/>",
    "a=1&b=2", "\x00\x00\x00", "{\"a\":\t\v1}",
]
TOP_LEVEL = ["null", "true", "false", "0", "-1", "1.5", "\"string\"", "[]", "[{}]", "[null]", "\"{}\""]
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80"]


class BigString:
    """A string of `times` copies of `text`, stored as a repeat part."""

    def __init__(self, text, times):
        self.text, self.times = text, times


class BigArray:
    """An array of `times` copies of `item`, stored as a repeat part."""

    def __init__(self, item, times):
        self.item, self.times = item, times


def dumps(value, indent=None):
    """The JSON text of `value`, as a string or, when it holds big values, a list of parts."""
    bigs = []

    def mark(v):
        if isinstance(v, (BigString, BigArray)):
            bigs.append(v)
            return f"@@BIG{len(bigs) - 1}@@"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(value), indent=indent)
    if not bigs:
        return text
    parts = []
    for i, big in enumerate(bigs):
        before, text = text.split(f'"@@BIG{i}@@"', 1)
        parts.append(before)
        if isinstance(big, BigString):
            parts += ['"', {"repeat": json.dumps(big.text)[1:-1], "times": big.times}, '"']
        else:
            item = dumps(big.item)
            assert isinstance(item, str)
            parts += ["[", {"repeat": item + ",", "times": big.times - 1}, item + "]"]
    parts.append(text)
    return [p for p in parts if p != ""]


REPLACEMENTS = [True, False, 12345, -1, -1.5, 2 ** 64, "text", "", [], {}, [1, "a"], {"x": 1}, [[[[[]]]]],
                "../../../../etc/passwd", BigString("x", 10000)]


def expanded_size(body):
    """The size in bytes of a body once its parts are expanded."""
    if isinstance(body, str):
        return len(body.encode())
    total = 0
    for part in body:
        if isinstance(part, str):
            total += len(part.encode())
        elif "b64" in part:
            total += len(base64.b64decode(part["b64"]))
        else:
            total += len(part["repeat"].encode()) * part["times"]
    return total


def sqs_body_ok(body):
    """Whether SQS would take `body` at all: Unicode text (no raw bytes) of at most 256 KiB."""
    raw = not isinstance(body, str) and any(isinstance(p, dict) and "b64" in p for p in body)
    return not raw and expanded_size(body) <= 256 * 1024


def kind(v):
    if isinstance(v, BigString):
        return "string"
    if isinstance(v, BigArray):
        return "array"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def paths(v, path=()):
    """Every node below the root, as (path, value)."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield path + (k,), x
            yield from paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield path + (i,), x
            yield from paths(x, path + (i,))


def set_at(v, path, new):
    out = copy.deepcopy(v)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = new
    return out


def delete_at(v, path):
    out = copy.deepcopy(v)
    node = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


def name(path):
    return ".".join(str(p) for p in path) or "root"


def generic(seed, required, lenient=(), empty_ok=False, big_ok=()):
    """The mutations every JSON entry point gets: not JSON, wrong top-level types, truncations, invalid
    UTF-8, huge and deep bodies, every node given a value of another type (but the `lenient` paths,
    whose values are checked later, or not at all), every `required` key removed. `empty_ok`: an empty
    body means something (no filters, the defaults) and is left out; `big_ok`: arrays with no limit."""
    text = json.dumps(seed)
    pretty = json.dumps(seed, indent=2)
    cases = []
    cases += [(f"not-json-{i}", body) for i, body in enumerate(NOT_JSON) if not (empty_ok and not body.strip())]
    cases += [(f"top-level-{i}", body) for i, body in enumerate(TOP_LEVEL)]
    cuts = sorted({max(0, len(pretty) * i // 40) for i in range(40)} - {len(pretty)})
    cases += [(f"truncated-at-{c}", pretty[:c]) for c in cuts if not (empty_ok and not pretty[:c].strip())]
    for i, bad in enumerate(INVALID_UTF8):
        mid = text.index(":") + 2
        raw = text.encode()[:mid] + b"\"" + bad + b"\"" + text.encode()[mid:]
        cases.append((f"invalid-utf8-{i}", [{"b64": base64.b64encode(bad).decode()}]))
        cases.append((f"invalid-utf8-in-value-{i}", [{"b64": base64.b64encode(raw).decode()}]))
    cases.append(("deep-array", [{"repeat": "[", "times": 100000}, {"repeat": "]", "times": 100000}]))
    cases.append(("deep-object", [{"repeat": "{\"a\":", "times": 50000}, "1", {"repeat": "}", "times": 50000}]))
    cases.append(("deep-unclosed", [{"repeat": "[", "times": 1000000}]))
    cases.append(("huge-array-top-level", ["[", {"repeat": "0,", "times": 500000}, "0]"]))
    cases.append(("over-the-size-limit", ["{\"pad\": \"", {"repeat": "x", "times": 11 * 1024 * 1024}, "\"}"]))
    cases.append(("huge-key", ["{\"", {"repeat": "k", "times": 1000000}, "\": 1}"]))
    cases.append(("many-keys", ["{", {"repeat": "\"k\": 1, ", "times": 200000}, "\"z\": 1}"]))
    for path, value in paths(seed):
        if any(path[:len(p)] == p for p in lenient):
            continue
        for j, new in enumerate(REPLACEMENTS):
            if kind(new) != kind(value) and not (kind(value) == "array" and new == []):
                cases.append((f"type-{name(path)}-{j}", dumps(set_at(seed, path, new))))
        if kind(value) == "array" and path not in big_ok:
            cases.append((f"huge-array-{name(path)}", dumps(set_at(seed, path, BigArray(value[0] if value else 0, 20000)))))
    for path in required:
        cases.append((f"missing-{name(path)}", dumps(delete_at(seed, path))))
    return cases


def variants(seed, path, values, prefix):
    return [(f"{prefix}-{i}", dumps(set_at(seed, path, v))) for i, v in enumerate(values)]


# ------------------------------------------------------------------ hostile values by subject

GEOMETRIES = [
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},  # not closed
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},  # fewer than 4 positions
    {"type": "Polygon", "coordinates": []},
    {"type": "Point", "coordinates": [200, 100]},
    {"type": "Point", "coordinates": [1]},
    {"type": "Point", "coordinates": ["1", "2"]},
    {"type": "Point", "coordinates": [[1, 2]]},
    {"type": "Point"},
    {"type": "Circle", "coordinates": [0, 0], "radius": 5},
    {"type": "LineString", "coordinates": [[0, 0]]},
    {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 1]]]]},
    {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 95]}]},
    {"type": "GeometryCollection"},
    {"coordinates": [0, 0]},
    {"type": "Point", "coordinates": [0, 0, 0, 0, 0]},
]
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "a/../../b", "..\\..\\windows\\win.ini", "..", ".", "a/b", "\\\\host\\share"]
BAD_SOURCES = [
    "http://evil.invalid/p.zip", "https://evil.invalid/p.zip", "http://127.0.0.1:9/p.zip", "http://localhost.invalid:9/p.zip",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/p.zip", "http://[fd00:ec2::254]/", "http://10.0.0.1/p.zip",
    "http://2130706433/p.zip", "ftp://files.example.invalid/p.zip", "gopher://files.example.invalid/", "file:///etc/passwd",
    "s3://someone-elses-bucket/p.zip", "not a url", "", "javascript:alert(1)", "https://files.example.invalid.evil.invalid/p",
    "https://user:pass@evil.invalid/p", "data:text/plain,hello",
]
TOKENS = [
    "", "Bearer", "Bearer ", "Bearer abc", "Bearer a.b.c", "Bearer ..", "Basic dXNlcjpwYXNz", "bearer",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJncmFuYXJ5LWxvY2FsIiwiYXVkIjoiZ3JhbmFyeSIsInN1YiI6ImFubkBleGFtcGxlLm9yZyIsImV4cCI6NDEwMjQ0NDgwMH0.",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",
    "Bearer !!!.!!!.!!!", "Bearer " + "a" * 100000, "Bearer " + "a." * 5000, "Bearer \u00e9t\u00e9",
]


def tokens():
    cases = [(f"token-{i}", t) for i, t in enumerate(TOKENS)]
    # Structurally valid JWTs whose header or claims are wrong, unsigned or signed with nothing.
    b64 = lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")
    headers = [{"alg": "none"}, {"alg": "None"}, {"alg": "NONE"}, {"alg": "HS256"}, {"alg": "RS256", "kid": "../../etc/passwd"},
               {"alg": "RS256", "jku": "http://evil.invalid/jwks"}, {"alg": "RS256", "x5u": "http://127.0.0.1:9/"}, {},
               {"alg": "ES256"}, {"alg": "RS256", "crit": ["exp"]}, "not an object", [1], {"alg": 1}]
    claims = [{"sub": "ann@example.org", "iss": "granary-local", "aud": "granary", "exp": 4102444800},
              {"sub": "ann@example.org", "iss": "granary-local", "aud": "granary", "exp": 1},
              {"sub": "ann@example.org", "iss": "evil", "aud": "granary", "exp": 4102444800},
              {"sub": "ann@example.org", "iss": "granary-local", "aud": "other", "exp": 4102444800},
              {"sub": "ann@example.org", "iss": "granary-local", "aud": "granary"},
              {"iss": "granary-local", "aud": "granary", "exp": "tomorrow"},
              {"sub": ["admin"], "iss": "granary-local", "aud": ["granary"], "exp": 4102444800, "cognito:groups": "admin"}]
    for i, h in enumerate(headers):
        for j, c in enumerate(claims):
            for k, sig in enumerate(["", "AAAA", "not-base64!"]):
                cases.append((f"forged-{i}-{j}-{k}", f"Bearer {b64(h)}.{b64(c)}.{sig}"))
    return cases


def paths_and_queries():
    """GETs (and a few others) whose path parameters or query strings are hostile."""
    bad_ids = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%00", "%ff%fe", "a%0d%0aSet-Cookie:x=1", "x" * 5000, "-1",
               "99999999999999999999999", "1e3", "%20", "URN:FEATURE:DATA:granary:not-a-uuid:V1",
               "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V0",
               "URN:FEATURE:DATA:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1000",
               "URN:FEATURE:EVIL:granary:0a52d09e-9b90-3b1b-8a3d-1c83f6b5953c:V1", "%7B%7D", "*", "'%20OR%201=1--"]
    cases = []
    for i, bad in enumerate(bad_ids):
        for route in ["/features/{}", "/features/requests/{}", "/user/orders/{}", "/orders/files/{}", "/orders/public/files/{}",
                      "/user/orders/{}/metalink/download", "/products/{}", "/models/{}"]:
            cases.append((f"path-{route.split('/')[1]}-{route.count('/')}-{route.rsplit('/', 1)[-1]}-{i}", "GET", route.format(bad)))
    # A user is any name an identity provider gives: only what none gives is refused.
    for i, bad in enumerate(["..%2F..%2Fetc%2Fpasswd", "%00", "%ff%fe", "a%0d%0aSet-Cookie:x=1", "x" * 5000, "%20", "a%5Cb", "%09"]):
        cases.append((f"path-quotas-get-{i}", "GET", f"/quotas/{bad}"))
    queries = ["size=-1", "size=abc", "size=99999999999999999999", "page=garbage", "page=%ff", "size=0", "size=1e3",
               "state=NOPE", "type=EXPLODE", "from=yesterday", "to=2026-13-45T99:00:00Z", "from=2026-11-24&to=2026-11-01T00:00:00Z",
               "size=" + "9" * 1000, "page=" + "A" * 10000]
    for i, q in enumerate(queries):
        for route in ["/features/requests", "/user/orders", "/datasets/S2/products"]:
            if route == "/user/orders" and not q.startswith(("size", "page")):
                continue  # a user's order list takes only size and page: other parameters are not its
            cases.append((f"query-{route.split('/')[1]}-{i}", "GET", f"{route}?{q}"))
    for i, q in enumerate(["token=", "token=abc", "token=a.b.c", "token=" + "x" * 10000, "", "token=%ff"]):
        cases.append((f"public-file-{i}", "GET", f"/orders/public/files/1-0-0?{q}"))
        cases.append((f"public-metalink-{i}", "GET", f"/user/orders/metalink/download?{q}"))
    return cases


def uploads():
    """Bodies of POST /order/basket/selection/upload (a file of product ids), with their content type."""
    multipart = "multipart/form-data; boundary=b0undary"
    part = lambda head, body: f"--b0undary\r\n{head}\r\n\r\n{body}\r\n--b0undary--\r\n"
    good_head = "Content-Disposition: form-data; name=\"file\"; filename=\"ids.txt\""
    cases = [
        ("no-boundary", "multipart/form-data", part(good_head, "corpus-product")),
        ("wrong-boundary", "multipart/form-data; boundary=other", part(good_head, "corpus-product")),
        ("unterminated", multipart, f"--b0undary\r\n{good_head}\r\n\r\ncorpus-product"),
        ("no-parts", multipart, "--b0undary--\r\n"),
        ("empty", multipart, ""),
        ("no-file-part", multipart, part("Content-Disposition: form-data; name=\"other\"", "corpus-product")),
        ("no-disposition", multipart, part("Content-Type: text/plain", "corpus-product")),
        ("empty-file", multipart, part(good_head, "")),
        ("blank-lines-only", multipart, part(good_head, "\n\n   \n")),
        ("header-only", multipart, "--b0undary\r\n" + good_head),
        ("binary", multipart, [part(good_head, "")[:-len("\r\n--b0undary--\r\n")], {"b64": base64.b64encode(bytes(range(256))).decode()}, "\r\n--b0undary--\r\n"]),
        ("image/png", "image/png", [{"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()}]),
        ("application/json", "application/json", "{\"ids\": [\"corpus-product\"]}"),
        ("too-many-lines", "text/plain", [{"repeat": "no-such-product\n", "times": 200000}]),
        ("too-many-lines-multipart", multipart, ["--b0undary\r\n" + good_head + "\r\n\r\n", {"repeat": "x\n", "times": 200000}, "\r\n--b0undary--\r\n"]),
        ("huge-line", "text/plain", [{"repeat": "x", "times": 3000000}]),
        ("over-the-size-limit", "text/plain", [{"repeat": "corpus-product\n", "times": 500000}]),
        ("boundary-huge", "multipart/form-data; boundary=" + "b" * 100000, "--" + "b" * 100000 + "--\r\n"),
    ]
    for i, bad in enumerate(INVALID_UTF8):
        cases.append((f"invalid-utf8-text-{i}", "text/plain", [{"b64": base64.b64encode(b"corpus-" + bad + b"\n").decode()}]))
        cases.append((f"invalid-utf8-multipart-{i}", multipart, ["--b0undary\r\n" + good_head + "\r\n\r\n", {"b64": base64.b64encode(bad * 3).decode()}, "\r\n--b0undary--\r\n"]))
    for i, t in enumerate(TRAVERSALS):
        head = f"Content-Disposition: form-data; name=\"file\"; filename=\"{t}\""
        cases.append((f"traversal-filename-{i}", multipart, part(head, "\n")))
    for i, ids in enumerate(["no-such-product", "../../etc/passwd", "\u0000", "URN:x", "*", "%", "' OR 1=1 --", "<script>"]):
        cases.append((f"unknown-id-text-{i}", "text/plain", ids + "\n"))
        cases.append((f"unknown-id-multipart-{i}", multipart, part(good_head, ids)))
    for j, line in enumerate(["x" * 1000, "\t\t\t", "\r\r\r", "a\u2028b", "\ufeff", "é" * 500]):
        cases.append((f"odd-line-{j}", "text/plain", line))
    for j, ct in enumerate(["multipart/form-data; boundary=", "multipart/form-data; boundary=\"", "multipart/mixed; boundary=b0undary",
                            "text/plain; charset=utf-16", "text/plain; charset=ebcdic", "text/*", "*/*", "multipart/form-data; boundary=b0undary; boundary=x"]):
        cases.append((f"content-type-{j}", ct, part(good_head, "no-such-product")))
    # The generic JSON mutations too: a JSON body is not an id file either.
    for n, body in generic(SELECTION, [])[:40]:
        cases.append((f"json-{n}", "application/json", body))
    return cases


def http(name, method, path, role, seed, required=(), lenient=(), extra=(), empty_ok=False, big_ok=()):
    cases = generic(seed, required, lenient, empty_ok, big_ok) + list(extra)
    return [{"entry": name, "case": c, "method": method, "path": path, "role": role, "body": b} for c, b in cases]


def main():
    entries = {}
    f = ("features", 0)
    creation_extra = (variants(CREATION, f + ("geometry",), GEOMETRIES, "geometry")
                      + variants(CREATION, f + ("files", 0, "attributes", "filename"), TRAVERSALS, "filename")
                      + variants(CREATION, f + ("files", 0, "locations", 0, "url"), BAD_SOURCES, "source")
                      + variants(CREATION, ("metadata", "storages", 0, "storePath"), ["../..", "/abs/../x", "a/./b", "a//..//b", ".."], "store-path")
                      + variants(CREATION, f + ("id",), ["", " ", BigString("x", 100000)], "provider-id")
                      + variants(CREATION, f + ("model",), ["no-such-model", "../M", ""], "model")
                      + variants(CREATION, f + ("bbox",), [[0, 5, 1, 1], [0], ["a", "b", "c", "d"], [0, 0, 0, 0, 0]], "bbox")
                      + variants(CREATION, f + ("properties", "n"), ["one", 1.5, [1]], "property")
                      + variants(CREATION, ("features",), [[], BigArray(FEATURE, 20000)], "features"))
    entries["http-features-create"] = http("http-features-create", "POST", "/features", "producer", CREATION,
                                           required=[f + ("type",), f + ("id",), f + ("model",), f + ("entityType",), ("features",)],
                                           lenient=[f + ("properties",)], extra=creation_extra)
    p = ("features", 0)
    entries["http-features-patch"] = http("http-features-patch", "PATCH", "/features", "producer", PATCH,
                                          required=[p + ("urn",), ("features",)], lenient=[p + ("properties",)],
                                          extra=variants(PATCH, p + ("urn",), ["URN:x", "", BigString("x", 10000), URN.replace("V1", "V0")], "urn")
                                          + variants(PATCH, p + ("geometry",), GEOMETRIES, "geometry"))
    entries["http-features-delete"] = http("http-features-delete", "DELETE", "/features", "producer", DELETION,
                                           required=[("featuresUrns",)],
                                           extra=variants(DELETION, ("featuresUrns", 0), ["URN:x", "", "../x", URN + "\u0000"], "urn")
                                           + variants(DELETION, ("featuresUrns",), [[], BigArray(URN, 100000)], "urns"))
    entries["http-features-notify"] = http("http-features-notify", "POST", "/features/notifications", "producer", NOTIFY,
                                           required=[("featuresUrns",)],
                                           extra=variants(NOTIFY, ("featuresUrns", 0), ["URN:x", "", BigString("x", 10000)], "urn")
                                           + variants(NOTIFY, ("featuresUrns",), [[]], "urns"))
    entries["http-models"] = http("http-models", "PUT", "/models/C", "admin", MODEL, required=[("attributes", 1, "type"), ("attributes", 0, "name")],
                                  extra=variants(MODEL, ("attributes", 0, "type"), ["INT", "STRING_ARRAY_RANGE", "", "string"], "type")
                                  + variants(MODEL, ("attributes", 1, "restriction", "pattern"), ["(", "[a-", "(?P<x", "\\", "a{99999999}"], "pattern")
                                  + variants(MODEL, ("attributes", 0, "restriction", "min"), [10, "0"], "range")
                                  + variants(MODEL, ("attributes", 0, "name"), ["", "a.b", BigString("x", 10000), "$ref", "../n"], "attribute-name")
                                  + variants(MODEL, ("attributes",), [[{"name": "n", "type": "INTEGER"}] * 2, [{"name": "f", "type": "FRAGMENT"}]], "attributes")
                                  + [("json-schema-bad-ref", json.dumps({"type": "object", "$ref": "http://evil.invalid/schema.json"})),
                                     ("json-schema-bad-type", json.dumps({"type": "objet"})),
                                     ("json-schema-bad-pattern", json.dumps({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}})),
                                     ("json-schema-file-ref", json.dumps({"type": "object", "$ref": "file:///etc/passwd"}))])
    entries["http-recipients"] = http("http-recipients", "PUT", "/recipients/corpus", "admin", RECIPIENT,
                                      required=[("target",), ("target", "type"), ("target", "url")],
                                      extra=variants(RECIPIENT, ("target", "url"), BAD_SOURCES, "url")
                                      + variants(RECIPIENT, ("target", "type"), ["sms", "", "QUEUE"], "target-type")
                                      + variants(RECIPIENT, ("secret",), ["short", ""], "secret")
                                      + variants(RECIPIENT, ("target",), [{"type": "queue", "queue": ""}, {"type": "queue", "queue": "feature-high"},
                                                                          {"type": "sns", "topic": "arn:aws:sns:x"}], "target"))
    entries["http-storage-locations"] = http("http-storage-locations", "PUT", "/storage-locations/corpus", "admin", LOCATION,
                                             required=[("bucket",), ("class",)],
                                             extra=variants(LOCATION, ("bucket",), ["Not_A_Bucket", "", "a", "x" * 100, "../x", "bucket/key", "xn--bucket", "192.168.1.1"], "bucket")
                                             + variants(LOCATION, ("prefix",), TRAVERSALS[:4] + ["a/../../b", "//"], "prefix")
                                             + variants(LOCATION, ("class",), ["TAPE", "online", ""], "class"))
    entries["http-notification-settings"] = http("http-notification-settings", "PUT", "/notification-settings", "admin", SETTINGS,
                                                 required=[("active",)],
                                                 extra=variants(SETTINGS, ("active",), ["true", "1", 0, 1, "yes", None], "active"))
    entries["http-basket-selection"] = http("http-basket-selection", "POST", "/order/basket/selection", "user", SELECTION,
                                            extra=variants(SELECTION, ("selectionDate",), ["yesterday", "2026-13-45T99:00:00Z", "", "1700000000"], "date")
                                            + variants(SELECTION, ("datasetUrn",), ["NO-SUCH", "", "../S2", BigString("x", 10000), "CLOSED"], "dataset")
                                            + [("nothing-selected", json.dumps({})), ("engine", json.dumps({**SELECTION, "engineType": "sql"}))])
    entries["http-basket-upload"] = [{"entry": "http-basket-upload", "case": c, "method": "POST", "path": "/order/basket/selection/upload",
                                      "role": "user", "content_type": ct, "body": b} for c, ct, b in uploads()]
    entries["http-basket-file-filters"] = http("http-basket-file-filters", "PUT", "/order/basket/dataset/{selection}/updateFileFilters", "user", FILTERS,
                                               empty_ok=True, big_ok=[("fileTypes",)],
                                               extra=variants(FILTERS, ("fileTypes", 0), ["PICTURE", "", "rawdata"], "type")
                                               + variants(FILTERS, ("fileNamePattern",), ["(", "[", "a{99999999}", "(?<", "\\"], "pattern"))
    entries["http-basket-processing"] = http("http-basket-processing", "PUT", "/order/basket/dataset/{selection}/updateProcessing", "user", PROCESSING,
                                             required=[("processBusinessId",)], empty_ok=True,
                                             extra=variants(PROCESSING, ("processBusinessId",), ["no-such-process", "", "../../bin/sh", BigString("x", 10000)], "process"))
    entries["http-orders-create"] = http("http-orders-create", "POST", "/user/orders", "user", ORDER, empty_ok=True,
                                         extra=variants(ORDER, ("label",), ["x" * 51, BigString("x", 100000)], "label"))
    entries["http-orders-search"] = http("http-orders-search", "POST", "/orders/search", "admin", SEARCH, empty_ok=True,
                                         extra=variants(SEARCH, ("status",), ["EXPLODED", "running", ""], "status")
                                         + [("unknown-field", json.dumps({**SEARCH, "where": "1=1"}))])
    entries["http-quotas"] = http("http-quotas", "PUT", "/quotas/ann@example.org", "admin", QUOTA,
                                  required=[("maxFiles",), ("maxBytes",), ("periodHours",)],
                                  extra=variants(QUOTA, ("maxFiles",), [-3, -2, 2 ** 63, 1.5], "max-files")
                                  + variants(QUOTA, ("periodHours",), [0, -1, 2 ** 63, 1e10], "period"))
    entries["http-tokens"] = [{"entry": "http-tokens", "case": c, "method": "GET", "path": "/order/basket", "role": "none",
                               "authorization": t, "body": ""} for c, t in tokens()]
    entries["http-paths"] = [{"entry": "http-paths", "case": c, "method": m, "path": p, "role": "admin", "body": ""}
                             for c, m, p in paths_and_queries()]

    # SQS: bodies and attributes of the feature request queues; acknowledgements; storage events.
    sqs = []
    attrs = {"regards.request.type": "CREATION", "regards.request.owner": "corpus", "regards.request.date": "2026-11-24T10:00:00Z"}
    sqs_extra = (variants(SQS_CREATION, ("feature", "geometry"), GEOMETRIES, "geometry")
                 + variants(SQS_CREATION, ("feature", "files", 0, "locations", 0, "url"), BAD_SOURCES, "source")
                 + variants(SQS_CREATION, ("feature", "files", 0, "attributes", "filename"), TRAVERSALS, "filename")
                 + variants(SQS_CREATION, ("feature", "model"), ["no-such-model", ""], "model"))
    for c, b in generic(SQS_CREATION, [("feature",), ("metadata",), ("feature", "id")], lenient=[("feature", "properties")]) + sqs_extra:
        if not sqs_body_ok(b):
            continue  # SQS itself refuses it (raw bytes, over 256 KiB) before Granary sees it
        sqs.append({"entry": "sqs-feature", "case": c, "queue": "feature-high", "attributes": attrs, "body": b})
    good = json.dumps(SQS_CREATION)
    for i, (k, v) in enumerate([("regards.request.type", "DESTROY"), ("regards.request.type", ""), ("regards.request.type", "x" * 10000),
                                ("regards.request.date", "yesterday"), ("regards.request.date", "2026-13-45T99:00:00Z"),
                                ("regards.request.date", "9999999-01-01T00:00:00Z"), ("regards.request.file_update_mode", "SHRED"),
                                ("regards.request.type", "PATCH"), ("regards.request.type", "DELETION"), ("regards.request.type", "NOTIFICATION"),
                                ("regards.request.type", "creation\u0000")]):
        sqs.append({"entry": "sqs-feature", "case": f"attribute-{i}", "queue": "feature-high", "attributes": {**attrs, k: v}, "body": good})
    entries["sqs-feature"] = sqs
    entries["sqs-ack"] = [{"entry": "sqs-ack", "case": c, "queue": "feature-ack", "attributes": {}, "body": b}
                          for c, b in generic(ACK, [("urn",), ("recipientLabel",)])
                          + variants(ACK, ("urn",), ["URN:x", "", URN.replace("V1", "V0"), BigString("x", 10000)], "urn")
                          + variants(ACK, ("recipientLabel",), ["nobody", "", "../x"], "label")
                          if sqs_body_ok(b)]
    entries["sqs-storage-ready"] = [{"entry": "sqs-storage-ready", "case": c, "queue": "storage-ready", "attributes": {}, "body": b}
                                    for c, b in generic(STORAGE_EVENT, [("type",), ("checksum",), ("groupIds",)], lenient=[("message",), ("originStorage",), ("owners",), ("location", "storage"), ("metaInfo",)])
                                    + variants(STORAGE_EVENT, ("type",), ["EXPLODED", "", "stored"], "type")
                                    + variants(STORAGE_EVENT, ("groupIds",), [[], [""], [BigString("x", 10000)]], "groups")
                                    if sqs_body_ok(b)]

    for name, cases in entries.items():
        seen = set()
        with open(os.path.join(HERE, f"{name}.jsonl"), "w") as out:
            for case in cases:
                assert case["case"] not in seen, (name, case["case"])
                seen.add(case["case"])
                out.write(json.dumps(case, ensure_ascii=True) + "\n")
        print(f"{name}: {len(cases)}")


if __name__ == "__main__":
    main()
