import sys, numpy as np, keras
from keras_ctr_compress.artifacts import load_trained
from keras_ctr_compress.data import load_dataset
from keras_ctr_compress.compress import compress_low_rank
ds = load_dataset("frappe"); seed = int(sys.argv[1])
ref = load_trained(f"/tmp/bench/refs/frappe_deepfm_seed{seed}").model
x = ds.valid.x[:20000]
def stats(m, tag):
    probe = keras.Model(m.input, [m.get_layer(n).output for n in ("dnn_0", "dnn_1", "dnn_2")])
    outs = probe.predict(x, batch_size=4096, verbose=0)
    line = []
    for n, o in zip(("dnn_0", "dnn_1", "dnn_2"), outs):
        dead = (o.max(0) <= 0).sum(); always = (o.min(0) > 0).sum()
        line.append(f"{n}: dead {dead} always-on {always} mean-active {(o > 0).mean():.3f}")
    print(tag.ljust(5), " | ".join(line), flush=True)
stats(ref, "fp32")
for method in ("afm", "svd"):
    m, _ = compress_low_rank(ref, ds, method=method, dense_rank=4, seed=seed)
    stats(m, method)
