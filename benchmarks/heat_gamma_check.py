"""HeatSmoothing with penalty weight gamma, fine-tuned from benchmarks/heat.py's MNIST baseline exactly as
heat.py's `heat` model (first 6,000 images, 1 epoch, lr 0.01, kappa 10) but with `gamma`: clean accuracy,
one-pass vs Monte Carlo agreement (first 500 test images, 100 draws) and hard CERTIFY (n0 100, N 10,000,
alpha 0.001) on heat.py's 20 images. One JSON line.

    PYTHONPATH=src python benchmarks/heat_gamma_check.py 0.01 runs/heat/mnist/baseline.pt ../shared/data runs/heat-gamma
"""
import json, sys, time, torch
from pathlib import Path
from smoothcert import SmoothedClassifier, get_noise
from smoothcert.data import get_dataset
from smoothcert.models import load_checkpoint, build_model, CheckpointMeta
from smoothcert.train import TrainConfig, get_method, train
from smoothcert.stats import clopper_pearson_interval
gamma, baseline_path, root, work = float(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
work.mkdir(parents=True, exist_ok=True)
tr = get_dataset("mnist", split="train", root=root).subset(torch.arange(6000))
te = get_dataset("mnist", split="test", root=root)
base, meta = load_checkpoint(baseline_path)
model = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(tr.info.mean), std=list(tr.info.std))
model.load_state_dict(base.state_dict())
noise = get_noise("gaussian", sigma=0.25)
m = CheckpointMeta(arch="lenet-small", dataset="mnist", num_classes=10, in_channels=1, input_size=[28, 28], mean=list(tr.info.mean), std=list(tr.info.std), noise="gaussian", sigma=0.25)
t0 = time.time()
train(model, tr, method=get_method("heat", gamma=gamma), noise=noise, config=TrainConfig(epochs=1, batch_size=128, lr=0.01, schedule="step", step_size=10**6, seed=1), meta=m, checkpoint=work / f"heat_g{gamma}.pt", resume=True, progress=False)
model.eval()
x, y = te.tensors(); x = x.float(); x = x / 255 if x.max() > 1 else x; y = y.long()
with torch.inference_mode():
    acc = float((torch.cat([model(x[s:s+1000]).argmax(1) for s in range(0, 10000, 1000)]) == y).float().mean())
sm = SmoothedClassifier(model, noise=noise, num_classes=10)
c = sm.counts(x[:500], n=100, batch_size=1000, generator=torch.Generator().manual_seed(0)).cpu()
with torch.inference_mode():
    agree = int((c.argmax(1) == model(x[:500]).argmax(1)).sum())
idx = torch.arange(0, 10000, 500)[:20]
cert = sm.certify(x[idx], n0=100, n=10000, alpha=0.001, batch_size=1000, generator=torch.Generator().manual_seed(7))
ok = cert.prediction == y[idx]
out = {"gamma": gamma, "train_s": time.time() - t0, "clean_acc": acc, "agree": agree / 500, "ci": [float(v) for v in clopper_pearson_interval(agree, 500, 0.05)],
       "hard": {r: float((ok & (cert.radius >= r)).float().mean()) for r in (0.0, 0.25, 0.5, 0.75, 1.0)}, "acr": float(torch.where(ok, cert.radius, 0.0).mean())}
print(json.dumps(out)); (work / f"g{gamma}.json").write_text(json.dumps(out))
