"""sevsim report: one self-contained HTML page, rendered for real in headless Chromium (Debian's
`chromium`, which .ci/run installs where missing): every plot drawn, no console error, and a
screenshot kept in test-artifacts/ (gitignored)."""

import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from sevsim import sweep

SEVSIM = [sys.executable, "-m", "sevsim.cli"]
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SMALL = ["--set", "scale=small", "--set", "neighbours=2", "--set", "guest_accesses=2000"]


def run(*args):
    r = subprocess.run(SEVSIM + list(args), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    run("sweep", "sev-teardown", *SMALL, "--set", "vm_memory=2MiB,4MiB", "--strategy",
        "wbinvd_all,wbnoinvd_ran_cpus,clflushopt_hva,none", "--seeds", "0-1", "--out", str(d / "sweep"), "-q")
    run("run", "snp-notifier-storm", "--set", "scale=small", "--set", "vm_memory=2MiB", "--set", "neighbours=2", "--set", "epochs=2",
        "--set", "epoch_accesses=1000", "--strategy", "wbinvd_all,clflushopt_pfn,none", "--json", str(d / "storm.json"),
        "-q")
    # the columns of two scenarios to come (nested-asid, snp-pagein), as their rows would carry them
    future = {"title": "future", "params": ["direct_map", "guests"], "rows": []}
    for seed in range(3):
        for s, k in (("wbinvd_all", 3.0), ("wbnoinvd_ran_cpus", 1.0)):
            future["rows"].append({"scenario": "nested-asid", "strategy": s, "seed": seed, "rep": seed,
                                   "flushes_per_transition": k + seed / 10, "verdict": "SAFE"})
        for dm in ("split-4k", "keep-2m"):
            for guests in (1, 2, 4):
                future["rows"].append({"scenario": "snp-pagein", "strategy": "clflushopt_pfn", "seed": seed,
                                       "rep": seed, "direct_map": dm, "guests": guests,
                                       "pagein_gbps": (8.0 if dm == "keep-2m" else 5.0) / guests ** 0.3 + seed / 50})
    (d / "future.json").write_text(json.dumps(future))
    out = d / "report.html"
    r = run("report", str(d / "sweep"), str(d / "storm.json"), str(d / "future.json"), "-o", str(out))
    assert "wrote" in r.stderr
    return d, out.read_text()


def sections(text):
    return {m.group(1): m.group(0) for m in re.finditer(r'<section class="scenario" id="s\d+">\s*<h2>([^<]+)</h2>'
                                                        r'.*?</section>', text, re.S)}


def test_report_is_self_contained_with_a_section_and_plots_per_scenario(page):
    d, text = page
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # nothing fetched: no scripts, stylesheets, images or fonts from anywhere
    assert "<script" not in text and "<link" not in text and "<img" not in text and "@import" not in text
    assert not re.search(r'(src|href)="(?!#|data:image/png;base64,)', text) and not re.search(r"url\((?!#)", text)
    # every plot's ids (markers, clip paths) unique on the page, so no plot borrows another's
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids)) > 100
    assert not re.search(r"https?://(?!www\.w3\.org/)", text)
    secs = sections(text)
    assert list(secs) == ["sev-teardown", "snp-notifier-storm", "nested-asid", "snp-pagein"]
    heads = {name: re.findall(r"<h3>([^<]+)</h3><figure><svg", s) for name, s in secs.items()}
    assert heads["sev-teardown"] == ["Cost per strategy", "Scaling with vm_memory",
                                     "Neighbours' hit rate around the teardown",
                                     "Per-CPU flush timeline of the teardown"]
    assert heads["snp-notifier-storm"] == ["Cost per strategy"]
    assert "Flushes per nested transition" in heads["nested-asid"]
    assert "Page-in throughput" in heads["snp-pagein"]
    # the verdict table holds the data's numbers: medians over the seeds
    rows = [r for r in sweep.load(str(d / "sweep")) if r["strategy"] == "clflushopt_hva" and r["vm_memory"] == "4MiB"]
    assert len(rows) == 2 and len({r["teardown_us"] for r in rows}) >= 1
    med = statistics.median(r["teardown_us"] for r in rows)
    row = re.search(r"<tr><td>4MiB</td><td><b>clflushopt_hva</b></td>.*?</tr>", secs["sev-teardown"]).group(0)
    assert f">{med:.1f}" in row and "badge safe" in row
    none = re.search(r"<tr><td>2MiB</td><td><b>none</b></td>.*?</tr>", secs["sev-teardown"]).group(0)
    assert "UNSAFE 2/2" in none
    assert "Why UNSAFE" in secs["sev-teardown"] and "writeback_" in secs["sev-teardown"]
    assert "Cheapest safe on teardown on the initiator (us): <b>wbnoinvd_ran_cpus</b>" in secs["sev-teardown"]


def test_report_errors_are_one_line(tmp_path):
    for args, pattern in [
        ([str(tmp_path / "nope")], "no such file or directory"),
        ([str(tmp_path)], "not a sweep directory (no cells/ in it)"),
        ([__file__], "not a sevsim run JSON file"),
    ]:
        r = subprocess.run(SEVSIM + ["report", *args, "-o", str(tmp_path / "r.html")], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and pattern in r.stderr, r.stderr
        assert not (tmp_path / "r.html").exists()
    r = subprocess.run(SEVSIM + ["report", str(tmp_path), "-o", str(tmp_path / "r.png")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "-o: use a file name ending in .html, .htm" in r.stderr


PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('load', () => {
  const svgs = [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect();
    const marks = [...s.querySelectorAll('path, use, text, image, rect, line, polyline, polygon')];
    const drawn = marks.filter(m => { const b = m.getBoundingClientRect(); return b.width > 0 || b.height > 0; });
    return {w: r.width, h: r.height, marks: marks.length, drawn: drawn.length,
            texts: [...s.querySelectorAll('text')].filter(t => t.getComputedTextLength() > 0).length};
  });
  const pre = document.createElement('pre');
  pre.id = 'sevsim-probe';
  pre.textContent = JSON.stringify({svgs, errors: window.__errors, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>"""


def chromium(tmp, url, *extra):
    assert CHROMIUM, "headless Chromium is needed: apt-get install chromium (.ci/run does)"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", *extra, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [l for l in r.stderr.splitlines() if ":CONSOLE" in l]
    return r.stdout, console


def probe(tmp, html_text, name="probe.html", width=1280):
    """Render a page with a probe that measures every <svg> once laid out: its size, its marks
    and how many of them have a nonzero box, its texts with a nonzero length; and page errors."""
    p = tmp / name
    p.write_text(html_text.replace("</body>", PROBE + "</body>"))
    dom, console = chromium(tmp, p.as_uri(), "--dump-dom", f"--window-size={width},1000")
    m = re.search(r'<pre id="sevsim-probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    return json.loads(html.unescape(m.group(1))), console


def test_the_probe_sees_a_broken_page(tmp_path):
    """The checks below can fail: a bad path, an empty plot and a console error are all seen."""
    bad = ('<!DOCTYPE html><html><body><svg width="200" height="200"><path d="M 0 0 L x"/></svg>'
           '<svg width="200" height="200"></svg><script>console.error("boom")</script></body></html>')
    got, console = probe(tmp_path, bad, "bad.html")
    assert [s["drawn"] for s in got["svgs"]] == [0, 0]
    assert any("attribute d: Expected number" in l for l in console) and any("boom" in l for l in console)


def test_report_renders_in_headless_chromium_every_plot_drawn_no_console_error(page, tmp_path):
    d, text = page
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.html").write_text(text)
    n_svg = text.count("<svg")
    got, console = probe(tmp_path, text)
    assert console == [] and got["errors"] == []
    assert len(got["svgs"]) == n_svg >= 7
    for i, s in enumerate(got["svgs"]):
        # laid out at a readable size, with marks drawn and labelled axes
        assert s["w"] > 300 and s["h"] > 120, (i, s)
        assert s["drawn"] >= 20 and s["drawn"] >= 0.6 * s["marks"] and s["texts"] >= 6, (i, s)
    # the page itself, as a person sees it (not the probe's copy): no console message, a screenshot
    height = min(max(int(got["height"]) + 40, 1000), 16000)
    shot = ARTIFACTS / "report.png"
    if shot.exists():
        shot.unlink()
    _, console = chromium(tmp_path, (ARTIFACTS / "report.html").as_uri(), f"--screenshot={shot}",
                          f"--window-size=1280,{height}")
    assert console == []
    from PIL import Image  # matplotlib's dependency

    im = Image.open(shot)
    assert im.size == (1280, height)
    colours = im.convert("RGB").resize((320, height // 4)).getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # plots and tables, not a blank page
