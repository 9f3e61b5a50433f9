"""Orion's side of ``benchmarks/orion_lenet.py``: runs in Orion's own virtual environment
(``pip install orion-fhe==1.0.2``), never imports hecc.

    $HECC_ORION_PYTHON benchmarks/peers/orion_lenet.py WEIGHTS.npz IMAGES.npz OUT.json

WEIGHTS.npz holds the state dict of ``orion.models.LeNet`` (conv1, bn1, conv2, bn2, fc1, bn3,
fc2; taken from the ONNX model hecc compiles); IMAGES.npz holds ``calibration`` (inputs for
``orion.fit``) and ``test`` (the images run one at a time, encrypted). Writes per-image
seconds, logits, rotation-key count and bytes, and the parameters to OUT.json.
"""
import json
import sys
import time

import numpy as np
import torch

import orion
import orion.models as models

# 128-bit security at N=2^14 (log QP = 302 <= 438, HomomorphicEncryption.org, ternary secret):
# one 40-bit prime at the bottom, seven 26-bit primes for the network's seven levels (four linear
# layers, three squares), two 40-bit key-switching primes; the conjugate-invariant ring gives
# 2^14 real slots.
CONFIG = {
    "ckks_params": {"LogN": 14, "LogQ": [40, 26, 26, 26, 26, 26, 26, 26], "LogP": [40, 40],
                    "LogScale": 26, "H": 8192, "RingType": "ConjugateInvariant"},
    "orion": {"margin": 2, "embedding_method": "hybrid", "backend": "lattigo", "fuse_modules": True,
              "debug": False, "diags_path": "", "keys_path": "", "io_mode": "none"},
}


def main(weights_path, images_path, out_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    scheme = orion.init_scheme(CONFIG)
    net = models.LeNet()
    with np.load(weights_path) as w:
        state = {k: torch.from_numpy(np.array(w[k])) for k in w.files}
    net.load_state_dict(state, strict=False)
    with np.load(images_path) as d:
        calibration = torch.from_numpy(d["calibration"].astype(np.float32))
        test = torch.from_numpy(d["test"].astype(np.float32))
    net.eval()
    with torch.no_grad():
        clear = net(test).numpy()
    start = time.perf_counter()
    # as Orion's examples do: a loader of batch size 1 (Orion compiles for the batch size it is
    # fitted with; a tensor of 2,000 images would make it pack one inference for 2,000 at once)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(calibration, torch.zeros(len(calibration))),
                                         batch_size=1)
    orion.fit(net, loader)
    input_level = orion.compile(net)
    compile_seconds = time.perf_counter() - start
    keys = sorted(scheme.lt_evaluator.saved_rotation_keys)
    serial, pointer = scheme.backend.GenerateAndSerializeRotationKey(keys[0])
    key_bytes = len(serial)
    scheme.backend.FreeCArray(pointer)
    net.he()
    seconds, logits = [], []
    for i in range(test.shape[0]):
        begin = time.perf_counter()
        ctxt = orion.encrypt(orion.encode(test[i:i + 1], input_level))
        out = net(ctxt)
        logits.append(out.decrypt().decode().reshape(-1)[:10].tolist())
        seconds.append(time.perf_counter() - begin)
        print(f"orion: image {i + 1}/{test.shape[0]}: {seconds[-1]:.3f} s", file=sys.stderr, flush=True)
    json.dump({"seconds": seconds, "logits": logits, "clear_logits": clear.tolist(),
               "rotation_keys": len(keys), "bytes_per_key": key_bytes,
               # the relinearization key is one more key-switching key of the same size
               "eval_key_bytes": (len(keys) + 1) * key_bytes, "compile_seconds": compile_seconds,
               "input_level": input_level, "config": CONFIG["ckks_params"],
               "orion_version": "1.0.2"}, open(out_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
