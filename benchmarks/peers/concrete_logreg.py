"""Concrete ML's side of ``benchmarks/concrete_logreg.py``: runs in Concrete ML's own virtual
environment (``pip install concrete-ml==1.9.0``), never imports hecc.

    $HECC_CONCRETE_PYTHON benchmarks/peers/concrete_logreg.py MODEL.npz DATA.npz OUT.json

MODEL.npz holds the fitted scikit-learn LogisticRegression's ``coef``, ``intercept`` and
``classes``; DATA.npz ``calibration`` (what Concrete ML quantizes and compiles with: the training
inputs) and ``test``. The model is rebuilt from its parameters (no pickle crosses the two
environments), turned into Concrete ML's model with ``from_sklearn_model`` at its default
quantization (8 bits), compiled, then run through Concrete ML's client/server deployment API: one
sample alone, then every test sample one after the other (Concrete ML's ``predict`` also runs one
sample at a time). Writes seconds, bytes of the serialized encrypted input, result and evaluation
keys, and the predicted classes to OUT.json.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from concrete.ml.deployment import FHEModelClient, FHEModelDev, FHEModelServer
from concrete.ml.sklearn import LogisticRegression


def main(model_path, data_path, out_path):
    with np.load(model_path) as m:
        sk = SkLogisticRegression()
        sk.coef_, sk.intercept_, sk.classes_ = m["coef"], m["intercept"], m["classes"]
    with np.load(data_path) as d:
        calibration, test = d["calibration"], d["test"]
    sk.n_features_in_ = calibration.shape[1]
    start = time.perf_counter()
    model = LogisticRegression.from_sklearn_model(sk, calibration)
    model.compile(calibration)
    compile_seconds = time.perf_counter() - start
    clear = model.predict(test)  # quantized, in the clear: what FHE should reproduce
    with tempfile.TemporaryDirectory() as tmp:
        FHEModelDev(os.path.join(tmp, "model"), model).save()
        client = FHEModelClient(os.path.join(tmp, "model"), key_dir=os.path.join(tmp, "keys"))
        server = FHEModelServer(os.path.join(tmp, "model"))
        server.load()
        start = time.perf_counter()
        client.generate_private_and_evaluation_keys()
        keygen_seconds = time.perf_counter() - start
        keys = client.get_serialized_evaluation_keys()
        seconds, input_bytes, output_bytes, scores = [], [], [], []
        for i in range(len(test)):
            start = time.perf_counter()
            encrypted = client.quantize_encrypt_serialize(test[i:i + 1])
            result = server.run(encrypted, keys)
            scores.append(np.asarray(client.deserialize_decrypt_dequantize(result)).reshape(-1))
            seconds.append(time.perf_counter() - start)
            input_bytes.append(len(encrypted))
            output_bytes.append(len(result))
    scores = np.asarray(scores)
    predicted = sk.classes_[scores.argmax(1)] if scores.shape[1] > 1 else sk.classes_[(scores[:, 0] > 0.5).astype(int)]
    with open(out_path, "w") as f:
        json.dump({"compile_seconds": compile_seconds, "keygen_seconds": keygen_seconds,
                   "eval_key_bytes": len(keys), "seconds": seconds, "input_bytes": input_bytes,
                   "output_bytes": output_bytes, "predicted": predicted.tolist(),
                   "clear_quantized_predicted": np.asarray(clear).tolist(),
                   "n_bits": getattr(model, "n_bits", None) if not isinstance(getattr(model, "n_bits", None), dict)
                   else model.n_bits}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
