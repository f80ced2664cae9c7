"""SCORM packages: imsmanifest.xml for SCORM 1.2 or 2004 4th edition, the zip (reproducible: same inputs, same
bytes), and the rules an LMS checks a manifest against, applied to every package before it is published."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.dom import minidom
from xml.etree import ElementTree as ET

VERSIONS = {"scorm12": "1.2", "scorm2004": "2004"}
_NS = {
    "1.2": {"": "http://www.imsproject.org/xsd/imscp_rootv1p1p2", "adlcp": "http://www.adlnet.org/xsd/adlcp_rootv1p2"},
    "2004": {"": "http://www.imsglobal.org/xsd/imscp_v1p1", "adlcp": "http://www.adlnet.org/xsd/adlcp_v1p3",
             "adlseq": "http://www.adlnet.org/xsd/adlseq_v1p3", "adlnav": "http://www.adlnet.org/xsd/adlnav_v1p3",
             "imsss": "http://www.imsglobal.org/xsd/imsss"},
}
_SCHEMA_LOCATION = {
    "1.2": "http://www.imsproject.org/xsd/imscp_rootv1p1p2 imscp_rootv1p1p2.xsd "
           "http://www.adlnet.org/xsd/adlcp_rootv1p2 adlcp_rootv1p2.xsd",
    "2004": "http://www.imsglobal.org/xsd/imscp_v1p1 imscp_v1p1.xsd http://www.adlnet.org/xsd/adlcp_v1p3 "
            "adlcp_v1p3.xsd http://www.adlnet.org/xsd/adlseq_v1p3 adlseq_v1p3.xsd "
            "http://www.adlnet.org/xsd/adlnav_v1p3 "
            "adlnav_v1p3.xsd http://www.imsglobal.org/xsd/imsss imsss_v1p0.xsd",
}
SCHEMA_VERSION = {"1.2": "1.2", "2004": "2004 4th Edition"}
SCORM_TYPE_ATTR = {"1.2": "scormtype", "2004": "scormType"}  # the two versions spell it differently
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # xs:ID, as the manifest's identifiers must be
STORED = (".mp4", ".m4s", ".ts", ".jpg", ".png", ".zip")  # compressed already: deflate gains nothing
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's first date: the archive depends on its contents alone


@dataclass
class Sco:
    """One lesson of a package: its launch page and every file it needs (names inside the zip)."""

    ident: str
    title: str
    launch: str
    files: list[str] = field(default_factory=list)


def identifier(text: str, prefix: str) -> str:
    """An xs:ID from a job id ('01-intro' → 'sco-01-intro')."""
    body = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)
    return f"{prefix}-{body}"


def manifest_xml(version: str, ident: str, title: str, scos: list[Sco], shared: list[str]) -> str:
    """imsmanifest.xml: one organization, an item per SCO, a resource per SCO (+ one asset of shared files)."""
    ns = _NS[version]
    for p, uri in ns.items():
        ET.register_namespace(p, uri)
    q = lambda tag, p="": f"{{{ns[p]}}}{tag}"  # noqa: E731
    root = ET.Element(q("manifest"), {"identifier": ident, "version": "1.0",
                                      f"{{{XSI}}}schemaLocation": _SCHEMA_LOCATION[version]})
    if version == "2004":  # declared on the root, as the 2004 CAM's examples do, though only adlcp is used
        for p in ("adlseq", "adlnav", "imsss"):
            root.set(f"xmlns:{p}", ns[p])
    meta = ET.SubElement(root, q("metadata"))
    ET.SubElement(meta, q("schema")).text = "ADL SCORM"
    ET.SubElement(meta, q("schemaversion")).text = SCHEMA_VERSION[version]
    orgs = ET.SubElement(root, q("organizations"), {"default": "org-1"})
    org = ET.SubElement(orgs, q("organization"), {"identifier": "org-1"})
    ET.SubElement(org, q("title")).text = title
    res = ET.SubElement(root, q("resources"))
    for s in scos:
        item = ET.SubElement(org, q("item"), {"identifier": f"item-{s.ident}", "identifierref": s.ident,
                                              "isvisible": "true"})
        ET.SubElement(item, q("title")).text = s.title
        r = ET.SubElement(res, q("resource"), {"identifier": s.ident, "type": "webcontent",
                                               q(SCORM_TYPE_ATTR[version], "adlcp"): "sco", "href": s.launch})
        for f in sorted(set(s.files) | {s.launch}):
            ET.SubElement(r, q("file"), {"href": f})
        if shared:
            ET.SubElement(r, q("dependency"), {"identifierref": "shared-assets"})
    if shared:
        r = ET.SubElement(res, q("resource"), {"identifier": "shared-assets", "type": "webcontent",
                                               q(SCORM_TYPE_ATTR[version], "adlcp"): "asset"})
        for f in sorted(shared):
            ET.SubElement(r, q("file"), {"href": f})
    text = ET.tostring(root, encoding="unicode")
    return minidom.parseString(text).toprettyxml(indent="  ", encoding="UTF-8").decode("utf-8")


def write_zip(dest: Path, files: dict[str, Path | bytes], comment: bytes = b"") -> None:
    """The package: entries sorted, dated 1980, media stored and text deflated (the same inputs, the same bytes)."""
    with zipfile.ZipFile(dest, "w") as z:
        z.comment = comment
        for name in sorted(files):
            src = files[name]
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_STORED if name.lower().endswith(STORED) else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)


def _safe_href(h: str) -> bool:
    p = PurePosixPath(h)
    return bool(h) and not p.is_absolute() and ".." not in p.parts and "\\" not in h and ":" not in h


def manifest_problems(zip_path: Path, version: str) -> list[str]:
    """The SCORM rules a package must follow (CAM: content packaging), each broken one as a sentence: a
    well-formed imsmanifest.xml at the root, the version's namespace and metadata, identifiers that are unique
    xs:IDs, a default organization that exists, items that point at resources, SCO resources with a launch page,
    and every file of the zip listed in the manifest (and every listed file in the zip)."""
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        if "imsmanifest.xml" not in names:
            return ["imsmanifest.xml is not at the root of the package"]
        try:
            root = ET.fromstring(z.read("imsmanifest.xml"))
        except ET.ParseError as e:
            return [f"imsmanifest.xml is not well-formed XML: {e}"]
    ns = _NS[version]
    q = lambda tag, p="": f"{{{ns[p]}}}{tag}"  # noqa: E731
    out: list[str] = []
    if root.tag != q("manifest"):
        return [f"the root element is {root.tag}, not manifest in {ns['']} (SCORM {SCHEMA_VERSION[version]})"]
    idents = [e.get("identifier") for e in root.iter() if e.get("identifier") is not None]
    out += [f"identifier {i!r} is not an xs:ID" for i in idents if not _NCNAME.match(i)]
    out += [f"identifier {i!r} is used twice" for i in sorted({i for i in idents if idents.count(i) > 1})]
    if not root.get("identifier"):
        out.append("manifest has no identifier")
    schema, sv = root.find(f"{q('metadata')}/{q('schema')}"), root.find(f"{q('metadata')}/{q('schemaversion')}")
    if schema is None or (schema.text or "").strip() != "ADL SCORM":
        out.append("metadata/schema must be 'ADL SCORM'")
    if sv is None or (sv.text or "").strip() != SCHEMA_VERSION[version]:
        out.append(f"metadata/schemaversion must be {SCHEMA_VERSION[version]!r}")
    orgs = root.find(q("organizations"))
    org_ids = {o.get("identifier") for o in orgs.findall(q("organization"))} if orgs is not None else set()
    if orgs is None or not org_ids:
        out.append("no organization")
    elif orgs.get("default") not in org_ids:
        out.append(f"organizations/@default {orgs.get('default')!r} names no organization")
    resources = {r.get("identifier"): r for r in root.iter(q("resource"))}
    attr = q(SCORM_TYPE_ATTR[version], "adlcp")
    for o in orgs.findall(q("organization")) if orgs is not None else []:
        if o.find(q("title")) is None or not (o.find(q("title")).text or "").strip():
            out.append(f"organization {o.get('identifier')!r} has no title")
        for item in o.iter(q("item")):
            ref = item.get("identifierref")
            if ref is not None and ref not in resources:
                out.append(f"item {item.get('identifier')!r} points at no resource ({ref!r})")
            if item.find(q("title")) is None:
                out.append(f"item {item.get('identifier')!r} has no title")
    listed: set[str] = set()
    for rid, r in resources.items():
        kind = r.get(attr)
        if kind not in ("sco", "asset"):
            out.append(f"resource {rid!r} has no adlcp:{SCORM_TYPE_ATTR[version]} of sco or asset")
        if kind == "sco" and not r.get("href"):
            out.append(f"SCO resource {rid!r} has no launch href")
        for d in r.findall(q("dependency")):
            if d.get("identifierref") not in resources:
                out.append(f"resource {rid!r} depends on {d.get('identifierref')!r}, which is not a resource")
        hrefs = [f.get("href") or "" for f in r.findall(q("file"))] + ([r.get("href")] if r.get("href") else [])
        for h in hrefs:
            if not _safe_href(h):
                out.append(f"resource {rid!r} lists {h!r}: hrefs are relative paths inside the package")
            elif h not in names:
                out.append(f"resource {rid!r} lists {h!r}, which is not in the package")
        listed |= set(hrefs)
    unlisted = sorted(names - listed - {"imsmanifest.xml"} - {n for n in names if n.endswith("/")})
    if unlisted:
        out.append(f"{len(unlisted)} file(s) of the package are listed in no resource: {', '.join(unlisted[:5])}")
    return out
