import subprocess, re, sys, os, json
def ds(f, d):
    out = subprocess.run(["h5dump", "-y", "-w", "0", "-d", d, f], capture_output=True, text=True).stdout
    body = out.split("DATA {", 1)[1].rsplit("}", 2)[0]
    return [float(v) for v in re.findall(r"[-+]?[0-9][0-9.eE+-]*", body)]
def attr(f, a):
    out = subprocess.run(["h5dump", "-a", "/" + a, f], capture_output=True, text=True).stdout
    m = re.search(r"\(0\): *([-+0-9.eE]+)", out); return float(m.group(1)) if m else float('nan')
def truth(seed):
    os.makedirs("/tmp/lone/tr", exist_ok=True); c = f"/tmp/lone/tr/{seed}.json"
    if os.path.exists(c): return json.load(open(c))
    f = f"/tmp/s9/m{int(str(seed)[1])+1}/sim_{seed}.h5"
    d = {k: ds(f, "/atoms/" + k) for k in ("x", "y", "species", "sublattice")}
    for k in ("x", "y", "type"): d["d" + k] = ds(f, "/defects/" + k)
    d["a1"] = ds(f, "/lattice/a1"); d["a2"] = ds(f, "/lattice/a2")
    for a in ("dose", "contamination", "comp_se", "comp_w", "pixel_size"): d[a] = attr(f, a)
    json.dump(d, open(c, "w")); return d
def cnt(v, n=8):
    c = [0]*n
    for x in v: c[int(x)] += 1
    return c
if __name__ == "__main__":
    for s in sys.argv[1:]:
        d = truth(int(s)); print(s, len(d["x"]), {k: round(d[k],3) for k in ("dose","contamination","comp_se","comp_w")}, "sp", cnt(d["species"]), "def", cnt(d["dtype"],4), d["a1"])
