#!/usr/bin/env python3
"""Summarise benchmarks/classify/accuracy.sh: ablation table, confusion matrices, per-image
conditions, pixel-size errors (Markdown on stdout). Standard library only."""
import csv, json, os, sys

out = sys.argv[1]
cond = {}
with open(os.path.join(out, "conditions.csv")) as f:
    for r in csv.reader(f):
        cond[r[0]] = dict(zip(["px", "dose", "n", "x", "y", "contam", "probe", "jitter"], map(float, r[1:])))
pix = {}
if os.path.exists(os.path.join(out, "pixel.csv")):
    with open(os.path.join(out, "pixel.csv")) as f:
        for r in csv.reader(f):
            pix[(r[0], r[1])] = (float(r[2]), float(r[3]))
modes = ["auto", "off", "given"]
names = {"auto": "constraint on, pixel size measured", "off": "constraint off, pixel size measured",
         "given": "constraint on, pixel size given"}
S = {}
for fn in sorted(os.listdir(out)):
    if fn.startswith("score_") and fn.endswith(".json"):
        _, seed, mode = fn[:-5].split("_")
        with open(os.path.join(out, fn)) as f:
            S[(seed, mode)] = json.load(f)
seeds = sorted({k[0] for k in S})

def f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")

print("| mode | images | species acc | metal | chalcogen | V_M F1 | V_X F1 | V_X2 F1 | detection F1 |")
print("|---|---|---|---|---|---|---|---|---|")
pooled = {}
for m in modes:
    ks = [s for s in seeds if (s, m) in S]
    if not ks:
        continue
    C = [[0] * 8 for _ in range(8)]
    V = {t: [0, 0, 0] for t in ("V_M", "V_X", "V_X2")}
    D = [0, 0, 0]
    for s in ks:
        j = S[(s, m)]
        for a in range(8):
            for b in range(8):
                C[a][b] += j["species"]["confusion"][a][b]
        for t in V:
            V[t][0] += j["vacancies"][t]["tp"]; V[t][1] += j["vacancies"][t]["fp"]; V[t][2] += j["vacancies"][t]["fn"]
        D[0] += j["detection"]["tp"]; D[1] += j["detection"]["fp"]; D[2] += j["detection"]["fn"]
    pooled[m] = C
    tot = sum(map(sum, C)); ok = sum(C[i][i] for i in range(8))
    met = [1, 2]; cha = [3, 4, 5, 6, 7]
    mt = sum(sum(C[i]) for i in met); mo = sum(C[i][i] for i in met)
    ct = sum(sum(C[i]) for i in cha); co = sum(C[i][i] for i in cha)
    print(f"| {names[m]} | {len(ks)} | {ok / tot:.4f} | {mo / mt:.4f} | {co / ct:.4f} | "
          f"{f1(*V['V_M']):.3f} | {f1(*V['V_X']):.3f} | {f1(*V['V_X2']):.3f} | {f1(*D):.4f} |")
labels = ["?", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"]
for m in ("auto", "off"):
    if m not in pooled:
        continue
    print(f"\nConfusion, {names[m]} (rows: truth, columns: found):\n")
    print("| truth \\ found | " + " | ".join(labels) + " |")
    print("|---" * 9 + "|")
    for i in range(1, 8):
        print(f"| {labels[i]} | " + " | ".join(str(v) for v in pooled[m][i]) + " |")
print("\nPer image (simulator conditions; species accuracy per mode; pixel-size error of the measured mode):\n")
print("| seed | px A | dose | n | x(W) | y(Se) | contam. | probe A | jitter px | acc on | acc off | acc px given | V_M/V_X/V_X2 F1 (on) | px err auto |")
print("|---" * 15 + "|")
errs = []
for s in seeds:
    c = cond.get(s, {})
    acc = {m: (S[(s, m)]["species"]["accuracy"] if (s, m) in S else float("nan")) for m in modes}
    v = S.get((s, "auto"), {}).get("vacancies", {})
    vf = "/".join(f"{v[t]['f1']:.2f}" if v and v[t]['f1'] is not None else "-" for t in ("V_M", "V_X", "V_X2")) if v else "-"
    e = ""
    if (s, "auto") in pix:
        t, r = pix[(s, "auto")]
        errs.append(abs(r / t - 1)); e = f"{100 * (r / t - 1):+.2f}%"
    print(f"| {s} | {c.get('px', 0):.3f} | {c.get('dose', 0):.0f} | {c.get('n', 0):.2f} | {c.get('x', 0):.2f} | "
          f"{c.get('y', 0):.2f} | {c.get('contam', 0):.2f} | {c.get('probe', 0):.2f} | {c.get('jitter', 0):.2f} | "
          f"{acc['auto']:.4f} | {acc['off']:.4f} | {acc['given']:.4f} | {vf} | {e} |")
if errs:
    print(f"\nPixel size measured (no --pixel-size): mean |error| {100 * sum(errs) / len(errs):.2f}%, "
          f"worst {100 * max(errs):.2f}% over {len(errs)} images.")
