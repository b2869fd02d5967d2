"""``roadside-agent export EVENT_ID... --out DIR``: evidence packages a court or platform can check.

One directory per record::

    {event_id}/
        index.html        self-contained page: photos, plate, axle-load chart vs the limit,
                          verdict, and how to verify the package
        record.json       the record exactly as stored and signed (canonical JSON)
        body.json         record.json without "integrity": the bytes that were hashed
        prev_hash.txt     the previous record's hash (the chain link)
        hash.bin          SHA-256(prev_hash ‖ body.json), 32 raw bytes
        signature.sig     Ed25519 signature over hash.bin, 64 raw bytes
        public_key.pem    the station public key (key id in record.json)
        images/           the photos, byte for byte
        SHA256SUMS        sha256sum -c format, for the images and the files above
        verify.py         stand-alone check (Python 3 + the cryptography package), with
                          the station's own canonical JSON copied in

Exit 0 when every package was written and verified; 1 when a record is missing or fails its
check (its package is still written, marked NOT VERIFIED); 66 without a database.

On a terminal it shows how many packages of N are written (``agent.commands.progress``, on
stderr); in
the journal, a pipe or a file nothing but the result is written.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

from agent.commands._common import EX_FAILED, add_location_args, location_of, open_db
from agent.commands._export_evidence import clip_html, package_html


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="write evidence packages for records",
        description="Write one evidence package per record: record JSON, images, signature, "
        "public key, a stand-alone verifier and a human-readable page.",
    )
    p.add_argument("event_ids", nargs="+", metavar="EVENT_ID", help="record ids to export")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_location_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from agent.commands.progress import track
    from agent.store.keys import verification_keys

    where = location_of(args, "export")
    data_dir, config = where.data_dir, where.evidence
    conn = open_db(data_dir, "export")
    keys = verification_keys(data_dir, config)
    out = Path(args.out)
    results: list[dict[str, Any]] = []
    try:
        ids = args.event_ids
        for event_id in track(ids, "export", total=len(ids), unit="packages"):
            results.append(export_one(conn, data_dir, keys, event_id, out))
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"packages": results}, ensure_ascii=False))
    else:
        for r in results:
            state = "verified" if r["verified"] else "NOT VERIFIED: " + "; ".join(r["problems"])
            print(f"{r['event_id']}: {r.get('path', '-')} ({state})")
    return 0 if all(r["verified"] for r in results) else EX_FAILED


#: One photo on the page: its entry in the record, its bytes (``None`` when not there) and what
#: is wrong with it ("" when nothing).
Photo = tuple[dict[str, Any], bytes | None, str]


def export_one(
    conn: sqlite3.Connection, data_dir: Path, keys: dict[str, Any], event_id: str, out: Path
) -> dict[str, Any]:
    """Write the package of one record; returns ``{event_id, path, verified, problems}``."""
    from agent.store import integrity, readonly

    record_json = readonly.record_json(conn, event_id)
    if record_json is None:
        pruned = readonly.pruned_at(conn, event_id)
        why = f"pruned by retention at {pruned}" if pruned else "no such record"
        return {"event_id": event_id, "verified": False, "problems": [why]}
    record = json.loads(record_json)
    seal = dict(record["integrity"])
    body = {k: v for k, v in record.items() if k != "integrity"}
    body_bytes = integrity.canonical_json(body)
    problems: list[str] = []
    key = keys.get(str(seal.get("key_id")))
    if key is None:
        problems.append(f"no public key with key id {seal.get('key_id')}")
    else:
        broken = integrity.verify_seal(key, seal.get("prev_hash", ""), body_bytes, seal)
        if broken:
            problems.append(broken)
    files: dict[str, bytes] = {
        "record.json": record_json.encode(),
        "body.json": body_bytes,
        "prev_hash.txt": (seal.get("prev_hash", "") + "\n").encode(),
        "hash.bin": bytes.fromhex(seal.get("hash", "")),
        "signature.sig": base64.b64decode(seal.get("signature", "")),
        "verify.py": verify_py().encode(),
    }
    if key is not None:
        files["public_key.pem"] = integrity.public_pem(key).encode()
    photos = _photos(conn, data_dir, event_id, record, files, problems)
    clips = _photos(conn, data_dir, event_id, record, files, problems, kind="videos")
    page = render_html(
        record, seal, photos, problems, files.get("public_key.pem", b"").decode(), clips
    )
    pkg = out / event_id
    _write_package(pkg, files, page)
    return {
        "event_id": event_id,
        "path": str(pkg),
        "verified": not problems,
        "problems": problems,
    }


def _photos(
    conn: sqlite3.Connection,
    data_dir: Path,
    event_id: str,
    record: dict[str, Any],
    files: dict[str, bytes],
    problems: list[str],
    kind: str = "images",
) -> list[Photo]:
    """The record's photos (``kind="videos"``: its clips) as the page shows them; each one still
    there and matching its signed hash goes into ``files`` (as ``{kind}/{name}``), each one
    missing or altered into ``problems`` (evicted by retention is not a problem)."""
    from agent.store import readonly

    image_rows = {r.name: (r.path, r.evicted_at) for r in readonly.image_rows(conn, event_id)}
    photos: list[Photo] = []
    for img in record.get(kind, []):
        name = img["name"]
        path, evicted = image_rows.get(name, (None, None))
        data: bytes | None = None
        note = ""
        if evicted:
            note = f"evicted by retention at {evicted}"
        elif path is None:
            note = "no image row"
        else:
            try:
                data = (data_dir / path).read_bytes()
            except OSError as err:
                note = f"missing: {err.strerror}"
        if data is not None and hashlib.sha256(data).hexdigest() != img["sha256"]:
            note = "SHA-256 differs from the signed record"
        if note and not evicted:
            problems.append(f"{'video' if kind == 'videos' else 'image'} {name}: {note}")
        if data is not None:
            files[f"{kind}/{name}"] = data
        photos.append((img, data, note))
    return photos


def _write_package(pkg: Path, files: dict[str, bytes], page: str) -> None:
    """``pkg`` afresh: ``files``, their ``SHA256SUMS`` and ``index.html``."""
    if pkg.exists():
        shutil.rmtree(pkg)
    (pkg / "images").mkdir(parents=True)
    for name, data in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)  # images/, videos/
        (pkg / name).write_bytes(data)
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in sorted(files.items())
        if name != "SHA256SUMS"
    )
    (pkg / "SHA256SUMS").write_text(sums)
    (pkg / "index.html").write_text(page, encoding="utf-8")


# -- the page --------------------------------------------------------------------------------

STATUS_COLOURS = {
    "overloaded": "#c62828",
    "warning": "#ef6c00",
    "within_limit": "#2e7d32",
    "exempt": "#1565c0",
    "undetermined": "#616161",
}

STATUS_ZH = {
    "overloaded": "初判超限，待审核",
    "warning": "警告情形，待审核",
    "within_limit": "未超限",
    "exempt": "免于认定",
    "undetermined": "不予认定",
}
GROSS_LABEL = "总质量 Gross"

CHART_W, CHART_H, CHART_PAD, CHART_TOP = 640, 260, 48, 16


def axle_chart_svg(
    axle_loads_kg: list[int], gross_kg: int | None, limit_kg: int | None, tolerance_kg: int | None
) -> str:
    """Axle loads as bars, then the gross as a bar against the limit and limit + tolerance."""
    w, h, pad = CHART_W, CHART_H, CHART_PAD
    labels = [f"第{i + 1}轴 Axle {i + 1}" for i in range(len(axle_loads_kg))]
    values = list(axle_loads_kg)
    if gross_kg is not None:
        labels.append(GROSS_LABEL)
        values.append(gross_kg)
    lines = [(limit_kg, "限值 limit", "#c62828")]
    if limit_kg is not None and tolerance_kg:
        lines.append((limit_kg + tolerance_kg, "限值+允差 limit + tolerance", "#ef6c00"))
    y = _ChartScale(max([v for v in values] + [v or 0 for v, _, _ in lines] + [1]) * 1.1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="axle loads and gross against the limit">',
        f'<line x1="{pad}" y1="{CHART_TOP}" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="#333"/>',
    ]
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        v = y.top_value / 1.1 * frac
        parts.append(
            f'<text x="{pad - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{v / 1000:.0f} t</text>"
        )
    limit = None if limit_kg is None else limit_kg + (tolerance_kg or 0)
    parts += _chart_bars(labels, values, limit, y)
    if gross_kg is not None:  # the gross limit applies to the gross only: no axle limits apply
        parts += _chart_limit_lines(lines, y, _slot_span(len(values) - 1, len(values)))
    parts.append("</svg>")
    return "".join(parts)


class _ChartScale:
    """kg → the y coordinate of the chart (``top_value`` at the top of the plot)."""

    def __init__(self, top_value: float) -> None:
        self.top_value = top_value
        self.plot_h = CHART_H - CHART_PAD - CHART_TOP

    def __call__(self, v: float) -> float:
        return CHART_TOP + self.plot_h * (1 - v / self.top_value)


def _chart_bars(
    labels: list[str], values: list[int], over_above_kg: int | None, y: _ChartScale
) -> list[str]:
    """One bar per value, labelled; the gross in red when above ``over_above_kg``."""
    h, pad = CHART_H, CHART_PAD
    slot = (CHART_W - pad - 10) / max(len(values), 1)
    parts: list[str] = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = pad + i * slot + slot * 0.15
        bw = slot * 0.7
        gross = label == GROSS_LABEL
        over = gross and over_above_kg is not None and v > over_above_kg
        colour = "#c62828" if over else ("#1565c0" if gross else "#78909c")
        parts.append(
            f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw:.1f}" height="{y(0) - y(v):.1f}" '
            f'fill="{colour}"><title>{label}: {v} kg</title></rect>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{y(v) - 4:.1f}" font-size="11" '
            f'text-anchor="middle">{v:,} kg</text>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{h - pad + 16}" font-size="11" '
            f'text-anchor="middle">{label}</text>'
        )
    return parts


def _slot_span(index: int, count: int) -> tuple[float, float]:
    """The x range of bar ``index`` of ``count`` (its slot, a little wider than the bar)."""
    slot = (CHART_W - CHART_PAD - 10) / max(count, 1)
    return CHART_PAD + index * slot + slot * 0.05, CHART_PAD + (index + 1) * slot - slot * 0.05


def _chart_limit_lines(
    lines: list[tuple[int | None, str, str]], y: _ChartScale, span: tuple[float, float]
) -> list[str]:
    """A dashed line per limit over the gross bar (``span``), labelled to its left: the limit
    below its line, limit + tolerance above."""
    x1, x2 = span
    parts: list[str] = []
    for i, (line_kg, label, colour) in enumerate(lines):
        if line_kg is None:
            continue
        parts.append(
            f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y(line_kg):.1f}" '
            f'y2="{y(line_kg):.1f}" stroke="{colour}" stroke-dasharray="6 3" stroke-width="2"/>'
        )
        dy = 13 if i == 0 else -5  # limit below its line, limit + tolerance above its own
        parts.append(
            f'<text x="{x1 - 4:.1f}" y="{y(line_kg) + dy:.1f}" font-size="11" text-anchor="end" '
            f'fill="{colour}">{label} {line_kg:,} kg</text>'
        )
    return parts


def _kg(value: Any) -> str:
    return "—" if value is None else f"{value:,} kg"


def render_html(
    record: dict[str, Any],
    seal: dict[str, Any],
    photos: list[Photo],
    problems: list[str],
    public_key_pem: str,
    clips: list[Photo] | None = None,
) -> str:
    e = html.escape
    v = record.get("verdict", {})
    veh = record.get("vehicle", {})
    status = str(v.get("status", "undetermined"))
    verified = (
        '<p class="ok">导出时已验证：哈希链、Ed25519签名及每张照片的哈希均一致。<br>'
        "This package was verified when exported: hash chain link, "
        "Ed25519 signature and every image hash hold.</p>"
        if not problems
        else '<p class="bad">导出时验证未通过 NOT VERIFIED when exported: '
        + "; ".join(e(p) for p in problems)
        + "</p>"
    )
    table = "".join(f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in _record_rows(record))
    chart = axle_chart_svg(
        list(veh.get("axle_loads_kg", [])),
        veh.get("gross_kg"),
        v.get("limit_kg"),
        v.get("tolerance_kg"),
    )
    return PAGE.format(
        title=e(str(record.get("event_id"))),
        colour=STATUS_COLOURS.get(status, "#616161"),
        status=e(STATUS_ZH.get(status, status)),
        status_en=e(status.replace("_", " ").upper()),
        explanation=e(str(v.get("explanation", ""))),
        explanation_zh=e(str(v.get("explanation_zh", ""))),
        plates=_plates_html(record.get("plates", [])),
        photos="".join(_photo_html(photo) for photo in photos),
        clips="".join(clip_html(clip) for clip in clips or []) or "<em>no clip</em>",
        package=package_html(record),
        chart=chart,
        table=table,
        verified=verified,
        prev_hash=e(str(seal.get("prev_hash"))),
        hash=e(str(seal.get("hash"))),
        signature=e(str(seal.get("signature"))),
        key_id=e(str(seal.get("key_id"))),
        public_key=e(public_key_pem),
    )


def _plates_html(plates: list[dict[str, Any]]) -> str:
    e = html.escape
    return (
        "".join(
            f'<span class="plate plate-{e(str(p.get("color")))}">{e(str(p.get("text")))}</span> '
            f"<small>{e(str(p.get('position')))}, {e(str(p.get('color')))}, "
            f"confidence {p.get('confidence')}</small><br>"
            for p in plates
        )
        or "<em>未识别车牌 no plate read</em>"
    )


def _photo_html(photo: Photo) -> str:
    e = html.escape
    img, data, note = photo
    caption = f"{e(img['name'])} ({e(str(img.get('role')))}, {img.get('bytes'):,} bytes)"
    if data is not None and not note:
        b64 = base64.b64encode(data).decode()
        return (
            f'<figure><img src="data:image/jpeg;base64,{b64}" alt="{e(img["name"])}">'
            f"<figcaption>{caption}<br><code>SHA-256 {e(img['sha256'])}</code>"
            "</figcaption></figure>"
        )
    return (
        f'<figure class="missing"><div>{e(note)}</div><figcaption>{caption}<br>'
        f"<code>SHA-256 {e(img['sha256'])}</code></figcaption></figure>"
    )


def _over_html(v: dict[str, Any]) -> str:
    """超限 / over the limit: the excess and what lies beyond limit + tolerance; a passing
    vehicle shows how far it is under, never a negative excess."""
    over, pct, tol = v.get("over_kg"), v.get("over_pct"), v.get("tolerance_kg") or 0
    if over is None:
        return "—"
    if over <= 0:
        return f"未超限 within the limit ({-over:,} kg 低于限值 under the limit)"
    text = f"{over:,} kg ({float(pct or 0):.2f} %)"
    beyond = over - tol
    if beyond > 0:
        return f"{text}; 超出限值与允差之和 beyond limit + tolerance: <b>{beyond:,} kg</b>"
    return f"{text}; 在允差内 within the tolerance"


def _legal_basis(v: dict[str, Any]) -> str:
    """The regulation and item the limit comes from, as an officer cites it."""
    details = v.get("details") or {}
    cite = details.get("cite")
    if cite is None and details.get("source"):
        cite = str(details["source"]).split("：", 1)[0]
    rule = html.escape(str(v.get("rule")))
    return f"{html.escape(str(cite))} <small>({rule})</small>" if cite else rule


def _record_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's record table: ``(heading, HTML)`` per row, Chinese first."""
    e = html.escape
    v = record.get("verdict", {})
    veh = record.get("vehicle", {})
    dev = record.get("device", {})
    sw = record.get("software", {})
    clock_html = (
        "已与NTP同步 NTP-synchronised"
        if record.get("clock", {}).get("synchronized")
        else '<b class="bad">时钟未同步，本记录时间不可信 NOT synchronised: the time of this '
        "record is not trusted</b>"
    )
    rows = [
        ("记录编号 Event id", e(str(record.get("event_id")))),
        (
            "站点/车道 Station / lane",
            f"{e(str(record.get('station_id')))} / 车道 lane {record.get('lane')}",
        ),
        ("检测时间 Measured at", f"{e(str(record.get('measured_at')))} ({clock_html})"),
        ("序号 Sequence", str(record.get("seq"))),
        (
            "车型 Vehicle class",
            f"{e(str(veh.get('vehicle_class')))} ({veh.get('axle_count')} 轴 axles)",
        ),
        ("车速 Speed", f"{veh.get('speed_kmh')} km/h"),
        ("轴荷 Axle loads", ", ".join(f"{x:,} kg" for x in veh.get("axle_loads_kg", []))),
        ("轴距 Axle spacings", ", ".join(f"{x:,} mm" for x in veh.get("axle_spacings_mm", []))),
        ("总质量 Gross", f"<b>{veh.get('gross_kg', 0):,} kg</b>"),
        ("法律依据 Legal basis", _legal_basis(v)),
        (
            "限值/允差 Limit / tolerance",
            f"{_kg(v.get('limit_kg'))} / {_kg(v.get('tolerance_kg'))} "
            f"({e(str(v.get('tolerance_policy', '')))})",
        ),
        ("超限 Over the limit", _over_html(v)),
        ("数据来源 Facts source", e(str(v.get("facts_source", "assumed")))),
        (
            "衡器 Scale",
            f"{e(str(dev.get('scale_id')))}, 准确度等级 accuracy class "
            f"{e(str(dev.get('accuracy_class')))}, 检定证书 certificate "
            f"{e(str(dev.get('certificate')))} 有效期至 valid until "
            f"{e(str(dev.get('certificate_valid_until')))}",
        ),
        (
            "软件 Software",
            f"{e(str(sw.get('version')))}, 法制相关软件标识 legal id "
            f"<code>{e(str(sw.get('legal_id')))}</code>",
        ),
        ("审计计数 Audit counter", str(record.get("audit_counter"))),
    ]
    storage = record.get("storage_flags") or []
    if storage:
        rows.append(("存储 Storage", '<b class="bad">' + e(", ".join(storage)) + "</b>"))
    return rows


PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>证据记录 Evidence {title}</title>
<style>
body {{ font-family: system-ui, "Noto Sans CJK SC", sans-serif; margin: 2em auto; max-width: 980px;
       color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.4em; }} code {{ font-size: .85em; word-break: break-all; }}
.verdict {{ background: {colour}; color: #fff; padding: .8em 1em; border-radius: 6px; }}
.verdict b {{ font-size: 1.5em; letter-spacing: .05em; }}
.plate {{ display: inline-block; font-size: 1.6em; font-weight: bold; padding: .1em .5em;
          border: 2px solid #222; border-radius: 4px; margin: .2em 0; }}
.plate-yellow {{ background: #f9d71c; }} .plate-blue {{ background: #1e4fa3; color: #fff; }}
.plate-green {{ background: #7cc576; }} .plate-white {{ background: #fff; }}
.plate-black {{ background: #111; color: #fff; }}
.photos {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; max-width: 460px; }} figure img {{ max-width: 100%; border: 1px solid #999; }}
figure.missing div {{ width: 300px; height: 160px; background: #eee; display: flex;
                      align-items: center; justify-content: center; color: #666; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; border-bottom: 1px solid #ddd; padding: .35em .5em;
          vertical-align: top; }}
th {{ width: 14em; color: #555; font-weight: normal; }}
h1 small, h2 small {{ color: #666; font-weight: normal; }}
.ok {{ color: #2e7d32; font-weight: bold; }} .bad {{ color: #c62828; font-weight: bold; }}
pre {{ background: #f4f4f4; padding: .8em; overflow-x: auto; font-size: .85em; }}
</style></head>
<body>
<h1>车辆检测证据记录 <small>Vehicle evidence record</small> {title}</h1>
<div class="verdict"><b>{status}</b> <small>{status_en}</small><br>{explanation_zh}
<br><small>{explanation}</small></div>
<p><small>本记录为电子技术监控设备记录的初步结果，须经执法人员审核后方可作为证据（《中华人民共和国行政处罚法》第四十一条）。
A preliminary finding of an electronic monitoring device: it becomes evidence only after an
officer's review (Administrative Penalty Law Art. 41).</small></p>
<h2>车牌 <small>Plate</small></h2>
<p>{plates}</p>
<h2>照片 <small>Photos</small></h2>
<div class="photos">{photos}</div>
<h2>过车视频 <small>Video of the passage</small></h2>
<div class="photos">{clips}</div>
<h2>地点、设备与证据完整性 <small>Where, with which device, how complete</small></h2>
{package}
<h2>轴荷与总质量限值 <small>Axle loads and the gross limit</small></h2>
<p><small>限值仅适用于总质量，不适用于单轴。The limit applies to the gross only; no axle
limits apply.</small></p>
{chart}
<h2>记录 <small>Record</small></h2>
<table>{table}</table>
<h2>完整性 <small>Integrity</small></h2>
{verified}
<table>
<tr><th>前一记录哈希 Previous hash</th><td><code>{prev_hash}</code></td></tr>
<tr><th>哈希 Hash</th><td><code>{hash}</code></td></tr>
<tr><th>签名 Signature (Ed25519)</th><td><code>{signature}</code></td></tr>
<tr><th>密钥标识 Key id</th><td><code>{key_id}</code></td></tr>
</table>
<pre>{public_key}</pre>
<h2>如何验证 <small>How to verify this package</small></h2>
<ol>
<li>Check the station public key: its key id (the first 16 hex digits of SHA-256 of the raw
32-byte key) must match the key registered for this station with the platform.</li>
<li>Automatically: <code>python3 verify.py</code> in this directory (needs Python 3 and the
<code>cryptography</code> package). It checks every step below.</li>
<li>By hand, with standard tools:
<pre>sha256sum -c SHA256SUMS                      # files and photos unchanged
jq -S 'del(.integrity)' record.json | diff - &lt;(jq -S . body.json)   # body.json is the record
(tr -d '\\n' &lt; prev_hash.txt; cat body.json) | sha256sum   # = hash.bin (xxd -p hash.bin)
openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin \\
        -in hash.bin -sigfile signature.sig    # "Signature Verified Successfully"</pre></li>
<li>The photo hashes are inside the signed body (<code>images[].sha256</code>), so a
photo that still matches its hash is the photo the station signed.</li>
<li>The previous hash links this record into the station's chain; the platform, holding the
neighbouring records, can check the link. On the station, <code>roadside-agent verify</code>
checks the whole chain.</li>
</ol>
<p><small>body.json is the canonical JSON of the record without its integrity block: keys sorted,
UTF-8, no spaces. hash = SHA-256(previous hash as 64 ASCII hex digits followed by body.json);
the signature is Ed25519 over the 32 hash bytes.</small></p>
</body></html>
"""

_VERIFY_PY = '''#!/usr/bin/env python3
"""Verify this evidence package: python3 verify.py [PACKAGE_DIR]. Needs `cryptography`."""
import base64, hashlib, json, sys
from pathlib import Path
from typing import Any
from cryptography.hazmat.primitives.serialization import load_pem_public_key

{canonical_json}

d = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
record = json.loads((d / "record.json").read_bytes())
seal = record.pop("integrity")
body = canonical_json(record)
ok = True
def check(cond, what):
    global ok
    ok = ok and cond
    print(("OK   " if cond else "FAIL ") + what)
check(body == (d / "body.json").read_bytes(), "body.json is the record without integrity")
digest = hashlib.sha256(seal["prev_hash"].encode("ascii") + body).hexdigest()
check(digest == seal["hash"], "hash = SHA-256(prev_hash || body)")
key = load_pem_public_key((d / "public_key.pem").read_bytes())
raw = key.public_bytes(encoding=__import__("cryptography.hazmat.primitives.serialization",
    fromlist=["Encoding"]).Encoding.Raw, format=__import__(
    "cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"]).PublicFormat.Raw)
check(hashlib.sha256(raw).hexdigest()[:16] == seal["key_id"], "public key id " + seal["key_id"])
try:
    key.verify(base64.b64decode(seal["signature"]), bytes.fromhex(seal["hash"]))
    check(True, "Ed25519 signature")
except Exception:
    check(False, "Ed25519 signature")
for kind, what in (("images", "image "), ("videos", "video ")):
    for img in record.get(kind, []):
        p = d / kind / img["name"]
        if p.exists():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            check(digest == img["sha256"], what + img["name"])
        else:
            print("--   " + what + img["name"] + " not in the package (evicted or missing)")
print("VERIFIED" if ok else "NOT VERIFIED")
sys.exit(0 if ok else 1)
'''


def verify_py() -> str:
    """The package's stand-alone ``verify.py``; its canonical JSON is the station's own
    (:func:`agent.store.integrity.canonical_json`, copied in by source), so the bytes it hashes
    are the bytes the station signed."""
    import inspect

    from agent.store import integrity

    return _VERIFY_PY.replace("{canonical_json}", inspect.getsource(integrity.canonical_json))
