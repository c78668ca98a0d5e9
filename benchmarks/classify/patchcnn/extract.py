"""extract.py OUT.npz SIM.h5...: B-site patches at the true column positions of tmdflow
simulations (and the true V_X2 sites, class 'empty'), with their labels and seeds."""
import sys
import h5py
import numpy as np
from common import patches, SPECIES_TO_CLASS, STEP, G

out, paths = sys.argv[1], sys.argv[2:]
acc = {k: [] for k in 'PCLS'}
for path in paths:
    f = h5py.File(path, 'r')
    img = f['image'][...].astype(np.float64)
    img = img[0] if img.ndim == 3 else img
    px = float(f.attrs['pixel_size'])
    x, y, sub, sp = f['atoms/x'][:], f['atoms/y'][:], f['atoms/sublattice'][:], f['atoms/species'][:]
    dt, dx, dy = f['defects/type'][:], f['defects/x'][:], f['defects/y'][:]
    A, B, V2 = sub == 1, sub == 2, dt == 3
    bx, by = np.concatenate([x[B], dx[V2]]), np.concatenate([y[B], dy[V2]])
    lab = np.array([SPECIES_TO_CLASS[int(s)] for s in sp[B]] + [5] * int(V2.sum()), dtype=np.int64)
    P, ctx = patches(img, px, x[A], y[A], bx, by)
    m = (G // 2 + 1) * STEP / px  # whole patch inside the frame
    keep = (bx > m) & (bx < img.shape[1] - m) & (by > m) & (by < img.shape[0] - m)
    acc['P'].append(P[keep]); acc['C'].append(np.repeat(ctx[None], keep.sum(), 0)); acc['L'].append(lab[keep])
    acc['S'].append(np.full(keep.sum(), int(path.split('_')[-1].split('.')[0])))
np.savez(out, **{k: np.concatenate(v) for k, v in acc.items()})
L = np.concatenate(acc['L'])
print(out, len(L), 'sites; per class S2 SSe Se2 S Se empty:', np.bincount(L, minlength=6))
