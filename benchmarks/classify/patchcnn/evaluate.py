"""evaluate.py MODEL.pt TEST.npz...: the network alone at the true positions (extract.py's test
sets): chalcogen accuracy on the true columns, V_X F1 (called S or Se vs true S or Se), V_X2 F1."""
import sys
import numpy as np
from common import load, probabilities

model = load(sys.argv[1])
f1 = lambda p, t: 2 * (p & t).sum() / max(p.sum() + t.sum(), 1)
for path in sys.argv[2:]:
    d = np.load(path)
    l = d['L']
    pr = probabilities(model, d['P'], d['C']).argmax(1)
    col = l != 5
    print(f'{path}: chalcogen {(pr[col] == l[col]).mean():.4f}  V_X F1 {f1(np.isin(pr, [3, 4]), np.isin(l, [3, 4])):.3f}'
          f'  V_X2 F1 {f1(pr == 5, l == 5):.3f}  ({len(l)} sites)')
