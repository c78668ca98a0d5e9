import sys, math
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from m import match, NAMES
tag = sys.argv[1]; f = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
for b in sys.argv[2].split():
    H = {}
    for s in range(7001 + 100*(int(b)-1), 7013 + 100*(int(b)-1)):
        t, cols = match(s, tag)
        bond = math.hypot(*t["a1"]) / math.sqrt(3); r2 = (0.45*bond)**2
        for c in cols:
            if c["sub"] != 2 or c["call"] not in (6, 7): continue
            if not (c["P"][0] > f * (c["P"][6] + c["P"][7])): continue
            if c["ts"] == 0:
                lab = "none"
                for dx, dy, dt in zip(t["dx"], t["dy"], t["dtype"]):
                    if (dx-c["x"])**2 + (dy-c["y"])**2 < r2: lab = {1:"VM",2:"VX",3:"VX2"}[int(dt)]
            else: lab = NAMES[c["ts"]]
            H[lab] = H.get(lab, 0) + 1
    print("block", b, sorted(H.items()))
