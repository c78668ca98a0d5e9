"""train.py KIND EPOCHS DATA.npz OUT.pt NATURAL_SEEDS: a 'lin' or 'cnn' patch classifier (torch,
CPU, one thread). NATURAL_SEEDS (e.g. 9001-9100,9201-9400) are the images simulated without the
boosted vacancy rates; their class shares are the prior the outputs are corrected to."""
import sys
import time
import numpy as np
import torch
import torch.nn as nn
from common import Net, save

torch.set_num_threads(1)
torch.manual_seed(0)
kind, epochs, data, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
d = np.load(data)
P, C, L, S = d['P'], d['C'], d['L'], d['S']
nat = np.zeros(len(S), bool)
for r in sys.argv[5].split(','):
    lo, hi = (int(v) for v in r.split('-'))
    nat |= (S >= lo) & (S <= hi)
prior = np.bincount(L[nat], minlength=6) / nat.sum()
logadj = torch.tensor(np.log(prior / (np.bincount(L, minlength=6) / len(L))), dtype=torch.float32)
cm, cs = C.mean(0), C.std(0) + 1e-6
net = Net(kind)
opt = torch.optim.Adam(net.parameters(), 2e-3, weight_decay=1e-5)
Pt, Ct, Lt = torch.tensor(P), torch.tensor((C - cm) / cs, dtype=torch.float32), torch.tensor(L)
bs = 256
steps = epochs * len(L) // bs
sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
t0 = time.time()
for step in range(steps):
    i = torch.randint(0, len(L), (bs,))
    p = Pt[i]
    if kind != 'lin':  # mirror about the metal-neighbour axis: the other sublattice orientation
        flip = torch.rand(bs) < 0.5
        p = torch.where(flip[:, None, None], p.flip(1), p)
    loss = nn.functional.cross_entropy(net(p, Ct[i]), Lt[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if step % 2000 == 0:
        print(step, steps, float(loss), f'{time.time() - t0:.0f}s', flush=True)
save(out, net, kind, cm, cs, logadj, prior)
