"""Low-rank experiment: AFM factor parameterisations vs SVD, after fine-tuning."""
import json, sys, time
import numpy as np
import keras
from keras_ctr_compress.artifacts import load_trained
from keras_ctr_compress.data import load_dataset
import keras_ctr_compress.compress.low_rank
lr = sys.modules['keras_ctr_compress.compress.low_rank']
from keras_ctr_compress.compress import compress_low_rank
from keras_ctr_compress.models.training import evaluate

seed = int(sys.argv[1]); variants = sys.argv[2].split(","); out = sys.argv[3]
orig_afm = lr.afm_dense_factors

def canonical_afm(kernel, bias, out_mean, out_cov, rank, *, balance=True):
    f = orig_afm(kernel, bias, out_mean, out_cov, rank, balance=False)
    # f.u = K U, f.v = U^T, f.middle_bias = U^T b
    p, s, qt = np.linalg.svd(f.u, full_matrices=False)
    root = np.sqrt(s)
    u = p * root
    v = (root[:, None] * qt) @ f.v
    m = (f.middle_bias @ qt.T) / root
    return lr.DenseFactors(u=u, v=v, middle_bias=m, bias=f.bias)

orig_moments = lr.DenseInputStats.input_moments
DROP = [0.0]
def drop_moments(self):
    mu, cov = orig_moments(self)
    p = DROP[0]
    m2 = self.s2.diagonal() / self.n  # E[x^2]: inverted dropout adds p/(1-p) E[x^2] to each input's variance
    return mu, cov + np.diag(p / (1 - p) * m2)

ALPHA = [1.0]
def temper_moments(self):
    # AFM with C_x^alpha: alpha 1 is AFM, alpha 0 the weights' SVD (identity input covariance)
    mu, cov = orig_moments(self)
    w, v = np.linalg.eigh(cov)
    return mu, (v * np.clip(w, 0, None) ** ALPHA[0]) @ v.T

ds = load_dataset("frappe")
ref = load_trained(f"/tmp/bench/refs/frappe_deepfm_seed{seed}").model
res = []
for var in variants:
    method, dr, er, mode, *rest = var.split(":")
    opts = dict(kv.split("=") for kv in rest[0].split("+")) if rest else {}
    lr.afm_dense_factors = canonical_afm if mode == "canon" else orig_afm
    lr.DenseInputStats.input_moments = (drop_moments if "drop" in opts else
                                         temper_moments if "alpha" in opts else orig_moments)
    ALPHA[0] = float(opts.get("alpha", 1))
    DROP[0] = float(opts.get("drop", 0))
    ft_opts = {"epochs": int(opts.get("ep", 5)), "learning_rate": float(opts.get("lr", 1e-4)),
               "patience": int(opts.get("pat", 1))}
    t = time.time()
    only = {k: int(er) for k in opts["only"].split("/")} if "only" in opts else None
    m, info = compress_low_rank(ref, ds, method=method, dense_rank=int(dr) if dr != "-" else None, ranks=only,
                                embedding_rank=int(er) if er != "-" and not only else None,
                                fold_embeddings=er != "-" and opts.get("fold", "1") == "1", finetune=False, seed=seed,
                                order=opts.get("order", "independent"),
                                middle_activation=opts.get("act"), table_weighting=opts.get("tw", "frequency"))
    from keras_ctr_compress.layers import LowRankEmbedding
    from keras_ctr_compress.layers.quantized_embedding import l2_coefficient
    for L in m.layers:
        if isinstance(L, LowRankEmbedding) and L.codes.regularizer is not None:
            c = l2_coefficient(L.codes.regularizer)
            if opts.get("reg") == "none":
                L.codes.regularizer = None
            elif opts.get("reg") == "recon":
                L.codes.regularizer = (lambda L, c: lambda codes: c * keras.ops.sum(keras.ops.square(keras.ops.matmul(codes, L.projection) + L.mean)))(L, c)
    pre = evaluate(m, ds.test)["auc"]
    from keras_ctr_compress.compress.finetune import finetune
    if "warm" in opts:
        ftm = sys.modules['keras_ctr_compress.compress.finetune']
        steps = int(float(opts["warm"]) * 226)
        class Warm(keras.callbacks.Callback):
            def __init__(s2): super().__init__(); s2.k = 0
            def on_train_batch_begin(s2, batch, logs=None):
                if s2.k <= steps:
                    s2.model.optimizer.learning_rate.assign(ft_opts["learning_rate"] * min(1.0, (s2.k + 1) / steps))
                s2.k += 1
        orig_tm = ftm.train_model
        ftm.train_model = lambda *a, **k: orig_tm(*a, callbacks=[Warm()], **k)
        fi = ftm.finetune(m, ds.train, ds.valid, seed=seed, **ft_opts)
        ftm.train_model = orig_tm
    else:
        fi = finetune(m, ds.train, ds.valid, seed=seed, **ft_opts)
    post = evaluate(m, ds.test)["auc"]
    row = dict(seed=seed, var=var, pre=pre, post=post, best_epoch=fi["best_epoch"],
               val0=fi["initial_val_auc"], val=fi["best_val_auc"], secs=time.time() - t, hist=[round(h, 5) for h in fi["history"].get("val_auc", [])] if isinstance(fi["history"], dict) else None)
    print(json.dumps(row), flush=True)
    res.append(row)
    json.dump(res, open(out, "w"), indent=1)
