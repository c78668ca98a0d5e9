import sys, math, json, glob, os
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from truth import truth
NAMES = ["-", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"]
CH = [3, 4, 5, 6, 7]
def load_dump(fn):
    D = {}
    for l in open(fn):
        v = l.split()
        if len(v) < 20: continue
        key = (v[0], v[1])
        D[key] = dict(x=float(v[0]), y=float(v[1]), sub=int(v[2]), I=float(v[3]), sa2=float(v[4]), rho=float(v[5]), s=float(v[6]), n=float(v[7]), cx=float(v[8]), cy=float(v[9]), v=float(v[10]), best=int(v[11]), P=[float(t) for t in v[12:20]])
    return list(D.values())
def match(seed, tag, ep=0.85):
    t = truth(seed); d = load_dump(f"/tmp/lone/d/{tag}/{seed}.txt")
    bond = math.hypot(*t["a1"]) / math.sqrt(3); r2 = (0.45 * bond) ** 2
    cell = {}
    for i, (x, y) in enumerate(zip(t["x"], t["y"])):
        cell.setdefault((int(x // bond), int(y // bond)), []).append(i)
    out = []
    for c in d:
        cx, cy = int(c["x"] // bond), int(c["y"] // bond); bi, bd = -1, r2
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for i in cell.get((cx + dx, cy + dy), []):
                    dd = (t["x"][i] - c["x"]) ** 2 + (t["y"][i] - c["y"]) ** 2
                    if dd < bd: bi, bd = i, dd
        c["ts"] = int(t["species"][bi]) if bi >= 0 else 0
        c["call"] = 0 if c["P"][0] > (0.5 if c["sub"] == 1 else ep) else c["best"]
        out.append(c)
    return t, out
if __name__ == "__main__":
    tag = sys.argv[1]; seeds = sys.argv[2:]
    tot = [0]*4
    for s in seeds:
        t, cols = match(int(s), tag)
        B = [c for c in cols if c["sub"] == 2 and c["ts"] in CH]
        ok = sum(c["call"] == c["ts"] for c in B)
        tl = sum(c["ts"] in (6, 7) for c in B); cl = sum(c["call"] in (6, 7) for c in B); tp = sum(c["ts"] in (6, 7) and c["call"] in (6, 7) for c in B)
        conf = {}
        for c in B:
            if c["call"] != c["ts"]: conf[(NAMES[c["ts"]], NAMES[c["call"]])] = conf.get((NAMES[c["ts"]], NAMES[c["call"]]), 0) + 1
        tot[0] += ok; tot[1] += len(B); tot[2] += tp; tot[3] += tl + cl
        print(f"{s} dose {t['dose']:.0f} cont {t['contamination']:.2f} se {t['comp_se']:.2f} w {t['comp_w']:.2f} | fit y {B[0]['cy'] if B else 0:.2f} v {B[0]['v'] if B else 0:.3f} | B {len(B)} acc {ok/max(1,len(B)):.4f} err {len(B)-ok} loneF1 {2*tp/max(1,tl+cl):.3f} (true {tl} called {cl} tp {tp}) ", " ".join(f"{a}>{b}:{n}" for (a, b), n in sorted(conf.items(), key=lambda z: -z[1])[:6]))
    print(f"ALL B acc {tot[0]/tot[1]:.4f} err {tot[1]-tot[0]} loneF1 {2*tot[2]/tot[3]:.3f}")
