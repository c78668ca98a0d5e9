#!/usr/bin/python3
"""Label-free checks of tmdflow on a real image of a known pure material, and degraded copies of it.

  real.py degrade IN.tif OUTDIR PX          -> OUTDIR/<variant>.tif + OUTDIR/variants.tsv (name, pixel size, scale)
  real.py metrics RESULT.h5 PX METAL CHALC [REF.h5 SCALE]  -> one JSON line on stdout

Variants: orig; u8 (8-bit quantisation of the 0.5..99.8 percentile range); px0.09 and px0.13
(bicubic rescale to that pixel size); noise (Gaussian noise, sigma = 0.5 x the image's robust std);
negoffset (float, background driven negative: I - 1.5 * p99.9); bgsub (a 8 A Gaussian blur subtracted,
as many users do before sharing images); gradient (a strong linear ramp of 2x the robust range).

Metrics (METAL, CHALC = species codes expected on the metal / chalcogen sublattice, e.g. MoS2: 1 and 3,6):
  n_atoms, atoms per nm^2 and that over the ideal 2 columns per cell (a = 3.16 A MoS2 / 3.28 WSe2),
  metal_frac_expected (share of A-site atoms called METAL), chalc_frac_expected (B-site atoms called
  one of CHALC), unknown sublattice share, defects per type, duplicates (pairs closer than 0.4 bond),
  metal_3nb (share of metal atoms with 3 chalcogen neighbours at 0.75-1.25 bond: a missed dim
  chalcogen column lowers it), and with REF: share of REF's atoms found again (within a/4 after
  scaling by SCALE) and share of those with the same species.
Standard library + numpy + h5py + tifffile + PIL (Debian packages).
"""
import json, math, os, sys
import numpy as np


def robust(a):
    lo, hi = np.percentile(a, [0.5, 99.8])
    return lo, hi


def degrade(src, outdir, px):
    import tifffile
    from PIL import Image
    os.makedirs(outdir, exist_ok=True)
    a = tifffile.imread(src).astype(np.float64)
    lo, hi = robust(a)
    rows = []

    def save(name, img, p, scale):
        tifffile.imwrite(os.path.join(outdir, name + ".tif"), img)
        rows.append((name, p, scale))

    save("orig", a.astype(np.float32), px, 1.0)
    save("u8", np.clip(np.round((a - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8), px, 1.0)
    for target in (0.09, 0.13):
        s = px / target
        h, w = int(round(a.shape[0] * s)), int(round(a.shape[1] * s))
        im = Image.fromarray(a.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)
        save(f"px{target:.2f}", np.asarray(im, dtype=np.float32), target, w / a.shape[1])
    rng = np.random.default_rng(7)
    sd = (hi - lo) / 4
    save("noise", (a + 0.5 * sd * rng.standard_normal(a.shape)).astype(np.float32), px, 1.0)
    save("negoffset", (a - 1.5 * np.percentile(a, 99.9)).astype(np.float32), px, 1.0)
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.rfftfreq(a.shape[1])[None, :]
    sg = 8.0 / px
    blur = np.fft.irfft2(np.fft.rfft2(a) * np.exp(-2 * math.pi ** 2 * sg ** 2 * (kx ** 2 + ky ** 2)), s=a.shape)
    save("bgsub", (a - blur).astype(np.float32), px, 1.0)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    save("gradient", (a + 2 * (hi - lo) * (0.6 * xx + 0.4 * yy) / a.shape[1]).astype(np.float32), px, 1.0)
    with open(os.path.join(outdir, "variants.tsv"), "w") as f:
        for r in rows:
            f.write("%s\t%.5f\t%.6f\n" % r)


def pairs_within(x, y, r):
    """Index pairs (i<j) closer than r (grid hashing)."""
    cell = {}
    out = []
    for i, (a, b) in enumerate(zip(x, y)):
        cell.setdefault((int(a // r), int(b // r)), []).append(i)
    for (cx, cy), idx in cell.items():
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                other = cell.get((cx + dx, cy + dy))
                if not other:
                    continue
                for i in idx:
                    for j in other:
                        if j > i and (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2 < r * r:
                            out.append((i, j))
    return out


def metrics(res, px, metal, chalc, ref=None, scale=1.0):
    import h5py
    f = h5py.File(res, "r")
    x, y = f["atoms/x"][:], f["atoms/y"][:]
    sub, sp = f["atoms/sublattice"][:], f["atoms/species"][:]
    dt = f["defects/type"][:] if "defects/type" in f else np.zeros(0, np.int8)
    found_px = float(f.attrs["pixel_size"])
    H, W = None, None
    cfg = f.attrs.get("config", b"")
    f.close()
    se_rich = 5 in chalc or 7 in chalc
    a = 3.28 if se_rich else 3.16
    bond = a / math.sqrt(3) / px
    n = len(x)
    metal_set, chalc_set = {metal}, set(chalc)
    A = sub == 1
    B = sub == 2
    out = dict(result=os.path.basename(res), pixel_size_given=px, pixel_size_result=found_px, n_atoms=int(n))
    span_x, span_y = (x.max() - x.min()) * px / 10, (y.max() - y.min()) * px / 10
    dens = n / (span_x * span_y) if n else 0
    ideal = 2 / (a * a * math.sqrt(3) / 2) * 100
    out["atoms_per_nm2"] = round(dens, 2)
    out["density_over_ideal"] = round(dens / ideal, 3)
    out["n_metal"], out["n_chalc"] = int(A.sum()), int(B.sum())
    out["unknown_sublattice_frac"] = round(float((sub == 0).mean()) if n else 0, 4)
    out["metal_frac_expected"] = round(float(np.isin(sp[A], list(metal_set)).mean()) if A.any() else float("nan"), 4)
    out["chalc_frac_expected"] = round(float(np.isin(sp[B], list(chalc_set)).mean()) if B.any() else float("nan"), 4)
    out["species_counts"] = {str(k): int((sp == k).sum()) for k in range(8) if (sp == k).any()}
    out["V_M"], out["V_X"], out["V_X2"] = (int((dt == t).sum()) for t in (1, 2, 3))
    out["duplicates"] = len(pairs_within(x, y, 0.4 * bond))
    # neighbour completeness of metals (inner atoms only: 1.5 bond away from the hull of the found atoms)
    nb = pairs_within(x, y, 1.25 * bond)
    cnt = np.zeros(n, int)
    for i, j in nb:
        d = math.hypot(x[i] - x[j], y[i] - y[j])
        if d >= 0.75 * bond and sub[i] != sub[j] and sub[i] > 0 and sub[j] > 0:
            cnt[i] += 1
            cnt[j] += 1
    inner = (x > x.min() + 2 * bond) & (x < x.max() - 2 * bond) & (y > y.min() + 2 * bond) & (y < y.max() - 2 * bond)
    mi = A & inner
    out["metal_3nb"] = round(float((cnt[mi] == 3).mean()) if mi.any() else float("nan"), 4)
    ci = B & inner
    out["chalc_3nb"] = round(float((cnt[ci] == 3).mean()) if ci.any() else float("nan"), 4)
    if ref:
        g = h5py.File(ref, "r")
        rx, ry, rsp = g["atoms/x"][:] * scale, g["atoms/y"][:] * scale, g["atoms/species"][:]
        g.close()
        r = a / 4 / px
        # nearest found atom for each reference atom (grid)
        cell = {}
        for i, (u, v) in enumerate(zip(x, y)):
            cell.setdefault((int(u // r), int(v // r)), []).append(i)
        hit = same = tot = 0
        Wm, Hm = x.max(), y.max()
        for u, v, s in zip(rx, ry, rsp):
            if u < bond or v < bond or u > Wm - bond or v > Hm - bond:
                continue
            tot += 1
            best, bd = -1, r * r
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for j in cell.get((int(u // r) + dx, int(v // r) + dy), []):
                        d = (x[j] - u) ** 2 + (y[j] - v) ** 2
                        if d < bd:
                            best, bd = j, d
            if best >= 0:
                hit += 1
                same += int(sp[best] == s)
        out["ref_found_again"] = round(hit / tot, 4) if tot else None
        out["ref_same_species"] = round(same / hit, 4) if hit else None
    return out


if __name__ == "__main__":
    if sys.argv[1] == "degrade":
        degrade(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "metrics":
        res, px, metal = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        chalc = [int(c) for c in sys.argv[5].split(",")]
        ref = sys.argv[6] if len(sys.argv) > 6 else None
        scale = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0
        print(json.dumps(metrics(res, px, metal, chalc, ref, scale)))
    else:
        sys.exit(__doc__)
