import sys, math
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from m import match
from truth import truth
tag = sys.argv[1]; blocks = sys.argv[2].split()
bins = [0.1, 0.3, 0.5, 0.7, 0.85, 0.95, 1.01]
for b in blocks:
    H = {}
    for s in range(7001 + 100*(int(b)-1), 7013 + 100*(int(b)-1)):
        t, cols = match(s, tag)
        bond = math.hypot(*t["a1"]) / math.sqrt(3); r2 = (0.45*bond)**2
        for c in cols:
            if c["sub"] != 2 or c["P"][0] < 0.1: continue
            if c["ts"] == 0:
                lab = "none"
                for dx, dy, dt in zip(t["dx"], t["dy"], t["dtype"]):
                    if (dx-c["x"])**2 + (dy-c["y"])**2 < r2: lab = {1:"VM",2:"VX",3:"VX2"}[int(dt)]
            else: lab = "atom"
            k = next(i for i, e in enumerate(bins) if c["P"][0] < e)
            H.setdefault(k, {}); H[k][lab] = H[k].get(lab, 0) + 1
    print("block", b)
    for k in sorted(H): print(f"  P(empty) in [{bins[k-1] if k else 0.0}, {bins[k]}): {H[k]}")
