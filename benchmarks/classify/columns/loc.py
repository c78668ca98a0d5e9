# offline test: local (neighbourhood) lone share as the prior of a B column's lone-vs-full decision
import sys, math
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from m import match, CH
R = float(sys.argv[2]); K = float(sys.argv[3]); tag = sys.argv[1]; MODE = sys.argv[4] if len(sys.argv) > 4 else "v"
tot = [0, 0, 0, 0, 0, 0]
for b in sys.argv[5].split() if len(sys.argv) > 5 else ["1", "2"]:
  bt = [0]*6
  for s in range(7001 + 100*(int(b)-1), 7013 + 100*(int(b)-1)):
    t, cols = match(s, tag)
    bond = math.hypot(*t["a1"]) / math.sqrt(3)
    B = [c for c in cols if c["sub"] == 2]
    if not B: continue
    cell = {}
    for i, c in enumerate(B): cell.setdefault((int(c["x"] // (R*bond)), int(c["y"] // (R*bond))), []).append(i)
    lone = lambda c: c["P"][6] + c["P"][7]
    full = lambda c: c["P"][3] + c["P"][4] + c["P"][5]
    gl = sum(lone(c) for c in B) / max(1e-9, sum(lone(c) + full(c) for c in B))
    gy = sum(c["P"][7] + c["P"][4] + 2*c["P"][5] for c in B) / max(1e-9, sum(c["P"][6]+c["P"][7]+c["P"][4] + 2*c["P"][5] + 2*c["P"][3] for c in B))
    new = []
    for i, c in enumerate(B):
        cx, cy = int(c["x"] // (R*bond)), int(c["y"] // (R*bond)); sl = sn = sy = syn = 0
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cell.get((cx+dx, cy+dy), []):
                    if j == i: continue
                    d = B[j]
                    if (d["x"]-c["x"])**2 + (d["y"]-c["y"])**2 > (R*bond)**2: continue
                    sl += lone(d); sn += lone(d) + full(d)
                    sy += d["P"][7] + d["P"][4] + 2*d["P"][5]; syn += d["P"][6]+d["P"][7]+d["P"][4] + 2*d["P"][5] + 2*d["P"][3]
        ll = (sl + K*gl) / (sn + K); ly = (sy + K*gy) / (syn + K)
        P = list(c["P"])
        if "v" in MODE:
            for k in (6, 7): P[k] *= ll / max(gl, 1e-6)
            for k in (3, 4, 5): P[k] *= (1-ll) / max(1-gl, 1e-6)
        if "y" in MODE and 1e-3 < gy < 1 - 1e-3:
            r, q = ly/gy, (1-ly)/(1-gy)
            P[6] *= q; P[7] *= r; P[3] *= q*q; P[4] *= r*q; P[5] *= r*r
        z = sum(P); P = [p/z for p in P]
        best = max(range(1, 8), key=lambda k: P[k])
        call = 0 if P[0] > 0.85 else best
        new.append(call)
    for c, nc in zip(B, new):
        if c["ts"] not in CH: continue
        bt[0] += 1; bt[1] += c["call"] == c["ts"]; bt[2] += nc == c["ts"]
        tl = c["ts"] in (6, 7)
        bt[3] += 2*tl + (c["call"] in (6,7)) + (nc in (6,7)) - 2*tl  # unused
        bt[4] += (tl and c["call"] in (6, 7)); bt[5] += (tl and nc in (6, 7))
  nl_true = None
  print(f"block {b}: B {bt[0]} acc {bt[1]/bt[0]:.4f} -> {bt[2]/bt[0]:.4f}  lone tp {bt[4]} -> {bt[5]}")
