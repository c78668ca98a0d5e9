"""pairpool.py BASE_DIR NEW_DIR: pooled figures of two runs of the same images (pixel size given:
<name>_given.json of benchmarks/accuracy/run.sh, score_<name>_given.json of benchmarks/external or
/work/tools/given.sh) and the images whose species or V_X / V_X2 counts differ."""
import json, glob, os, sys
def name(f):
    b = os.path.basename(f)[:-len("_given.json")]
    return b[len("score_"):] if b.startswith("score_") else b
def load(d): return {name(f): json.load(open(f)) for f in glob.glob(d + "/*_given.json")}
A, B = load(sys.argv[1]), load(sys.argv[2])
def pool(S, keys):
    C = [[0]*8 for _ in range(8)]; V = {t: [0,0,0] for t in ("V_M","V_X","V_X2")}
    for s in keys:
        j = S[s]
        for a in range(8):
            for b in range(8): C[a][b] += j["species"]["confusion"][a][b]
        for t in V:
            for i, k in enumerate(("tp","fp","fn")): V[t][i] += j["vacancies"][t][k]
    f1 = lambda tp, fp, fn: 2*tp/(2*tp+fp+fn) if tp+fp+fn else float('nan')
    tot = sum(map(sum, C)); ok = sum(C[i][i] for i in range(8))
    ct = sum(sum(C[i]) for i in range(3,8)); co = sum(C[i][i] for i in range(3,8))
    return f"species {ok/tot:.4f} chalcogen {co/ct:.4f} V_M {f1(*V['V_M']):.3f} V_X {f1(*V['V_X']):.3f} {V['V_X']} V_X2 {f1(*V['V_X2']):.3f} {V['V_X2']}"
ks = sorted(set(A) & set(B))
print(len(ks), "images"); print("base", pool(A, ks)); print("new ", pool(B, ks))
for s in ks:
    a, b = A[s], B[s]
    if a["species"]["accuracy"] != b["species"]["accuracy"] or any(a["vacancies"][t] != b["vacancies"][t] for t in ("V_X","V_X2")):
        g = lambda j, t: tuple(j["vacancies"][t][k] for k in ("tp","fp","fn"))
        print(f"  {s}: species {a['species']['accuracy']:.4f} -> {b['species']['accuracy']:.4f} V_X {g(a,'V_X')} -> {g(b,'V_X')} V_X2 {g(a,'V_X2')} -> {g(b,'V_X2')}")
