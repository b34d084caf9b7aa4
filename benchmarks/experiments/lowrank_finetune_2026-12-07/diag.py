import numpy as np, sys
from keras_ctr_compress.artifacts import load_trained
from keras_ctr_compress.data import load_dataset
ds = load_dataset("frappe"); m = load_trained("/tmp/bench/refs/frappe_deepfm_seed0").model
names=[f.name for f in ds.fields]; j=names.index("item")
E = m.get_layer("emb_item").embeddings.numpy().astype(np.float64)
cnt = np.bincount(ds.train.x[:, j], minlength=len(E)).astype(float)
print("rows", len(E), "seen", (cnt>0).sum(), "top1% share", np.sort(cnt)[::-1][:len(E)//100].sum()/cnt.sum())
def sub(w, center=True):
    w = w/w.sum(); mu = w@E if center else np.zeros(E.shape[1]); X=E-mu
    C = (X*w[:,None]).T@X; ev, V = np.linalg.eigh(C); return mu, V[:, ::-1][:, :4]
def err(mu,U):
    X=E-mu; R = X - X@U@U.T; return (R**2).sum(1)
q = np.quantile(cnt[cnt>0], [0.5, 0.9, 0.99])
print("count quantiles", q, "norm rows by bucket")
buckets = [cnt==0, (cnt>0)&(cnt<=q[0]), (cnt>q[0])&(cnt<=q[1]), (cnt>q[1])&(cnt<=q[2]), cnt>q[2]]
for name, (mu,U) in {"afm": sub(cnt), "afm-sqrt": sub(np.sqrt(cnt)), "uniform": sub(np.ones(len(E))),
                     "svd": (np.zeros(10), np.linalg.svd(E, full_matrices=False)[2][:4].T)}.items():
    e = err(mu,U)
    print(name.ljust(9), "freq-weighted err %.4f" % ((cnt*e).sum()/cnt.sum()), "uniform err %.4f" % e.mean(),
          "by bucket", [round(float(e[b].mean()),4) for b in buckets], [int(b.sum()) for b in buckets])
print("row norm^2 by bucket", [round(float((E[b]**2).sum(1).mean()),4) for b in buckets])
