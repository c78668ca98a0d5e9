import sys, math
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__))); from m import match, NAMES
def lev(n):
    mo = 42**n; s = 16**n/mo; se = 34**n/mo
    return {1: 1.0, 2: 74**n/mo, 6: s, 7: se, 3: 2*s, 4: s+se, 5: 2*se, 0: 0}
def med(v):
    v = sorted(v); k = len(v)
    return 0.5*(v[(k-1)//2] + v[k//2]) if k else float('nan')
tag = sys.argv[1]
for s in sys.argv[2:]:
    t, cols = match(int(s), tag)
    c0 = cols[0]; L = lev(c0["n"])
    print(f"{s} n {c0['n']:.3f} scale {c0['s']:.4f} y {c0['cy']:.2f} sa {math.sqrt(c0['sa2']):.4f} rho {c0['rho']:.3f}")
    for k in (1, 2, 6, 7, 3, 4, 5):
        v = [c["I"] for c in cols if c["ts"] == k]
        if len(v) < 2: continue
        m = med(v); sd = 1.4826*med([abs(x-m) for x in v])
        print(f"   {NAMES[k]:>3} N {len(v):4d} med {m:.4f} rsd {sd:.4f}   model {c0['s']*L[k]:.4f}  ratio {m/(c0['s']*L[k]):.3f}")
