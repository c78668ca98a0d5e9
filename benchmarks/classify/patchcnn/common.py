"""Shared pieces of the patch-CNN screen (session 11): B-site patches, context, the network.

A patch is G x G samples, STEP Angstrom apart, centred on a B column and rotated so that the
nearest metal column lies along +x; values are (image - bg) / scale with bg the 2nd percentile
of the image smoothed at 0.35 A and scale the median smoothed value at the B columns above bg.
The context (16 numbers) is the 7 quantiles 5..95 % of the smoothed B and A column values in the
same units, the pixel size and log(scale): what the network needs to place one column among the
image's levels. Classes: S2 SSe Se2 S Se empty (0..5).
"""
import numpy as np
import torch
import torch.nn as nn
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import cKDTree

G, STEP = 25, 0.2
SPECIES_TO_CLASS = {3: 0, 4: 1, 5: 2, 6: 3, 7: 4, 0: 5}  # table.h species codes (0: empty site)


def patches(img, px, ax, ay, bx, by):
    """Patches (n, G, G) at the B positions (bx, by) and the image's context (16,)."""
    sm = gaussian_filter(img, 0.35 / px)
    bg = np.percentile(sm, 2)
    at = lambda xx, yy: map_coordinates(sm, [yy, xx], order=1, mode='nearest')
    vb, va = at(bx, by) - bg, at(ax, ay) - bg
    scale = np.median(vb)
    q = np.linspace(0.05, 0.95, 7)
    ctx = np.concatenate([np.quantile(vb / scale, q), np.quantile(va / scale, q), [px, np.log(scale)]])
    j = cKDTree(np.c_[ax, ay]).query(np.c_[bx, by])[1]
    ang = np.arctan2(ay[j] - by, ax[j] - bx)
    g = (np.arange(G) - G // 2) * STEP / px
    gx, gy = np.meshgrid(g, g)
    c, s = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    X = bx[:, None, None] + c * gx - s * gy
    Y = by[:, None, None] + s * gx + c * gy
    P = map_coordinates(img, [Y.ravel(), X.ravel()], order=1, mode='nearest').reshape(-1, G, G)
    return ((P - bg) / scale).astype(np.float32), ctx.astype(np.float32)


class Net(nn.Module):
    """'lin': logistic regression on patch + context; 'cnn': four 3x3 convolutions, two pools,
    a dense layer over the features and the context."""
    def __init__(self, kind, nctx=16):
        super().__init__()
        self.kind = kind
        if kind == 'lin':
            self.f = nn.Linear(G * G + nctx, 6)
        else:
            self.c = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                   nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.h = nn.Sequential(nn.Linear(32 * 36 + nctx, 128), nn.ReLU(), nn.Linear(128, 6))

    def forward(self, p, c):
        if self.kind == 'lin':
            return self.f(torch.cat([p.flatten(1), c], 1))
        return self.h(torch.cat([self.c(p[:, None]).flatten(1), c], 1))


def save(path, net, kind, cm, cs, logadj, prior):
    torch.save(dict(state=net.state_dict(), kind=kind, cm=cm, cs=cs, logadj=logadj, prior=prior), path)


def load(path):
    d = torch.load(path)
    net = Net(d['kind'])
    net.load_state_dict(d['state'])
    net.eval()
    return net, d


def probabilities(model, P, C):
    """Class probabilities at the natural (unboosted) class shares."""
    net, d = model
    with torch.no_grad():
        z = net(torch.tensor(P), torch.tensor((C - d['cm']) / d['cs'], dtype=torch.float32)) + d['logadj']
        return torch.softmax(z, 1).numpy()
