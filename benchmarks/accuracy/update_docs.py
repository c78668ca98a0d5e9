#!/usr/bin/python3
"""Copy the generated tables into the docs between markers (so docs stay current after a re-run).

  update_docs.py        (from the repository root or anywhere)

Replaces the text between <!-- BEGIN gen:NAME --> and <!-- END gen:NAME --> in docs/validation.md and
docs/accuracy.md (only the markers that exist there) with:
  sim-worst    benchmarks/accuracy/results.md, section "Worst case per axis"
  sim-given    benchmarks/accuracy/results.md, the per-condition table with --pixel-size
  sim-auto     benchmarks/accuracy/results.md, the per-condition table without it
  ext-worst    benchmarks/external/results.md, "Worst case per axis"
  ext-given    benchmarks/external/results.md, table with --pixel-size
  ext-auto     benchmarks/external/results.md, table without
  real         benchmarks/accuracy/real.md (table)
  models       the model stamp line of benchmarks/accuracy/results.md
  sim-det      detection per condition from benchmarks/accuracy/results.csv (given and auto)
"""
import csv, os, re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def sections(path):
    txt = open(path).read()
    out = {"_models": next((l for l in txt.splitlines() if l.startswith("Models")), "")}
    parts = re.split(r"^### ", txt, flags=re.M)
    for p in parts[1:]:
        title, _, body = p.partition("\n")
        out[title.strip()] = body.strip()
    return out, txt


def det_table():
    rows = list(csv.DictReader(open(os.path.join(ROOT, "benchmarks/accuracy/results.csv"))))
    by = {}
    for r in rows:
        by.setdefault(r["condition"], {})[r["mode"]] = r
    f = lambda v: "–" if v in ("", None) else ("%.3f" % float(v))
    out = ["| condition | axis | F1 given | precision | recall | false columns | missed | F1 auto |",
           "|---|---|---|---|---|---|---|---|"]
    worst = None
    for c, m in by.items():
        g, a = m.get("given", {}), m.get("auto", {})
        fg = float(g["f1"]) if g.get("f1") else 0.0
        mark = " ✗" if fg < 0.98 else ""
        out.append("| %s | %s | %s%s | %s | %s | %s | %s | %s |" % (c, g.get("axis", a.get("axis", "")), f(g.get("f1")), mark,
                   f(g.get("precision")), f(g.get("recall")), g.get("fp", "–"), g.get("fn", "–"), f(a.get("f1"))))
        if g and (worst is None or fg < worst[1]):
            worst = (c, fg)
    if worst:
        out.append("")
        out.append("Worst with the pixel size given: **%s, F1 %.3f** (target 0.98)." % worst)
    return "\n".join(out)


def main():
    sim, _ = sections(os.path.join(ROOT, "benchmarks/accuracy/results.md"))
    ext, _ = sections(os.path.join(ROOT, "benchmarks/external/results.md"))
    real_txt = open(os.path.join(ROOT, "benchmarks/accuracy/real.md")).read()
    real = "\n".join(l for l in real_txt.splitlines() if not l.startswith("<!--"))
    given = "With --pixel-size (the true pixel size given)"
    auto = "Without --pixel-size (pixel size measured; found value and error in brackets)"
    gen = {"sim-worst": sim["Worst case per axis"], "sim-given": sim[given], "sim-auto": sim[auto],
           "ext-worst": ext["Worst case per axis"], "ext-given": ext[given], "ext-auto": ext[auto],
           "real": real.strip(), "sim-det": det_table(), "models": "Simulated set: " + sim["_models"] + "; external set: " + ext["_models"]}
    for doc in ("docs/validation.md", "docs/accuracy.md"):
        p = os.path.join(ROOT, doc)
        if not os.path.exists(p):
            continue
        txt = open(p).read()
        for k, v in gen.items():
            txt = re.sub(r"(<!-- BEGIN gen:%s -->\n)(?:.*?\n)?(<!-- END gen:%s -->)" % (k, k),
                         lambda m: m.group(1) + v + "\n" + m.group(2), txt, flags=re.S)
        open(p, "w").write(txt)
        print("updated", doc)


main()
