"""scikit-learn in one call: ``hecc.sklearn.compile(model, X_calibration)``.

    import hecc.sklearn
    fhe_model = hecc.sklearn.compile(pipeline, X_train)       # a fitted estimator or Pipeline
    fhe_model.predict(X, fhe="execute")     # "execute" (TenSEAL), "simulate" (CKKS simulator), "disable"
    fhe_model.predict_proba(X, fhe="execute"); fhe_model.decision_function(X, fhe="simulate")

What is encrypted. The server computes only the *linear scores*: the polynomial preprocessing
(StandardScaler, MinMaxScaler, PCA) and the estimator's ``X @ coef_.T + intercept_``. Everything
that is not polynomial runs on the client in plaintext, with the estimator's own rules:

- before encryption: a ``Normalizer`` (a division by a norm) and every step before it are applied
  to ``X`` by scikit-learn itself; the rest of the pipeline is compiled;
- after decryption: the class decision (``classes_[argmax]``, or ``classes_[score > 0]`` for two
  classes), the probabilities (logistic or softmax, as the estimator computes them), and the
  inverse link of ``PoissonRegressor``, ``GammaRegressor`` and ``TweedieRegressor`` (``exp``
  under a log link).

So ``predict`` returns the estimator's own classes (labels and dtype) and output types.

How the ONNX is made. The compiled part goes through skl2onnx (``zipmap`` off, ``raw_scores`` on
for classifiers, ``target_opset`` 17, float32 input with a free batch dimension). skl2onnx's graph
also holds the client-side steps (ArgMax, ArrayFeatureExtractor, Cast of the labels, Exp of the
log link); they are cut off here (the graph is trimmed, with the ModelProto's own protobuf
methods, to the nodes the score output needs) instead of being compiled, because the decision
is made on the client anyway. The score is the converter's ``probabilities`` output (raw scores)
for classifiers, and for regressors the input of the trailing Exp (or Reshape) of ``variable``.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, UserError

SUPPORTED_CLASSIFIERS = ("LogisticRegression", "LinearSVC", "SGDClassifier", "RidgeClassifier")
SUPPORTED_REGRESSORS = ("LinearRegression", "Ridge", "Lasso", "ElasticNet", "PoissonRegressor",
                        "GammaRegressor", "TweedieRegressor")
SUPPORTED_TRANSFORMERS = ("StandardScaler", "MinMaxScaler", "PCA")  # compiled (polynomial)
CLIENT_TRANSFORMERS = ("Normalizer",)  # run on the client before encryption
TARGET_OPSET = 17
FHE_BACKENDS = {"disable": "reference", "simulate": "sim", "execute": "tenseal"}


class UnsupportedEstimatorError(UserError):
    """A scikit-learn estimator (or pipeline step) ``hecc.sklearn.compile`` cannot compile; the
    message names it and lists the supported ones."""

    def __init__(self, name: str, where: str = "estimator"):
        self.estimator = name
        super().__init__(
            f"hecc.sklearn cannot compile the {where} {name}. Supported estimators: "
            f"{', '.join(SUPPORTED_CLASSIFIERS + SUPPORTED_REGRESSORS)}; in front of them, in a Pipeline: "
            f"{', '.join(SUPPORTED_TRANSFORMERS + CLIENT_TRANSFORMERS)} (Normalizer runs on the client). "
            "For other models, export ONNX yourself and use hecc.compile")


def compile(model, X_calibration, **options) -> "FHEModel":
    """Compile a fitted scikit-learn estimator or Pipeline for encrypted prediction.

    ``X_calibration``: representative inputs (the training set will do), in the pipeline's input
    space; they size the encryption parameters (values outside their range are warned about at
    prediction time). ``options`` go to ``hecc.compile`` (``layout``, ``scale_bits``, ...); without
    ``scale_bits`` and ``weight_scale_bits`` the most precise pair of ``PRECISION_LADDER`` that
    fits the parameters is taken.
    A ``Normalizer`` in the pipeline, and every step before it, is not polynomial and runs on the
    client in plaintext before encryption; the class decision, probabilities and the inverse link
    of the generalized linear regressors run on the client after decryption.
    """
    try:
        import skl2onnx  # noqa: F401  (imported here to say which extra is missing)
        from sklearn.pipeline import Pipeline
        from sklearn.utils.validation import check_is_fitted
    except ImportError:
        raise UserError("hecc.sklearn needs scikit-learn and skl2onnx: pip install 'hecc[sklearn]'") from None
    steps = list(model.steps) if isinstance(model, Pipeline) else [(type(model).__name__.lower(), model)]
    *transformers, (_, estimator) = steps
    kind = type(estimator).__name__
    if kind not in SUPPORTED_CLASSIFIERS + SUPPORTED_REGRESSORS:
        raise UnsupportedEstimatorError(kind)
    for _, step in transformers:
        if type(step).__name__ not in SUPPORTED_TRANSFORMERS + CLIENT_TRANSFORMERS:
            raise UnsupportedEstimatorError(type(step).__name__, "pipeline step")
    check_is_fitted(estimator)
    cut = max((i + 1 for i, (_, step) in enumerate(transformers)
               if type(step).__name__ in CLIENT_TRANSFORMERS), default=0)
    client = Pipeline(steps[:cut]) if cut else None
    converted = _with_index_labels(estimator)
    server = Pipeline(steps[cut:-1] + [(steps[-1][0], converted)]) if len(steps) - cut > 1 else converted
    X = _client_transform(client, X_calibration)
    onx, score = _scores_onnx(server, converted, X.shape[1])
    program = _compile_precise(onx.SerializeToString(), X, options, smallest=kind in SUPPORTED_CLASSIFIERS)
    return FHEModel(estimator, client, program, score)


# (scale_bits, weight_scale_bits), most precise first. A linear model multiplies once, so its
# precision is the weights' encoding scale (hecc's batch default of 14 bits leaves regression
# values 1e-3 off; 18 bits keep them within 1e-4); the largest that fit a 60-bit bottom prime
# depend on the output's magnitude. All but the last are precise enough for a classifier (whose
# answer is an argmax), so among them the one with the smallest rings wins (the smallest messages:
# N=2048 holds the batch layout's one prime at (26, 18) but not at (28, 20)); a regressor's answer
# is the value itself, so it takes the most precise that fits. The last is the fallback.
PRECISION_LADDER = ((30, 22), (28, 20), (26, 18), (26, 14))
# A regressor first tries scales beyond one 60-bit prime: the slots layout rescales the product by
# a 30-bit prime, so its values come out within about 1e-5 relative even near zero (the ladder's
# best, one prime, leaves about 3e-5 absolute: 2e-3 of a prediction of 0.02); the batch layout,
# which does not rescale before decryption, cannot hold them, so such a program has no batch layout.
REGRESSION_SCALES = (40, 30)


def _compile_precise(onnx_bytes: bytes, X, options: dict, smallest: bool = True):
    """``hecc.compile`` at the scales of ``PRECISION_LADDER`` that hold every layout: the most
    precise (first ``REGRESSION_SCALES``, whose program has the slots layout only), or
    (``smallest``) the one with the smallest rings; unless ``options`` name the scales
    themselves."""
    import hecc
    from .errors import ParameterError
    if "scale_bits" in options or "weight_scale_bits" in options:
        return hecc.compile(onnx_bytes, calibration=X, **options)
    if not smallest:
        try:
            program = hecc.compile(onnx_bytes, calibration=X, scale_bits=REGRESSION_SCALES[0],
                                   weight_scale_bits=REGRESSION_SCALES[1], **options)
            if "slots" in program.layouts:
                return program
        except ParameterError:
            pass
    complete, partial = [], None  # every layout compiled; the most precise that lacks a layout
    for scale_bits, weight_scale_bits in PRECISION_LADDER:
        if complete and (scale_bits, weight_scale_bits) == PRECISION_LADDER[-1]:
            break  # the fallback only when nothing more precise holds every layout
        try:
            program = hecc.compile(onnx_bytes, calibration=X, scale_bits=scale_bits,
                                   weight_scale_bits=weight_scale_bits, **options)
        except ParameterError:
            if not complete and partial is None and (scale_bits, weight_scale_bits) == PRECISION_LADDER[-1]:
                raise
            continue
        if program.artifact.manifest.get("layout_unavailable"):
            partial = partial or program
        else:
            complete.append(program)
            if not smallest:
                break
    if not complete:
        return partial
    if not smallest:
        return complete[0]
    return min(complete, key=_ring_degrees)  # min keeps the first (most precise) of equal rings


def _ring_degrees(program) -> int:
    """The sum of the ring degrees of the program's layouts (each encrypted input's size)."""
    return sum(program.with_layout(layout).parameters["poly_modulus_degree"] for layout in program.layouts)


class FHEModel:
    """A compiled scikit-learn model: ``predict``, ``decision_function`` and (when the estimator
    has it) ``predict_proba``, each with ``fhe="execute"`` (encrypted, TenSEAL), ``"simulate"``
    (the CKKS simulator) or ``"disable"`` (hecc's reference backend, float64 in numpy).
    ``program`` is the ``hecc.Program`` of the linear scores (save it, serve it with
    ``hecc.Server``); ``client_steps`` the pipeline steps run on the client before encryption;
    ``last_stats`` the statistics of the last encrypted run."""

    def __init__(self, estimator, client_steps, program, score_output: str):
        self.estimator = estimator
        self.client_steps = client_steps
        self.program = program
        self.score_output = score_output
        self.last_stats: dict | None = None
        self.is_classifier = type(estimator).__name__ in SUPPORTED_CLASSIFIERS
        if self.is_classifier:
            self.classes_ = estimator.classes_

    def scores(self, X, fhe: str = "disable", **run_options) -> np.ndarray:
        """The linear scores as the program computes them: (n,) for a binary classifier or a
        single-target regressor (before the inverse link), else (n, classes or targets)."""
        if fhe not in FHE_BACKENDS:
            raise UserError(f"unknown fhe mode {fhe!r}; choose execute, simulate or disable")
        x = _client_transform(self.client_steps, X)
        if fhe != "disable" and run_options.get("layout", "auto") == "auto":
            run_options = dict(run_options, layout=self._layout(len(x), fhe == "execute"))
        out = self.program.run(x, backend=FHE_BACKENDS[fhe], **run_options)
        self.last_stats = self.program.last_stats
        # the estimator's dtype (float32 when it was fitted on float32): its outputs', and what
        # its client-side rules (expit underflowing to 0, say) run in
        scores = np.asarray(out[self.score_output], dtype=np.result_type(self.estimator.coef_.dtype, np.float32))
        if self.is_classifier and len(self.classes_) == 2:
            return scores.reshape(len(x), -1)[:, -1]  # [-z, z] or [1 - z, z]: z is the last column
        if not self.is_classifier and np.ndim(self.estimator.coef_) == 1:
            return scores.reshape(len(x))
        return scores.reshape(len(x), -1)

    def _layout(self, runs: int, measure: bool) -> str:
        """The layout predicted fastest for ``runs`` inputs among batch and slots: the packed
        layout is left out of the automatic choice, because its products by interleaved plaintext
        vectors leave errors about a hundred times the batch layout's (2e-4 against 2e-6 of the
        largest score on MNIST), enough to flip a class whose score lies that close to a boundary
        (a binary LinearSVC: 1 of 1,000 test images); ``layout="packed"`` still asks for it."""
        program = self.program
        layouts = [layout for layout in program.layouts if layout != "packed"] or list(program.layouts)
        if len(layouts) == 1:
            return layouts[0]
        totals = {}
        for layout in layouts:
            estimate = program.estimate(runs, layout, measure)
            if estimate is None:
                return "slots" if runs == 1 and "slots" in layouts else layouts[0]
            totals[layout] = estimate["total"]
        return min(totals, key=totals.get)

    def decision_function(self, X, fhe: str = "disable", **run_options) -> np.ndarray:
        """The estimator's ``decision_function`` (classifiers) or linear predictor (regressors)."""
        return self.scores(X, fhe, **run_options)

    def predict(self, X, fhe: str = "disable", **run_options) -> np.ndarray:
        """Classes (the estimator's labels and dtype) or regression values, decided on the client."""
        scores = self.scores(X, fhe, **run_options)
        if not self.is_classifier:
            return _inverse_link(self.estimator)(scores)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    @property
    def predict_proba(self):
        """Class probabilities computed on the client from the decrypted scores, as the estimator
        computes them (absent when the estimator has no ``predict_proba``)."""
        if not hasattr(self.estimator, "predict_proba"):
            raise AttributeError(f"{type(self.estimator).__name__} has no predict_proba")
        return self._predict_proba

    def _predict_proba(self, X, fhe: str = "disable", **run_options) -> np.ndarray:
        return _probabilities(self.estimator, self.scores(X, fhe, **run_options))


def _client_transform(client, X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"X has shape {X.shape}; give a 2-D array (samples, features)")
    if client is not None:
        X = client.transform(X)
    return np.ascontiguousarray(X, dtype=np.float32)


def _with_index_labels(estimator):
    """A shallow copy whose classes are 0..k-1: skl2onnx refuses some label dtypes (uint8, ...)
    and the labels are the client's business anyway."""
    import copy
    if not hasattr(estimator, "classes_"):
        return estimator
    converted = copy.copy(estimator)
    converted.classes_ = np.arange(len(estimator.classes_))
    return converted


def _scores_onnx(server, estimator, n_features: int):
    """skl2onnx's ONNX of the compiled part, trimmed to the nodes its linear scores need, and the
    name of the score output."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    classifier = type(estimator).__name__ in SUPPORTED_CLASSIFIERS
    options = {id(estimator): {"raw_scores": True, **({"zipmap": False} if hasattr(estimator, "predict_proba")
                                                     or type(estimator).__name__ == "SGDClassifier" else {})}}
    onx = to_onnx(server, initial_types=[("X", FloatTensorType([None, n_features]))],
                  options=options if classifier else None, target_opset=TARGET_OPSET)
    producers = {out: node for node in onx.graph.node for out in node.output}
    if classifier:
        score = "probabilities"
    else:
        score = onx.graph.output[0].name
        while score in producers and producers[score].op_type in ("Exp", "Reshape", "Identity"):
            score = producers[score].input[0]
    _keep_only(onx, score)
    return onx, score


def _keep_only(onx, output: str) -> None:
    """Trim the graph in place to the nodes and initializers ``output`` needs, with ``output`` as
    the one graph output (float, its shape left to hecc's inference)."""
    graph = onx.graph
    needed, kept = {output}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(type(node).FromString(node.SerializeToString()))
            needed.update(name for name in node.input if name)
    declared = {vi.name: vi for vi in graph.output}
    template = type(graph.output[0]).FromString(declared.get(output, graph.output[0]).SerializeToString())
    if output not in declared:  # an intermediate: the rank is unknown here, hecc infers the shape
        template.name = output
        template.type.tensor_type.elem_type = 1  # FLOAT
        del template.type.tensor_type.shape.dim[:]
    initializers = [type(t).FromString(t.SerializeToString()) for t in graph.initializer if t.name in needed]
    del graph.node[:], graph.output[:], graph.initializer[:]
    graph.node.extend(reversed(kept))
    graph.output.append(template)
    graph.initializer.extend(initializers)


def _inverse_link(estimator):
    """The regressor's inverse link, applied on the client: exp under a log link, else none."""
    kind = type(estimator).__name__
    if kind in ("PoissonRegressor", "GammaRegressor"):
        return np.exp
    if kind == "TweedieRegressor":
        link = estimator.link if estimator.link != "auto" else ("identity" if estimator.power <= 0 else "log")
        return np.exp if link == "log" else (lambda z: z)
    return lambda z: z


def _probabilities(estimator, scores: np.ndarray) -> np.ndarray:
    """The estimator's ``predict_proba`` from its decision scores."""
    from scipy.special import expit, softmax
    kind = type(estimator).__name__
    binary = scores.ndim == 1
    if kind == "SGDClassifier" and estimator.loss == "modified_huber":
        prob = (np.clip(scores, -1, 1) + 1) / 2
        if binary:
            return np.stack([1 - prob, prob], axis=1)
        total = prob.sum(axis=1, keepdims=True)
        prob = np.where(total == 0, 1.0, prob)
        return prob / np.where(total == 0, prob.shape[1], total)
    if binary:
        p = expit(scores)
        return np.stack([1 - p, p], axis=1)
    multi_class = getattr(estimator, "multi_class", "auto")
    ovr = kind == "SGDClassifier" or multi_class == "ovr" or (
        multi_class == "auto" and getattr(estimator, "solver", "") == "liblinear")
    if ovr:  # as LinearClassifierMixin._predict_proba_lr: uniform where every expit is 0
        p = expit(scores)
        total = p.sum(axis=1, keepdims=True)
        p[total[:, 0] == 0] = 1
        return p / np.where(total == 0, p.shape[1], total)
    return softmax(scores, axis=1)
