import sys, math
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from m import match, NAMES, CH
def med(v):
    v = sorted(v); k = len(v); return 0.5*(v[(k-1)//2] + v[k//2])
tag = sys.argv[1]; T = [0]*6
for s in sys.argv[2:]:
    t, cols = match(int(s), tag)
    B = [c for c in cols if c["sub"] == 2 and c["ts"] in CH]
    st = {}
    for k in CH:
        v = [c["I"] for c in B if c["ts"] == k]
        if not v: continue
        m = med(v); sd = max(1.4826*med([abs(x-m) for x in v]), 0.005) if len(v) > 2 else 0.03
        st[k] = (m, sd, len(v)/len(B))
    ok = 0; tp = tl = cl = 0
    for c in B:
        best = max(st, key=lambda k: st[k][2]*math.exp(-0.5*((c["I"]-st[k][0])/st[k][1])**2)/st[k][1])
        ok += best == c["ts"]; tl += c["ts"] in (6,7); cl += best in (6,7); tp += best in (6,7) and c["ts"] in (6,7)
    mok = sum(c["call"] == c["ts"] for c in B); mcl = sum(c["call"] in (6,7) for c in B); mtp = sum(c["call"] in (6,7) and c["ts"] in (6,7) for c in B)
    T = [a+b for a, b in zip(T, [mok, ok, len(B), tp, tl+cl, 0])]; T[5] += 0
    print(f"{s}: B {len(B)} model err {len(B)-mok} oracle err {len(B)-ok}  loneF1 model {2*mtp/max(1,tl+mcl):.3f} oracle {2*tp/max(1,tl+cl):.3f}")
print(f"ALL model err {T[2]-T[0]} oracle err {T[2]-T[1]}")
