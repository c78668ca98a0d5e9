#!/usr/bin/env python3
"""bound_summary.py CSV [SCOREDIR]: per image and pooled (per block = seed // 100, and all) the
bounds of bound.c beside the pipeline's figures from SCOREDIR/score_<seed>_given.json if present.
K = contamination known (its realisation is part of lambda): the optimistic bound.
C = contamination as Gaussian noise of the scatterer process's covariance, best linear estimate.
H = the stage's held measure's geometry (the column's profile and a constant free over a disc of
    0.6 bond, neighbours held) with everything else exact and contamination known.
B = contamination as noise, but the column measured with its own Poisson-weighted profile only (BLUE),
    roughly what a per-column contrast that does not model contamination sees.
F = K with the lone (V_X) or empty (V_X2) prior scaled for the best F1 of the image.
R = K's estimator and rule applied to the file's own pixels (realised, one noise draw): checks
    the bound's noise model; z = (amplitude - true) / CRB sd over the sites should be N(0, 1).
Pooling sums the expected counts (chalcogen ok / n, V_X and V_X2 tp / fp / fn) like tools/pool.py."""
import csv, json, os, sys
rows = list(csv.DictReader(open(sys.argv[1])))
sd = sys.argv[2] if len(sys.argv) > 2 else "/tmp/s9/base"
def f1(tp, fp, fn): return 2*tp/(2*tp+fp+fn) if tp+fp+fn > 0 else float("nan")
def main_fig(seed):
    fn = os.path.join(sd, f"score_{seed}_given.json")
    if not os.path.exists(fn): return None
    j = json.load(open(fn)); C = j["species"]["confusion"]
    v = j["vacancies"]
    return dict(ok=sum(C[i][i] for i in range(3, 8)), n=sum(sum(C[i]) for i in range(3, 8)),
                vx=[v["V_X"][k] for k in ("tp","fp","fn")], vx2=[v["V_X2"][k] for k in ("tp","fp","fn")])
def fmt(x, d=3): return " nan " if x != x else f"{x:.{d}f}"
print("per image: K contamination known, C as noise (best linear), H held-fit geometry, B as noise (column profile only), F best-F1 prior scale; main = the pipeline (pixel size given)")
print(" seed  dose  px    cont  cover cj    sdS2K sdS2C sdS2H | chal K C      H      B      main   | V_X K C     H     B     F     main  | V_X2 K C    H     B     F     main  | lone empty  below target (K)")
V = ("", "_c", "_h", "_b")
agg = {}
for r in rows:
    s = r["seed"]; g = lambda k: float(r[k])
    m = main_fig(s)
    mc = m["ok"]/m["n"] if m and m["n"] else float("nan")
    mvx = f1(*m["vx"]) if m else float("nan"); mvx2 = f1(*m["vx2"]) if m else float("nan")
    flag = ""
    if g("chal") < 0.95: flag += " chal"
    if g("vx_f1_k") < 0.9: flag += " V_X"
    if g("vx2_f1_k") < 0.8: flag += " V_X2"
    print(f" {s} {g('dose'):5.0f} {g('pixel_size'):.3f} {g('contamination'):.3f} {g('contamination_cover'):.2f} {g('column_jitter'):.3f} {g('s2_sd_total'):.3f} {g('s2_sd_cont'):.3f} {g('s2_sd_held'):.3f} |"
          f" {' '.join(fmt(g('chal'+v),4) for v in V)} {fmt(mc,4)} | {' '.join(fmt(g('vx_f1'+v)) for v in V)} {fmt(g('vx_f1_k'))} {fmt(mvx)} |"
          f" {' '.join(fmt(g('vx2_f1'+v)) for v in V)} {fmt(g('vx2_f1_k'))} {fmt(mvx2)} | {int(g('n_S'))+int(g('n_Se')):4d} {int(g('n_empty')):4d} {flag}")
    for b in (s[:2], "all"):
        a = agg.setdefault(b, {"nimg": 0, "nmain": 0, "mok": 0, "mn": 0, "mvx": [0]*3, "mvx2": [0]*3})
        a["nimg"] += 1
        for v in V:
            a["ok"+v] = a.get("ok"+v, 0) + g("chal_ok"+v); a["n"+v] = a.get("n"+v, 0) + g("chal_n"+v)
        for v in V + ("_k",):
            for key in ("vx", "vx2"):
                t = a.setdefault(key+v, [0.0]*3)
                for i, c in enumerate(("tp","fp","fn")): t[i] += g(f"{key}_{c}{v}")
        for key in ("vx", "vx2"):
            t = a.setdefault(key+"_r", [0.0]*3)
            for i, c in enumerate(("tp","fp","fn")): t[i] += g(f"{key}_{c}_r")
        a["okr"] = a.get("okr", 0) + g("chal_ok_r"); a["nr"] = a.get("nr", 0) + g("chal_n_r")
        nb = g("n_b"); a["zn"] = a.get("zn", 0) + nb; a["z1"] = a.get("z1", 0) + nb*g("z_mean"); a["z2"] = a.get("z2", 0) + nb*g("z_var")
        if m:
            a["nmain"] += 1; a["mok"] += m["ok"]; a["mn"] += m["n"]
            for i in range(3): a["mvx"][i] += m["vx"][i]; a["mvx2"][i] += m["vx2"][i]
print("\npooled (expected counts summed)")
print("  block  chalcogen K / C / H / B / main          V_X K / C / H / B / F / main          V_X2 K / C / H / B / F / main   (images, with main)")
for b in sorted(k for k in agg if k != "all") + ["all"]:
    a = agg[b]
    mc = a["mok"]/a["mn"] if a["mn"] else float("nan")
    print(f"  {b:>4}   {' / '.join(fmt(a['ok'+v]/a['n'+v],4) for v in V)} / {fmt(mc,4)}   "
          f"{' / '.join(fmt(f1(*a['vx'+v])) for v in V + ('_k',))} / {fmt(f1(*a['mvx']))}   "
          f"{' / '.join(fmt(f1(*a['vx2'+v])) for v in V + ('_k',))} / {fmt(f1(*a['mvx2']))}   ({a['nimg']}, {a['nmain']})")
print("\nrealised check (R: the bound's estimator on the files' pixels, one draw) and z = (estimate - truth) / CRB sd")
print("  block  chalcogen K / R    V_X K / R    V_X2 K / R    z mean, z^2 mean (1 if the CRB is right)")
for b in sorted(k for k in agg if k != "all") + ["all"]:
    a = agg[b]
    print(f"  {b:>4}   {a['ok']/a['n']:.4f} / {a['okr']/a['nr']:.4f}   {fmt(f1(*a['vx']))} / {fmt(f1(*a['vx_r']))}   {fmt(f1(*a['vx2']))} / {fmt(f1(*a['vx2_r']))}   {a['z1']/a['zn']:+.3f}, {a['z2']/a['zn']:.3f}")
