"""``he_friendly(model, data)``: a PyTorch model hecc compiles cheaply, fine-tuned to answer as the
original does.

What it swaps, in a deep copy (the caller's model is never modified):

- activation modules (``ACTIVATIONS``: nn.ReLU, GELU, SiLU, LeakyReLU, ELU, Tanh, Sigmoid, ...) ->
  ``PolyActivation``, a trainable polynomial of ``degree`` (default 2) without a linear term,
  initialised by a least-squares fit of the activation on the interval of inputs it sees on the
  first ``RANGE_INPUTS`` inputs of the data, widened by ``margin`` of its width on each side: the
  interval the polynomial is trusted on, kept on the module as the buffers ``lo`` and ``hi``;
- nn.MaxPool1d/2d -> nn.AvgPool1d/2d (same kernel, stride, padding and ceil_mode;
  ``count_include_pad=False``, since max pooling never picks its padding) and
  nn.AdaptiveMaxPool1d/2d -> nn.AdaptiveAvgPool1d/2d;
- transformers' nn.LayerNorm -> ``AffineNorm``, a learned scale and shift per feature (no mean,
  variance or inverse square root: LayerNorm's Newton 1/sqrt alone costs a dozen levels),
  initialised per feature by the least-squares line from the feature to LayerNorm's output on
  the data;
- nn.Softmax (attention written as vit-pytorch and many ViTs write it, ``self.attend =
  nn.Softmax(dim=-1)``) -> ``PolySoftmax``, polynomial attention (u = scale * x + shift,
  weights u^2 / n over the n scores of a row: one level, where exp and a reciprocal cost about
  twenty), scale and shift learned, initialised by the least-squares fit of u^2 to n softmax(x)
  on the data's scores. A softmax whose output is the model's stays: hecc computes it exactly,
  on the client.

Modules are found at any depth (nn.Sequential, ModuleList, custom modules' children), shared
instances included. The copy is then fine-tuned, all parameters trainable, on the loss

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
    + range_weight * sum over PolyActivations of ((distance outside [lo, hi]) / (hi - lo))^2,
      summed over the elements of one input and averaged over the batch

(only the first term without labels; the teacher is the original in eval mode), with AdamW, a
cosine-decaying learning rate and gradients clipped to norm 1 (networks with square activations
diverge without it). The range term keeps each polynomial's inputs where it was fitted, so that
hecc's calibration later sees the ranges the polynomial is meant for. It is summed over an
input's elements, not averaged, so that its pull on one value outside is as strong as the task
loss's (averaged, 0.7% of LeNet-5's activation inputs left their interval; summed, 0.05%).

Assumes: a classifier whose output is logits (N, classes); labels, when given, are class indices;
``data`` is (inputs, labels) tensors or arrays, inputs alone, or a DataLoader of such batches.
Guarantees: the returned model (in eval mode) holds no activation, max-pool or LayerNorm module
and no Softmax module but at its output; it exports with ``torch.onnx.export`` (opset 13) to Sub, Div, Mul and Add in place of every activation (at
degree 2 a * ((x - center) / scale)^2 + c: the x^2 of Orion's networks with a shift and a scale
that fold into the layer before) and hecc's ONNX frontend imports it with no activation left to
approximate. That is checked before fine-tuning: activations, max pooling, softmax or layer
normalization written as functions in a forward (``F.relu``, ``torch.sigmoid``, ``F.max_pool2d``,
``x.softmax(-1)``, ``F.layer_norm``), and nn.MultiheadAttention (its softmax is inside PyTorch's
function), which cannot be swapped, and anything else hecc refuses raise ``UserError`` naming
what to change, instead of a half-converted model. A model with nothing to swap is returned as an
unchanged copy, with a ``HeccWarning``.
Deterministic for a given ``seed``; the caller's random state is left as it was.
"""
from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import HeccWarning, InputError, UserError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Mish)
POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d}
ADAPTIVE_POOLS = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d}
MIN_DEGREE, MAX_DEGREE = 2, 8  # degree 1 would make the network linear
RANGE_INPUTS = 2048  # inputs the activation intervals are measured on
FIT_VALUES = 20000  # activation inputs kept per activation for the least-squares fit
GRID = 200
GRID_WEIGHT = 0.05  # share of the fit's weight on a uniform grid of the interval (bounds the tails)
# ONNX ops a forward may compute as functions, and the module he_friendly would replace instead
FUNCTIONAL = {"Relu": "nn.ReLU", "LeakyRelu": "nn.LeakyReLU", "Gelu": "nn.GELU", "Erf": "nn.GELU",
              "Sigmoid": "nn.Sigmoid or nn.SiLU", "Tanh": "nn.Tanh", "Elu": "nn.ELU",
              "Softplus": "nn.Softplus", "HardSigmoid": "nn.Hardsigmoid", "HardSwish": "nn.Hardswish",
              "Clip": "nn.ReLU6 or nn.Hardtanh", "MaxPool": "nn.MaxPool2d",
              "GlobalMaxPool": "nn.AdaptiveMaxPool2d(1)"}


class AffineNorm(nn.Module):
    """LayerNorm's stand-in: y = x * weight + bias, one weight and bias per element of the
    normalized shape (the trailing dimensions), learned."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())

    def forward(self, x):
        return x * self.weight + self.bias


class PolySoftmax(nn.Module):
    """Softmax's stand-in along ``dim``: u = scale * x + shift, y = u^2 / n, n the size of ``dim``
    (weights that grow with the score like exp's, normalised by the count instead of the sum:
    no reciprocal). ``scale`` and ``shift`` are learned scalars."""

    def __init__(self, dim: int, scale: float, shift: float):
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.shift = nn.Parameter(torch.tensor(float(shift)))

    def forward(self, x):
        u = x * self.scale + self.shift
        return u * u / x.shape[self.dim]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale.item():.4g}, shift={self.shift.item():.4g}"


class PolyActivation(nn.Module):
    """y = coefficients[0] + sum over k = 2..degree of coefficients[k - 1] * u^k, u = (x - center) / scale;
    trusted for x in [lo, hi] (where |u| <= 1).

    No linear term: one would let hecc merge the layers before and after the activation into one
    linear map of the layer before's input, far larger (the slots layout refuses LeNet-5's). At
    degree 2 that costs nothing (every parabola is a * (x - vertex)^2 + c); above, ``center`` is a
    critical point the fit chooses. (x - center) / scale folds into the layer before's weights and
    bias and keeps the powers within [-1, 1]: powers of x itself reach values like 20^4, whose tiny
    coefficients round to zero at hecc's plaintext scale (a degree-4 LeNet-5 was refused for errors
    500,000 times its outputs). u^k is a product of earlier powers (u^2 = u*u, u^3 = u^2*u,
    u^4 = u^2*u^2, ...): multiplicative depth ceil(log2 degree)."""

    def __init__(self, coefficients, center: float, scale: float, lo: float, hi: float, kind: str = ""):
        super().__init__()
        self.coefficients = nn.Parameter(torch.as_tensor(coefficients, dtype=torch.float32).clone())
        self.center = nn.Parameter(torch.tensor(float(center)))
        for name, value in (("scale", scale), ("lo", lo), ("hi", hi)):
            self.register_buffer(name, torch.tensor(float(value)))
        self.kind = kind

    @property
    def degree(self) -> int:
        return len(self.coefficients)

    def forward(self, x):
        powers = {1: (x - self.center) / self.scale}
        for k in range(2, self.degree + 1):
            high = 1 << (k.bit_length() - 1)  # the largest power of two <= k
            left, right = (high // 2, high // 2) if k == high else (high, k - high)
            powers[k] = powers[left] * powers[right]
        y = self.coefficients[0]
        for k in range(2, self.degree + 1):
            y = y + self.coefficients[k - 1] * powers[k]
        return y

    def extra_repr(self) -> str:
        kind = f"{self.kind}, " if self.kind else ""
        return (f"{kind}degree={self.degree}, center={self.center.item():.4g}, "
                f"interval=[{self.lo.item():.4g}, {self.hi.item():.4g}]")


def fit_polynomial(activation, values: np.ndarray, lo: float, hi: float, degree: int):
    """(coefficients, center, scale) of a PolyActivation fitted to ``activation`` (a function of a
    tensor) by least squares on its inputs ``values`` plus a lighter uniform grid of [lo, hi]. The
    center is the best of the unconstrained fit's real critical points and a grid of
    [lo - width, hi + width]; for even degrees the former gives the unconstrained optimum."""
    x = np.concatenate([values, np.linspace(lo, hi, GRID)])
    weights = np.sqrt(np.concatenate([np.ones(len(values)),
                                      np.full(GRID, GRID_WEIGHT * max(len(values), 1) / GRID)]))
    with torch.no_grad():
        y = activation(torch.from_numpy(x.copy())).numpy()
    width = hi - lo
    free = np.polynomial.Polynomial.fit(x, y, degree, w=weights)
    critical = [r.real for r in free.deriv().roots() if abs(r.imag) < 1e-9 * max(width, 1.0)]
    candidates = [r for r in critical if lo - width <= r <= hi + width]
    exponents = np.array([0, *range(2, degree + 1)])
    best = None
    for center in candidates + list(np.linspace(lo - width, hi + width, 101)):
        scale = max(abs(lo - center), abs(hi - center))
        basis = ((x - center) / scale)[:, None] ** exponents
        coefficients = np.linalg.lstsq(basis * weights[:, None], y * weights, rcond=None)[0]
        residual = float(np.sum((weights * (basis @ coefficients - y)) ** 2))
        if best is None or residual < best[0]:
            best = (residual, coefficients, center, scale)
    return best[1:]


def he_friendly(model: nn.Module, data, *, degree: int = 2, epochs: int = 3, lr: float = 1e-3,
                batch_size: int = 128, temperature: float = 4.0, alpha: float = 0.5, margin: float = 0.1,
                range_weight: float = 1.0, weight_decay: float = 0.0, seed: int = 0,
                progress=None) -> nn.Module:
    """A copy of ``model`` whose activations are trainable polynomials of ``degree`` and whose max
    pooling is average pooling, fine-tuned for ``epochs`` passes over ``data`` by distillation from
    ``model`` (see the module docstring). ``data``: (inputs, labels) tensors or arrays (labels may
    be None), inputs alone, or a DataLoader of (inputs, labels) or inputs batches (its own batch
    size and order are used). ``alpha`` weighs distillation against the labels' cross-entropy,
    ``temperature`` softens both outputs, ``margin`` widens the measured intervals, ``range_weight``
    weighs the penalty on inputs outside them. ``progress(message)`` gets one line per epoch."""
    _check_options(model, degree, epochs, lr, batch_size, temperature, alpha, margin, range_weight)
    batches = Batches(data, batch_size, seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    student = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        replaced = _replace_modules(student, batches, degree, margin, device)
        _check_compilable(student, batches.example().to(device))
        if not replaced:
            warnings.warn("he_friendly found nothing to convert: the model has no activation or max-pool "
                          "module and hecc compiles it as it is; returning an unchanged copy",
                          HeccWarning, stacklevel=3)
            return student
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        _fine_tune(student, teacher, batches, epochs, lr, weight_decay, temperature, alpha, range_weight,
                   device, progress)
    return student.eval()


def _check_options(model, degree, epochs, lr, batch_size, temperature, alpha, margin, range_weight):
    if not isinstance(model, nn.Module):
        raise UserError(f"he_friendly needs a torch.nn.Module, got {type(model).__name__}")
    if type(degree) is not int or not MIN_DEGREE <= degree <= MAX_DEGREE:
        raise UserError(f"degree must be an integer from {MIN_DEGREE} to {MAX_DEGREE}, got {degree!r} (2 "
                        "costs one multiplicative level per activation, 3 and 4 two, 5 to 8 three; "
                        "degree 1 would make the network linear)")
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if type(value) is not int or value < least:
            raise UserError(f"{name} must be an integer >= {least}, got {value!r}")
    for name, value, ok in (("lr", lr, lr > 0), ("temperature", temperature, temperature > 0),
                            ("alpha", alpha, 0 <= alpha <= 1), ("margin", margin, margin >= 0),
                            ("range_weight", range_weight, range_weight >= 0)):
        if not ok or not math.isfinite(value):
            raise UserError(f"{name} = {value!r} is out of range (lr and temperature > 0, alpha in "
                            "[0, 1], margin and range_weight >= 0)")


class Batches:
    """``data`` as (inputs, labels or None) batches, checked once."""

    def __init__(self, data, batch_size: int, seed: int):
        self.loader, self.batch_size, self.seed = None, batch_size, seed
        if isinstance(data, torch.utils.data.DataLoader):
            self.loader = data
            first = next(iter(data), None)
            if first is None:
                raise InputError("the DataLoader given as data yields no batch")
            self.labelled = self._split(first)[1] is not None
            return
        if isinstance(data, (tuple, list)) and len(data) == 2:
            inputs, labels = data
        elif isinstance(data, (torch.Tensor, np.ndarray)):
            inputs, labels = data, None
        else:
            raise InputError(f"data must be (inputs, labels) tensors or arrays, an inputs tensor, or a "
                             f"torch DataLoader; got {type(data).__name__}")
        self.inputs = _tensor(inputs, "inputs")
        if len(self.inputs) == 0:
            raise InputError("data holds no inputs; give at least one batch of training data")
        self.labels = None if labels is None else _labels(labels, len(self.inputs))
        self.labelled = self.labels is not None

    def _split(self, batch):
        if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
            x = _tensor(batch[0], "a batch's inputs")
            return x, (_labels(batch[1], len(x)) if len(batch) == 2 and batch[1] is not None else None)
        if isinstance(batch, (torch.Tensor, np.ndarray)):
            return _tensor(batch, "a batch"), None
        raise InputError(f"the DataLoader yields {type(batch).__name__} batches; it must yield (inputs, "
                         "labels) or inputs tensors")

    def __len__(self) -> int:
        """Batches per epoch (0 if the DataLoader cannot say)."""
        if self.loader is None:
            return -(-len(self.inputs) // self.batch_size)
        try:
            return len(self.loader)
        except TypeError:
            return 0

    def epoch(self, index: int):
        if self.loader is not None:
            yield from (self._split(b) for b in self.loader)
            return
        order = torch.randperm(len(self.inputs), generator=torch.Generator().manual_seed(self.seed + index))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.inputs[idx], None if self.labels is None else self.labels[idx]

    def first(self, count: int):
        """The first ``count`` inputs (all if there are fewer), in batches."""
        seen = 0
        for batch in self.loader if self.loader is not None else self.inputs.split(self.batch_size):
            x = self._split(batch)[0] if self.loader is not None else batch
            yield x[:count - seen]
            seen += len(x)
            if seen >= count:
                return

    def example(self):
        return next(self.first(1))


def _tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise InputError(f"{what} must be numbers, got an array of {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 0:
        raise InputError(f"{what} must have a leading batch dimension, got a scalar")
    return x


def _labels(y, count: int) -> torch.Tensor:
    y = torch.from_numpy(np.asarray(y)) if isinstance(y, (np.ndarray, list)) else y
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
        raise InputError("labels must be a 1-D tensor or array of integer class indices (or None to "
                         "distill from the original model alone)")
    if len(y) != count:
        raise InputError(f"{len(y)} labels for {count} inputs; give one label per input")
    return y.long()


def _replace_modules(model: nn.Module, batches: Batches, degree: int, margin: float, device) -> int:
    """Swap activations for fitted PolyActivations and max for average pooling, in place; returns
    how many modules were swapped."""
    replacements: dict[int, nn.Module] = {}
    for module in model.modules():
        if type(module) in POOLS or type(module) in ADAPTIVE_POOLS:
            replacements[id(module)] = _average_pool(module)
        elif isinstance(module, nn.MultiheadAttention):
            raise UserError("he_friendly cannot replace the softmax inside nn.MultiheadAttention (PyTorch "
                            "computes it in a function); write the attention with an nn.Softmax(dim=-1) "
                            "module applied to the scores (as vit-pytorch does), which it replaces by "
                            "polynomial attention")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    for module, (slope, intercept) in zip(norms, _norm_fits(model, norms, batches, device)):
        gamma = module.weight.detach() if module.weight is not None else torch.ones_like(slope)
        beta = module.bias.detach() if module.bias is not None else torch.zeros_like(slope)
        replacements[id(module)] = AffineNorm(gamma * slope, gamma * intercept + beta).to(device)
    softmaxes = _inside(model, [m for m in model.modules() if isinstance(m, nn.Softmax)], batches, device)
    for module in softmaxes:
        if module.dim is None:
            raise UserError(f"{module} has no dim; give nn.Softmax the axis it normalizes (dim=-1 for "
                            "attention scores)")
    for module, (scale, shift) in zip(softmaxes, _softmax_fits(model, softmaxes, batches, device)):
        replacements[id(module)] = PolySoftmax(module.dim, scale, shift).to(device)
    activations = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    for module, (lo, hi, values) in zip(activations, _activation_inputs(model, activations, batches, device)):
        width = max(hi - lo, 1e-6)
        lo, hi = lo - margin * width, hi + margin * width
        fitted = fit_polynomial(copy.deepcopy(module).double().cpu(), values, lo, hi, degree)
        replacements[id(module)] = PolyActivation(*fitted, lo, hi, type(module).__name__).to(device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, name, replacements[id(child)])
    return len(replacements)


def _average_pool(pool: nn.Module) -> nn.Module:
    if pool.return_indices or any(d != 1 for d in np.atleast_1d(getattr(pool, "dilation", 1))):
        raise UserError(f"{pool} has no average-pooling equivalent (dilation or return_indices); use a "
                        "plain max pooling or an average pooling in the model")
    if type(pool) in ADAPTIVE_POOLS:
        return ADAPTIVE_POOLS[type(pool)](pool.output_size)
    return POOLS[type(pool)](pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode,
                             count_include_pad=False)


@torch.no_grad()
def _inside(model, softmaxes, batches: Batches, device) -> list:
    """The softmax modules whose output is not the model's output: attention's, which run on
    the server; a classifier's final softmax stays (hecc computes it exactly, client-side)."""
    if not softmaxes:
        return []
    made = {}
    handles = [m.register_forward_hook(lambda module, inputs, output: made.__setitem__(id(module), output))
               for m in softmaxes]
    try:
        out = model(batches.example().to(device))
    finally:
        for h in handles:
            h.remove()
    return [m for m in softmaxes if made.get(id(m)) is not out]


@torch.no_grad()
def _observe(model, modules, record, batches: Batches, device) -> None:
    """Runs the first RANGE_INPUTS inputs through ``model`` with ``record(index, module, input,
    output)`` called on every call of each of ``modules``."""
    def hook(index):
        return lambda module, inputs, output: record(index, module, inputs[0].detach(), output.detach())
    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        for x in batches.first(RANGE_INPUTS):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()


def _softmax_fits(model, softmaxes, batches: Batches, device) -> list[tuple[float, float]]:
    """Per nn.Softmax, (scale, shift) of the PolySoftmax whose (scale * x + shift)^2 is nearest to
    n * softmax(x) on a sample of its inputs over the first RANGE_INPUTS inputs: the least-squares
    quadratic c2 x^2 + c1 x + c0, read as (sqrt(c2) x + c1 / (2 sqrt(c2)))^2; where that
    quadratic opens downwards, u = (x - lo) / (hi - lo) over the inputs' interval."""
    seen = [[[], []] for _ in softmaxes]
    generator = torch.Generator().manual_seed(0)

    def record(index, module, x, output):
        keep = torch.randperm(x.numel(), generator=generator)[:FIT_VALUES]
        seen[index][0].append(x.reshape(-1).cpu()[keep].double().numpy())
        seen[index][1].append((output.reshape(-1).cpu()[keep].double() * x.shape[module.dim]).numpy())
    _observe(model, softmaxes, record, batches, device)
    fits = []
    for module, (xs, ys) in zip(softmaxes, seen):
        if not xs:
            raise UserError(f"the softmax module {module} is never called on the data; remove it")
        x, y = np.concatenate(xs), np.concatenate(ys)
        c0, c1, c2 = np.polynomial.polynomial.polyfit(x, y, 2)
        if c2 > 1e-12:
            a = math.sqrt(c2)
            fits.append((a, c1 / (2 * a)))
        else:
            lo, hi = float(x.min()), float(x.max())
            width = max(hi - lo, 1e-6)
            fits.append((1.0 / width, -lo / width))
    return fits


def _norm_fits(model, norms, batches: Batches, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per LayerNorm, per element of its normalized shape: (slope, intercept) of the
    least-squares line from its input x to (x - mean) / sqrt(var + eps) over the tokens of the
    first RANGE_INPUTS inputs."""
    sums = [None for _ in norms]

    def record(index, module, x, output):
        shape = tuple(module.normalized_shape)
        axes = tuple(range(x.ndim - len(shape), x.ndim))
        x = x.cpu().double()  # on the CPU: some devices (Apple's MPS) have no float64
        y = (x - x.mean(axes, keepdim=True)) / torch.sqrt(x.var(axes, keepdim=True, unbiased=False) + module.eps)
        x, y = x.reshape((-1,) + shape), y.reshape((-1,) + shape)
        part = torch.stack([torch.full_like(x[0], len(x)), x.sum(0), y.sum(0), (x * x).sum(0), (x * y).sum(0)])
        sums[index] = part if sums[index] is None else sums[index] + part
    _observe(model, norms, record, batches, device)
    fits = []
    for module, part in zip(norms, sums):
        if part is None:
            raise UserError(f"the normalization module {module} is never called on the data; remove it")
        n, sx, sy, sxx, sxy = part
        variance = sxx / n - (sx / n) ** 2
        slope = torch.where(variance > 1e-12, (sxy / n - sx * sy / n ** 2) / variance.clamp_min(1e-12),
                            torch.zeros_like(variance))
        fits.append((slope.float().to(device), (sy / n - slope * sx / n).float().to(device)))
    return fits


@torch.no_grad()
def _activation_inputs(model, activations, batches: Batches, device) -> list[tuple[float, float, np.ndarray]]:
    """(min, max, a sample of values) of each activation's input on the first RANGE_INPUTS inputs."""
    seen = [[math.inf, -math.inf, []] for _ in activations]
    generator = torch.Generator().manual_seed(0)

    def record(index, module, x, output):
        stats, x = seen[index], x.float().reshape(-1).cpu()
        stats[0], stats[1] = min(stats[0], x.min().item()), max(stats[1], x.max().item())
        stats[2].append(x[torch.randperm(len(x), generator=generator)[:FIT_VALUES]].double().numpy())
    _observe(model, activations, record, batches, device)
    rng = np.random.default_rng(0)
    for module, stats in zip(activations, seen):
        if not stats[2]:
            raise UserError(f"the activation module {module} is never called on the data; remove it")
        values = np.concatenate(stats[2])
        stats[2] = rng.choice(values, FIT_VALUES, replace=False) if len(values) > FIT_VALUES else values
    return [tuple(stats) for stats in seen]


def _check_compilable(model: nn.Module, example: torch.Tensor) -> None:
    """Export ``model`` to ONNX (in memory) and import it with hecc's frontend: raise UserError if
    an activation or max pooling is left (computed as a function) or hecc refuses an op."""
    from ..frontends.onnx import import_model, load_model
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example[:1],), buffer, dynamo=False, opset_version=13)
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the converted model does not export to ONNX (torch.onnx.export, opset 13): "
                        f"{first_line}") from exc
    onnx_model = load_model(buffer.getvalue())
    left: dict[str, list[str]] = {}
    for node in onnx_model.graph.node:
        if node.op_type in FUNCTIONAL:
            left.setdefault(node.op_type, []).append(node.name or "(unnamed)")
    if left:
        lines = [f"  {op} at node(s) {', '.join(names)}: use {FUNCTIONAL[op]} (a module attribute "
                 "called in forward)" for op, names in sorted(left.items())]
        raise UserError("he_friendly can only replace modules, but the model's forward computes these as "
                        "functions (F.relu, torch.sigmoid, F.max_pool2d, ...); the node names give the "
                        "module whose forward does:\n" + "\n".join(lines))
    try:
        graph = import_model(onnx_model)
    except UserError as exc:
        raise UserError(f"after he_friendly's substitutions hecc still refuses the model:\n{exc}") from exc
    if any(op.name == "tensor.softmax_inside" for op in graph.ops):
        raise UserError("the converted model still computes a softmax inside the network as a function "
                        "(F.softmax or x.softmax in a forward); apply an nn.Softmax(dim) module instead, "
                        "which he_friendly replaces by polynomial attention")
    kinds = sorted({op.attrs["kind"] for op in graph.ops if op.name == "tensor.activation"})
    if kinds:
        module = " (layer normalization: use nn.LayerNorm)" if "rsqrt" in kinds else ""
        raise UserError(f"the converted model still computes {', '.join(kinds)}{module} (not with a "
                        "module he_friendly could replace); compute it with an nn.Module instead")


def _fine_tune(student, teacher, batches: Batches, epochs, lr, weight_decay, temperature, alpha,
               range_weight, device, progress) -> None:
    penalties, outside = [], [0, 0]

    def range_penalty(module, inputs, output):
        x = inputs[0]
        excess = F.relu(x - module.hi) + F.relu(module.lo - x)
        penalties.append(((excess / (module.hi - module.lo)) ** 2).sum() / len(x))
        outside[0] += int((excess > 0).sum())
        outside[1] += excess.numel()
    polys = [m for m in student.modules() if isinstance(m, PolyActivation)]
    handles = [m.register_forward_hook(range_penalty) for m in polys]
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(batches)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if steps else None
    try:
        for epoch in range(epochs):
            student.train()
            total, correct, count = 0.0, 0, 0
            outside[:] = [0, 0]
            for x, y in batches.epoch(epoch):
                x, y = x.to(device), None if y is None else y.to(device)
                with torch.no_grad():
                    target = teacher(x)
                penalties.clear()
                out = student(x)
                loss = _task_loss(out, target, y, temperature, alpha) + range_weight * sum(penalties)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                total, count = total + loss.item() * len(x), count + len(x)
                correct += 0 if y is None else int((out.argmax(1) == y).sum())
            if not math.isfinite(total):
                raise UserError("fine-tuning diverged (the loss is not finite); lower lr or raise "
                                "range_weight")
            if progress is not None:
                accuracy = f", training accuracy {correct / count:.4f}" if batches.labelled else ""
                progress(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f}{accuracy}, activation "
                         f"inputs outside their interval {outside[0] / max(outside[1], 1):.3%}")
    finally:
        for h in handles:
            h.remove()


def _task_loss(student_out, teacher_out, labels, temperature: float, alpha: float):
    if student_out.ndim != 2 or student_out.shape[1] < 2:
        raise UserError(f"he_friendly distills classifiers: the model's output must be logits (N, classes), "
                        f"got shape {tuple(student_out.shape)}")
    soft = F.kl_div(F.log_softmax(student_out / temperature, 1), F.log_softmax(teacher_out / temperature, 1),
                    log_target=True, reduction="batchmean") * temperature ** 2
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_out, labels)
