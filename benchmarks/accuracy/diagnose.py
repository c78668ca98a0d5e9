#!/usr/bin/python3
"""Where do a result's errors sit?  diagnose.py RESULT.h5 TRUTH.h5 [--json]

Matches found and true columns one-to-one (greedy by distance, radius a/4, like tmdflow score) and sorts
the unmatched found columns (false positives) by where they are: 'duplicate' (within 0.5 bond of a found
column that is matched), 'vacancy' (within a/4 of a true vacancy), 'hollow' (0.8-1.2 bond from the
nearest true column: the empty centre of a hexagon), 'edge' (within 2 bonds of the image edge), 'other';
and the missed true columns (false negatives) by sublattice and species. Also reports the lattice the
run found (/lattice/a1, a2, pixel_size) against the truth's. numpy + h5py (Debian)."""
import json, math, sys
import numpy as np
import h5py


def greedy(tx, ty, fx, fy, r):
    pairs = []
    for i in range(len(tx)):
        d2 = (fx - tx[i]) ** 2 + (fy - ty[i]) ** 2
        js = np.where(d2 < r * r)[0]
        for j in js:
            pairs.append((d2[j], i, j))
    pairs.sort()
    mt = np.full(len(tx), -1)
    mf = np.full(len(fx), -1)
    for d, i, j in pairs:
        if mt[i] < 0 and mf[j] < 0:
            mt[i], mf[j] = j, i
    return mt, mf


def main():
    res, tru = sys.argv[1], sys.argv[2]
    t, f = h5py.File(tru, "r"), h5py.File(res, "r")
    px = float(t.attrs["pixel_size"])
    a = float(t.attrs["lattice_a"])
    bond = a / math.sqrt(3) / px
    r = a / 4 / px
    H, W = (t["image"].shape[-2:] if "image" in t else t["truth/classes"].shape[-2:])
    tx, ty = t["atoms/x"][:], t["atoms/y"][:]
    tsub, tsp = t["atoms/sublattice"][:], t["atoms/species"][:]
    fx, fy = f["atoms/x"][:], f["atoms/y"][:]
    mt, mf = greedy(tx, ty, fx, fy, r)
    border = a / 2 / px
    inside_t = (tx >= border) & (ty >= border) & (tx <= W - 1 - border) & (ty <= H - 1 - border)
    inside_f = (fx >= border) & (fy >= border) & (fx <= W - 1 - border) & (fy <= H - 1 - border)
    vx, vy = (t["defects/x"][:], t["defects/y"][:]) if "defects/x" in t else (np.zeros(0), np.zeros(0))
    vt = t["defects/type"][:] if "defects/type" in t else np.zeros(0, np.int8)
    cats = {"duplicate": 0, "vacancy": 0, "hollow": 0, "edge": 0, "other": 0}
    at_vac = {"V_M": 0, "V_X": 0, "V_X2": 0}
    matched_f = mf >= 0
    for j in np.where((mf < 0) & inside_f)[0]:
        dm = np.sqrt((fx[matched_f] - fx[j]) ** 2 + (fy[matched_f] - fy[j]) ** 2)
        dt = np.sqrt((tx - fx[j]) ** 2 + (ty - fy[j]) ** 2).min() if len(tx) else 1e9
        dv = np.sqrt((vx - fx[j]) ** 2 + (vy - fy[j]) ** 2).min() if len(vx) else 1e9
        if len(dm) and dm.min() < 0.5 * bond:
            cats["duplicate"] += 1
        elif dv < r:
            cats["vacancy"] += 1
            k = int(vt[np.argmin((vx - fx[j]) ** 2 + (vy - fy[j]) ** 2)])
            at_vac[{1: "V_M", 2: "V_X", 3: "V_X2"}.get(k, "V_X")] += 1
        elif 0.8 * bond <= dt <= 1.2 * bond:
            cats["hollow"] += 1
        elif min(fx[j], fy[j], W - 1 - fx[j], H - 1 - fy[j]) < 2 * bond:
            cats["edge"] += 1
        else:
            cats["other"] += 1
    miss = (mt < 0) & inside_t
    fn = {"metal": int((miss & (tsub == 1)).sum()), "chalcogen": int((miss & (tsub == 2)).sum()),
          "by_species": {str(k): int((miss & (tsp == k)).sum()) for k in range(8) if (miss & (tsp == k)).any()}}
    out = {"result": res, "truth": tru, "fp": int(((mf < 0) & inside_f).sum()), "fp_where": cats, "fp_at_vacancy_type": at_vac, "fn": int(miss.sum()),
           "fn_where": fn, "pixel_size_true": px, "pixel_size_result": float(f.attrs.get("pixel_size", float("nan")))}
    if "lattice/a1" in f:
        a1, a2 = f["lattice/a1"][0], f["lattice/a2"][0]
        out["lattice_found_px"] = [round(float(np.hypot(*a1)), 3), round(float(np.hypot(*a2)), 3)]
        out["lattice_true_px"] = round(a / px, 3)
    print(json.dumps(out) if "--json" in sys.argv else json.dumps(out, indent=1))


main()
