"""combine.py MODEL.pt W1[,W2...] SET...: main's per-column posteriors (the debug build's
TMD_CLASSIFY_DUMP: detected columns, P over species) combined with the network's opinion taken
at the same detected positions, P_k ~ P_main_k * (P_cnn_k / prior_k)^w on B columns, then main's
decision rule (empty above 0.85; a column called S / Se is empty where P(empty) > P(S) + P(Se)).
Scored on the detected B columns more than one bond inside the frame, each matched to its true
column within 0.45 bond (else to a true V_X2 site): chalcogen accuracy of the true columns and
lone-column F1 (called S / Se against true S / Se). w = 0 is main's own decision.
A SET is NAME:IMAGE_GLOB:TRUTH_SUFFIX:DUMP_DIR, e.g. 'block 1:/tmp/s9/m1/sim_*.h5::/tmp/d' (truth
in the image file) or 'extsim:/tmp/ext/ext_*.tif:.truth.h5:/tmp/cnn/ext'; the dump of IMAGE is
DUMP_DIR/<seed>.txt for sim_<seed>.h5, else DUMP_DIR/<image name without extension>.txt.
PER_IMAGE=1 prints every image."""
import glob
import os
import sys
import h5py
import numpy as np
import tifffile
from scipy.spatial import cKDTree
from common import load, probabilities, patches, SPECIES_TO_CLASS

model = load(sys.argv[1])
prior = model[1]['prior']
ws = [float(w) for w in sys.argv[2].split(',')]
f1 = lambda tp, a, b: 2 * tp / max(a + b, 1)
total = {w: np.zeros(5) for w in ws}
for spec in sys.argv[3:]:
    name, pattern, truth_suffix, dumps = spec.split(':')
    sums = {w: np.zeros(5) for w in ws}
    for ipath in sorted(glob.glob(pattern)):
        base = os.path.basename(ipath).rsplit('.', 1)[0]
        dump = os.path.join(dumps, (base.split('_')[-1] if base.startswith('sim_') else base) + '.txt')
        if not os.path.exists(dump):
            continue
        D = np.loadtxt(dump)
        f = h5py.File(ipath + truth_suffix, 'r')
        px = float(f.attrs['pixel_size'])
        img = (tifffile.imread(ipath) if ipath.endswith('.tif') else f['image'][...]).astype(np.float64)
        img = img[0] if img.ndim == 3 else img
        H, W = img.shape
        tx, ty, tsp, tsub = f['atoms/x'][:], f['atoms/y'][:], f['atoms/species'][:], f['atoms/sublattice'][:]
        dt, dx, dy = f['defects/type'][:], f['defects/x'][:], f['defects/y'][:]
        bond = float(np.median(cKDTree(np.c_[tx[tsub == 1], ty[tsub == 1]]).query(np.c_[tx[tsub == 2], ty[tsub == 2]])[0]))
        x, y, sub, Pm = D[:, 0], D[:, 1], D[:, 2].astype(int), D[:, 12:20]
        A, B = sub == 1, sub == 2
        bx, by = x[B], y[B]
        P, ctx = patches(img, px, x[A], y[A], bx, by)
        lr = probabilities(model, P, np.repeat(ctx[None], len(bx), 0)) / prior[None, :]
        d, i = cKDTree(np.c_[tx, ty]).query(np.c_[bx, by], distance_upper_bound=0.45 * bond)
        lab = np.where(d < np.inf, tsp[np.minimum(i, len(tsp) - 1)], -1)
        if (dt == 3).any():
            dv = cKDTree(np.c_[dx[dt == 3], dy[dt == 3]]).query(np.c_[bx, by], distance_upper_bound=0.45 * bond)[0]
            lab = np.where((lab == -1) & (dv < np.inf), 0, lab)
        inner = (bx > bond) & (bx < W - bond) & (by > bond) & (by < H - bond)
        for w in ws:
            Q = Pm[B].copy()
            for sp, k in SPECIES_TO_CLASS.items():
                Q[:, sp] *= lr[:, k] ** w
            Q[:, 1:3] = 0
            Q /= Q.sum(1, keepdims=True)
            best = 3 + Q[:, 3:8].argmax(1)
            call = np.where((Q[:, 0] > 0.85) | (np.isin(best, [6, 7]) & (Q[:, 0] > Q[:, 6] + Q[:, 7])), 0, best)
            m = inner & (lab >= 3)
            tl, cl = np.isin(lab[inner], [6, 7]), np.isin(call[inner], [6, 7])
            r = np.array([(call[m] == lab[m]).sum(), m.sum(), (tl & cl).sum(), tl.sum(), cl.sum()])
            sums[w] += r
            if os.environ.get('PER_IMAGE'):
                print(f'  {base:28s} w {w}: chalcogen {r[0] / max(r[1], 1):.4f}  lone true {r[3]} called {r[4]} right {r[2]}')
    for w in ws:
        r = sums[w]
        total[w] += r
        print(f'{name} w {w}: chalcogen {r[0] / r[1]:.4f}  lone F1 {f1(r[2], r[3], r[4]):.3f} (true {int(r[3])} called {int(r[4])} right {int(r[2])})', flush=True)
for w in ws:
    r = total[w]
    print(f'ALL w {w}: chalcogen {r[0] / r[1]:.4f}  lone F1 {f1(r[2], r[3], r[4]):.3f}')
