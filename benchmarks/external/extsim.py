#!/usr/bin/python3
"""An independent HAADF-STEM simulator of 2H TMD monolayers, for testing tmdflow on images it did not make.

It shares no code and no parameter values with tmdflow's simulator (src/sim): its own probe (a
coherent aberrated probe from Fourier optics — aperture, defocus, spherical aberration, two-fold
astigmatism — blurred by a source distribution that is a Gaussian plus a Lorentzian tail), its own
contrast law (Z^n per atom, a sub-additive two-atom column, a thermal-diffuse Gaussian blur per atom),
its own noise (Poisson electron counts, each electron giving a gamma-distributed scintillator pulse,
Gaussian read noise, row-to-row offset flicker), its own background (amorphous carbon as filtered
noise + a plane), its own scan distortions (per-row x jitter, mains-hum sinusoid, slow-scan shear
and compression), and writes the image as a TIFF (uint16, uint8 or float32) with the truth beside it
as HDF5 in tmdflow's documented layout (DESIGN.md, docs/score.md), so `tmdflow score` reads it.

usage: extsim.py -o OUT.tif [--size N] [--seed S] [--material MoS2|WSe2|MoSe2|WS2|x,y]
                 [--px A] [--kv 60|80|200] [--dose D] [...]; --help lists every option.
Truth: OUT.tif.truth.h5 with /image (float32, the noisy image before quantisation), /atoms/{frame,x,y,
sublattice,species}, /defects/{frame,x,y,type}, root attributes pixel_size, lattice_a and every option.
Coordinates: x = column, y = row, (0, 0) = centre of the top-left pixel (DESIGN.md).
Requires Debian python3-numpy, python3-tifffile, python3-h5py. Run with /usr/bin/python3.
"""
import argparse, json, math, sys
import numpy as np

# Lattice constants (Angstrom) of the four end members (literature, bulk 2H values).
A_END = {(0, 0): 3.160, (1, 0): 3.153, (0, 1): 3.288, (1, 1): 3.282}  # (W fraction, Se fraction)
Z = {"Mo": 42, "W": 74, "S": 16, "Se": 34}
SPECIES_CODE = {"Mo": 1, "W": 2, "S2": 3, "SSe": 4, "Se2": 5, "S": 6, "Se": 7}
MATERIALS = {"MoS2": (0.0, 0.0), "WS2": (1.0, 0.0), "MoSe2": (0.0, 1.0), "WSe2": (1.0, 1.0)}


def wavelength(kv):
    e = kv * 1e3
    return 12.2643 / math.sqrt(e * (1 + 0.978476e-6 * e))  # Angstrom, relativistic


def probe_table(a, step=0.04, n=512):
    """Probe intensity on an n x n grid of `step` Angstrom, peak at the centre, unit sum."""
    lam = wavelength(a.kv)
    k = np.fft.fftfreq(n, d=step)
    kx, ky = np.meshgrid(k, k)
    k2 = kx ** 2 + ky ** 2
    phi = np.arctan2(ky, kx)
    kmax = a.alpha * 1e-3 / lam
    chi = (math.pi * lam * a.defocus * k2
           + math.pi * lam * a.astig * k2 * np.cos(2 * (phi - math.radians(a.astig_angle)))
           + 0.5 * math.pi * a.cs * 1e7 * lam ** 3 * k2 ** 2)  # cs in mm -> Angstrom
    aperture = (np.sqrt(k2) <= kmax).astype(float)
    psi = np.fft.ifft2(aperture * np.exp(-1j * chi))
    inten = np.abs(psi) ** 2
    # effective source: Gaussian core + Lorentzian (Cauchy) tail, as an incoherent blur
    ksrc = np.sqrt(k2)
    sg = a.source_fwhm / 2.3548
    gauss_ft = np.exp(-2 * math.pi ** 2 * sg ** 2 * k2)
    lor_ft = np.exp(-2 * math.pi * a.lorentz_hwhm * ksrc)
    src_ft = (1 - a.lorentz_frac) * gauss_ft + a.lorentz_frac * lor_ft
    # thermal diffuse motion of the atoms (averaged over the dwell time): a Gaussian blur
    src_ft = src_ft * np.exp(-2 * math.pi ** 2 * a.tds ** 2 * k2)
    inten = np.real(np.fft.ifft2(np.fft.fft2(inten) * src_ft))
    inten = np.fft.fftshift(np.maximum(inten, 0))
    return inten / inten.sum(), step


def fwhm_of(table, step):
    c = table.shape[0] // 2
    row = table[c, :] / table[c, c]
    above = np.where(row >= 0.5)[0]
    return (above[-1] - above[0] + 1) * step


def interp2(table, step, dx, dy):
    """Bilinear lookup of the probe table at offsets (dx, dy) Angstrom from its centre."""
    n = table.shape[0]
    fx = dx / step + n // 2
    fy = dy / step + n // 2
    x0 = np.clip(np.floor(fx).astype(int), 0, n - 2)
    y0 = np.clip(np.floor(fy).astype(int), 0, n - 2)
    tx = np.clip(fx - x0, 0, 1)
    ty = np.clip(fy - y0, 0, 1)
    return ((1 - ty) * ((1 - tx) * table[y0, x0] + tx * table[y0, x0 + 1])
            + ty * ((1 - tx) * table[y0 + 1, x0] + tx * table[y0 + 1, x0 + 1]))


def smooth_noise(rng, h, w, length_px):
    """Zero-mean unit-variance Gaussian random field with correlation length length_px."""
    f = rng.standard_normal((h, w))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    s = length_px / 2.3548
    g = np.fft.irfft2(np.fft.rfft2(f) * np.exp(-2 * math.pi ** 2 * s ** 2 * (kx ** 2 + ky ** 2)), s=(h, w))
    return (g - g.mean()) / (g.std() + 1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", required=True, help="output TIFF (truth: OUT.truth.h5)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--material", default="MoS2", help="MoS2, WS2, MoSe2, WSe2 or x,y (W fraction, Se fraction)")
    ap.add_argument("--px", type=float, default=0.12, help="Angstrom per pixel")
    ap.add_argument("--kv", type=float, default=80, help="accelerating voltage, kV")
    ap.add_argument("--alpha", type=float, default=None, help="probe semi-angle, mrad (default by kV)")
    ap.add_argument("--defocus", type=float, default=None, help="Angstrom (default: drawn)")
    ap.add_argument("--cs", type=float, default=0.001, help="spherical aberration, mm (corrected: ~0.001)")
    ap.add_argument("--astig", type=float, default=None, help="two-fold astigmatism, Angstrom (default: drawn)")
    ap.add_argument("--astig-angle", type=float, default=None)
    ap.add_argument("--source-fwhm", type=float, default=0.5, help="Gaussian source size, Angstrom")
    ap.add_argument("--lorentz-frac", type=float, default=0.15, help="share of the Lorentzian source tail")
    ap.add_argument("--lorentz-hwhm", type=float, default=1.5, help="Angstrom")
    ap.add_argument("--n", type=float, default=1.75, help="Z exponent of the cross-section")
    ap.add_argument("--pair", type=float, default=0.93, help="two-atom column / sum of its atoms (channelling)")
    ap.add_argument("--tds", type=float, default=0.08, help="rms thermal vibration per atom (a blur), Angstrom")
    ap.add_argument("--static", type=float, default=0.02, help="rms static displacement per column, Angstrom")
    ap.add_argument("--dose", type=float, default=60, help="mean electron counts at a Mo-column peak")
    ap.add_argument("--pulse-shape", type=float, default=3.0, help="gamma shape of one electron's pulse")
    ap.add_argument("--read-noise", type=float, default=0.8, help="rms, in mean-pulse units")
    ap.add_argument("--row-flicker", type=float, default=0.3, help="rms row offset, mean-pulse units")
    ap.add_argument("--carbon", type=float, default=0.25, help="amorphous background rms, fraction of an S2 peak")
    ap.add_argument("--carbon-mean", type=float, default=0.4, help="mean background, fraction of an S2 peak")
    ap.add_argument("--plane", type=float, default=0.3, help="background gradient across the image, fraction of an S2 peak")
    ap.add_argument("--jitter", type=float, default=0.06, help="rms per-row x jitter, Angstrom")
    ap.add_argument("--hum", type=float, default=0.08, help="mains-hum x amplitude, Angstrom")
    ap.add_argument("--hum-period", type=float, default=37, help="rows")
    ap.add_argument("--shear", type=float, default=0.01, help="x shift per row, fraction")
    ap.add_argument("--compress", type=float, default=0.01, help="slow-scan stretch (1+c per row)")
    ap.add_argument("--strain", type=float, default=0.005, help="homogeneous strain amplitude")
    ap.add_argument("--vac-m", type=float, default=0.01)
    ap.add_argument("--vac-x", type=float, default=0.03, help="probability a chalcogen atom is missing")
    ap.add_argument("--vac-x2", type=float, default=0.005, help="extra probability both are missing")
    ap.add_argument("--dtype", default="u16", choices=["u16", "u8", "f32"])
    ap.add_argument("--bg-subtract", action="store_true", help="subtract a broad Gaussian blur (as some users do) before writing")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    xw, yse = MATERIALS[a.material] if a.material in MATERIALS else map(float, a.material.split(","))
    lat = (A_END[(0, 0)] * (1 - xw) * (1 - yse) + A_END[(1, 0)] * xw * (1 - yse)
           + A_END[(0, 1)] * (1 - xw) * yse + A_END[(1, 1)] * xw * yse)
    if a.alpha is None:
        a.alpha = {60: 31.0, 80: 27.0, 200: 22.0}.get(int(a.kv), 25.0)
    if a.defocus is None:
        a.defocus = float(rng.uniform(-40, 40))
    if a.astig is None:
        a.astig = float(rng.uniform(0, 25))
    if a.astig_angle is None:
        a.astig_angle = float(rng.uniform(0, 180))
    table, step = probe_table(a)
    fwhm = fwhm_of(table, step)
    ppk = table.max()  # probe peak, per unit column weight

    H = W = a.size
    px = a.px
    # ---- scan distortion: row r is scanned at x' = x + dx[r], y' = r*(1+c) (pixels)
    rows = np.arange(H)
    dx = (a.jitter / px * rng.standard_normal(H) + a.hum / px * np.sin(2 * math.pi * rows / a.hum_period + rng.uniform(0, 6.3))
          + a.shear * (rows - H / 2))
    yscan = rows * (1 + a.compress)

    # ---- lattice, in Angstrom, covering the scanned area plus a margin
    theta = rng.uniform(0, 2 * math.pi)
    e = a.strain * rng.uniform(-1, 1, 3)
    F = np.array([[1 + e[0], e[2]], [e[2], 1 + e[1]]])
    R = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    M = R @ F
    a1 = M @ np.array([lat, 0.0])
    a2 = M @ np.array([lat / 2, lat * math.sqrt(3) / 2])
    b_off = (a1 + a2) / 3
    margin = 8.0
    xmin, xmax = dx.min() * px - margin, (W + dx.max()) * px + margin
    ymin, ymax = -margin, yscan[-1] * px + margin
    span = max(xmax - xmin, ymax - ymin) * 1.6 / lat + 4
    ii, jj = np.meshgrid(np.arange(-span, span + 1), np.arange(-span, span + 1))
    ii, jj = ii.ravel(), jj.ravel()
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    posA = np.stack([cx + ii * a1[0] + jj * a2[0], cy + ii * a1[1] + jj * a2[1]], 1)
    posB = posA + b_off
    keepA = (posA[:, 0] > xmin) & (posA[:, 0] < xmax) & (posA[:, 1] > ymin) & (posA[:, 1] < ymax)
    keepB = (posB[:, 0] > xmin) & (posB[:, 0] < xmax) & (posB[:, 1] > ymin) & (posB[:, 1] < ymax)
    posA, posB = posA[keepA], posB[keepB]

    # ---- occupancy and species
    cols = []  # (x_A, y_A, sublattice, species name or None, weight)
    defects = []  # (x_A, y_A, type)
    for p in posA:
        if rng.random() < a.vac_m:
            defects.append((p[0], p[1], 1))
            continue
        m = "W" if rng.random() < xw else "Mo"
        cols.append((p[0], p[1], 1, m, Z[m] ** a.n))
    for p in posB:
        atoms = ["Se" if rng.random() < yse else "S" for _ in range(2)]
        if rng.random() < a.vac_x2:
            defects.append((p[0], p[1], 3))
            continue
        left = [t for t in atoms if rng.random() >= a.vac_x]
        if not left:
            defects.append((p[0], p[1], 3))
            continue
        if len(left) == 1:
            defects.append((p[0], p[1], 2))
            name, wgt = left[0], Z[left[0]] ** a.n
        else:
            name = {"SS": "S2", "SSe": "SSe", "SeS": "SSe", "SeSe": "Se2"}["".join(left)]
            wgt = a.pair * (Z[left[0]] ** a.n + Z[left[1]] ** a.n)
        cols.append((p[0], p[1], 2, name, wgt))

    # ---- render: probe-weighted sum over columns at the distorted scan positions
    img = np.zeros((H, W))
    rwin = 7.0  # Angstrom
    for (xa, ya, sub, name, wgt) in cols:
        r_c = ya / px / (1 + a.compress)  # approximate row of the column
        r0, r1 = int(math.floor(r_c - rwin / px)), int(math.ceil(r_c + rwin / px)) + 1
        r0, r1 = max(r0, 0), min(r1, H)
        if r0 >= r1:
            continue
        rr = np.arange(r0, r1)
        c0 = max(int(math.floor(xa / px - dx[rr].max() - rwin / px)), 0)
        c1 = min(int(math.ceil(xa / px - dx[rr].min() + rwin / px)) + 1, W)
        if c0 >= c1:
            continue
        cc = np.arange(c0, c1)
        # static random displacement of this column (the truth keeps the ideal site)
        ox, oy = rng.normal(0, a.static, 2)
        PX = (cc[None, :] + dx[rr][:, None]) * px - (xa + ox)
        PY = np.broadcast_to(yscan[rr][:, None] * px - (ya + oy), PX.shape)
        img[r0:r1, c0:c1] += wgt * interp2(table, step, PX, PY)
    s2 = a.pair * 2 * Z["S"] ** a.n * ppk  # peak of an S2 column, for the background scale
    mo = Z["Mo"] ** a.n * ppk
    # ---- background: amorphous carbon (filtered noise, positive) + plane
    carbon = a.carbon * s2 * smooth_noise(rng, H, W, 1.2 / px) + a.carbon_mean * s2
    gy, gx = np.mgrid[0:H, 0:W] / max(H, W)
    ang = rng.uniform(0, 2 * math.pi)
    plane = a.plane * s2 * (math.cos(ang) * gx + math.sin(ang) * gy)
    expected = np.maximum(img + np.maximum(carbon, 0) + plane - min(plane.min(), 0), 0) * (a.dose / mo)
    # ---- noise: Poisson electrons, gamma pulse heights, read noise, row flicker
    n_e = rng.poisson(expected)
    sig = np.where(n_e > 0, rng.gamma(np.maximum(n_e, 1) * a.pulse_shape, 1.0 / a.pulse_shape), 0.0)
    sig += a.read_noise * rng.standard_normal((H, W)) + a.row_flicker * rng.standard_normal(H)[:, None]
    if a.bg_subtract:
        ky = np.fft.fftfreq(H)[:, None]
        kx = np.fft.rfftfreq(W)[None, :]
        sgm = 8.0 / px / 2.3548
        blur = np.fft.irfft2(np.fft.rfft2(sig) * np.exp(-2 * math.pi ** 2 * sgm ** 2 * (kx ** 2 + ky ** 2)), s=(H, W))
        sig = sig - blur
    import tifffile, h5py
    if a.dtype == "u16":
        lo, hi = np.percentile(sig, 0.01), np.percentile(sig, 99.99)
        gain = 50000.0 / max(hi - lo, 1e-9)
        out = np.clip(np.round(2000 + (sig - lo) * gain), 0, 65535).astype(np.uint16)
    elif a.dtype == "u8":
        lo, hi = np.percentile(sig, 0.5), np.percentile(sig, 99.8)
        out = np.clip(np.round((sig - lo) / max(hi - lo, 1e-9) * 255), 0, 255).astype(np.uint8)
    else:
        out = sig.astype(np.float32)
    tifffile.imwrite(a.o, out, resolution=(1.0 / px, 1.0 / px), metadata=None)

    # ---- truth: apparent positions in pixels (scan distortion applied)
    def apparent(xa, ya):
        r = ya / px / (1 + a.compress)
        # the rows that see the column, weighted like the probe core
        rr = np.arange(max(int(r) - 8, 0), min(int(r) + 9, H))
        if len(rr) == 0:
            return xa / px, r
        wts = np.exp(-0.5 * ((rr - r) * px / max(fwhm / 2.3548, 1e-3)) ** 2)
        if wts.sum() <= 0:
            return xa / px - dx[min(max(int(round(r)), 0), H - 1)], r
        return xa / px - float((wts * dx[rr]).sum() / wts.sum()), r

    ax_, ay_, asub, aspec = [], [], [], []
    for (xa, ya, sub, name, wgt) in cols:
        x, y = apparent(xa, ya)
        if -0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5:
            ax_.append(x); ay_.append(y); asub.append(sub); aspec.append(SPECIES_CODE[name])
    dxs, dys, dts = [], [], []
    for (xa, ya, t) in defects:
        x, y = apparent(xa, ya)
        if -0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5:
            dxs.append(x); dys.append(y); dts.append(t)
    with h5py.File(a.o + ".truth.h5", "w") as f:
        f.create_dataset("image", data=sig.astype(np.float32))
        g = f.create_group("atoms")
        g["frame"] = np.zeros(len(ax_), np.int32)
        g["x"] = np.array(ax_, np.float64)
        g["y"] = np.array(ay_, np.float64)
        g["sublattice"] = np.array(asub, np.int8)
        g["species"] = np.array(aspec, np.int8)
        d = f.create_group("defects")
        d["frame"] = np.zeros(len(dxs), np.int32)
        d["x"] = np.array(dxs, np.float64)
        d["y"] = np.array(dys, np.float64)
        d["type"] = np.array(dts, np.int8)
        f.attrs["pixel_size"] = px
        f.attrs["lattice_a"] = lat
        f.attrs["probe_fwhm_A"] = fwhm
        f.attrs["generator"] = "benchmarks/external/extsim.py (independent of tmdflow)"
        f.attrs["options"] = json.dumps(vars(a))
    nd = np.bincount(np.array(dts, int), minlength=4) if dts else [0] * 4
    print(f"{a.o}: {H}x{W} {a.dtype}, {px} A/px, a = {lat:.3f} A, probe FWHM {fwhm:.2f} A ({a.kv:g} kV, "
          f"alpha {a.alpha:g} mrad, defocus {a.defocus:.0f} A, astig {a.astig:.0f} A), n = {a.n}, dose {a.dose:g}; "
          f"{len(ax_)} columns, V_M {nd[1]} V_X {nd[2]} V_X2 {nd[3]}")


if __name__ == "__main__":
    main()
