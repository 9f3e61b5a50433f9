"""hecc.torch.he_friendly: a small ReLU + MaxPool CNN, which hecc refuses, becomes one hecc compiles
(polynomial activations, average pooling), keeps its accuracy, and hecc's reference run of the
exported model equals PyTorch's."""
import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import hecc  # noqa: E402
from conftest import MNIST_SAMPLE, assert_close  # noqa: E402
from hecc.errors import HeccWarning, InputError, UnsupportedOpError, UserError  # noqa: E402
from hecc.torch import he_friendly  # noqa: E402
from hecc.torch.friendly import AffineNorm, PolyActivation, PolySoftmax  # noqa: E402


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.GELU(), nn.Linear(32, 10))


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One PyTorch thread: the suite shares two cores, and OpenMP threads that wait for a busy core
    make small models train ten times slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist():
    with np.load(MNIST_SAMPLE) as d:
        def images(a):
            return torch.from_numpy(a.astype(np.float32)[:, None] / 255.0)
        return (images(d["x_train"]), torch.from_numpy(d["y_train"].astype(np.int64)),
                images(d["x_test"]), torch.from_numpy(d["y_test"].astype(np.int64)))


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def fit(model, x, y, epochs: int, lr: float):
    """``model`` trained by AdamW on batches of 64, in place."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.fixture(scope="module")
def trained(mnist):
    """(original, its state before he_friendly, converted, per-epoch messages)."""
    x, y = mnist[0], mnist[1]
    torch.manual_seed(0)
    model = fit(small_cnn(), x, y, epochs=4, lr=1e-2)
    before = copy.deepcopy(model.state_dict())
    messages = []
    # 47 steps an epoch: a higher learning rate than the default, meant for larger data sets
    friendly = he_friendly(model, (x, y), epochs=4, lr=5e-3, progress=messages.append)
    return model, before, friendly, messages


def export(model, path, fold=False, side=28):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, side, side),), path, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"], do_constant_folding=fold,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_the_original_is_left_as_it_was(trained):
    model, before, friendly, _ = trained
    assert model.training
    assert [type(m) for m in model] == [type(m) for m in small_cnn()]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert friendly is not model and not friendly.training


def test_activations_and_max_pooling_are_replaced(trained):
    _, _, friendly, messages = trained
    kinds = {type(m) for m in friendly.modules()}
    assert not kinds & {nn.ReLU, nn.GELU, nn.MaxPool2d}
    assert nn.AvgPool2d in kinds
    polys = [m for m in friendly.modules() if isinstance(m, PolyActivation)]
    assert [(p.kind, p.degree) for p in polys] == [("ReLU", 2), ("GELU", 2)]
    assert all(p.lo < 0 < p.hi for p in polys)
    assert len(messages) == 4 and "training accuracy" in messages[-1]


def test_hecc_refuses_the_original_and_compiles_the_converted(trained, mnist, tmp_path):
    model, _, friendly, _ = trained
    with pytest.raises(UnsupportedOpError, match="MaxPool"):
        hecc.compile(export(model, str(tmp_path / "original.onnx")))
    x_test = mnist[2][:16]
    with torch.no_grad():
        expected = friendly(x_test).numpy()
    for fold in (False, True):
        path = export(friendly, str(tmp_path / f"friendly_{fold}.onnx"), fold)
        prog = hecc.compile(path, calibration=mnist[0][:64].numpy(), layout="slots")
        assert prog.encrypted
        assert not [op for op in prog.ir("tensor").splitlines() if "tensor.poly" in op or "activation" in op]
        assert_close(prog.run(x_test.numpy(), backend="reference")["logits"], expected, 1e-4, f"fold={fold}")


def test_accuracy_stays_close_to_the_original(trained, mnist):
    model, _, friendly, _ = trained
    x_test, y_test = mnist[2], mnist[3]
    original, converted = accuracy(model, x_test, y_test), accuracy(friendly, x_test, y_test)
    assert original > 0.9
    assert converted >= original - 0.04, (original, converted)


def test_polynomial_inputs_stay_in_their_interval(trained, mnist):
    _, _, friendly, _ = trained
    polys = [m for m in friendly.modules() if isinstance(m, PolyActivation)]
    inside = []
    hooks = [p.register_forward_hook(lambda m, i, o: inside.append(float(((i[0] >= m.lo) & (i[0] <= m.hi))
                                                                          .float().mean())))
             for p in polys]
    with torch.no_grad():
        friendly(mnist[0])
    for h in hooks:
        h.remove()
    assert len(inside) == len(polys) and min(inside) > 0.999


def test_polynomial_fits_its_activation_and_higher_degrees_compile(mnist, tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.SiLU(), nn.Linear(16, 10))
    converted = he_friendly(model, mnist[0][:256], degree=4, epochs=0)
    poly = converted[2]
    x = torch.linspace(float(poly.lo), float(poly.hi), 101)
    with torch.no_grad():
        error = (poly(x) - F.silu(x)).abs().max() / (F.silu(x).max() - F.silu(x).min())
        expected = converted(mnist[2][:16]).numpy()
    assert error < 0.05
    prog = hecc.compile(export(converted, str(tmp_path / "silu4.onnx")), calibration=mnist[0][:64].numpy(),
                        layout="batch")
    assert prog.encrypted
    assert_close(prog.run(mnist[2][:16].numpy(), backend="reference")["logits"], expected, 1e-4)


def test_same_seed_same_model_and_the_callers_random_state_is_kept(mnist):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 10))
    data = (mnist[0][:512], mnist[1][:512])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = he_friendly(model, data, epochs=1, batch_size=64, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    second = he_friendly(model, data, epochs=1, batch_size=64, seed=5)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_data_loader_and_unlabelled_inputs(mnist):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.AdaptiveMaxPool2d(4), nn.Flatten(),
                          nn.Linear(32, 10))
    dataset = torch.utils.data.TensorDataset(mnist[0][:256], mnist[1][:256])
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    messages = []
    converted = he_friendly(model, loader, epochs=1, progress=messages.append)
    assert isinstance(converted[2], nn.AdaptiveAvgPool2d) and "training accuracy" in messages[0]
    he_friendly(model, mnist[0][:256].numpy(), epochs=1, progress=messages.append)
    assert "training accuracy" not in messages[1]


def test_functional_activation_is_refused_with_what_to_change(mnist):
    with pytest.raises(UserError, match=r"Relu at node\(s\) .*nn\.ReLU"):
        he_friendly(FunctionalRelu(), mnist[0][:64], epochs=1)


class Exponential(nn.Module):
    def forward(self, x):
        return x.exp()


def test_an_op_hecc_refuses_without_a_substitute_is_named(mnist):
    model = nn.Sequential(nn.ReLU(), Exponential(), nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(UserError, match="(?s)hecc still refuses the model:.*Exp: node"):
        he_friendly(model, mnist[0][:64], epochs=1)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()  # called twice: one polynomial for both, fitted on both calls' inputs
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2)),
                                     nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.SiLU())])
        self.head = nn.Linear(2 * 14 * 14, 10)

    def forward(self, x):
        x = self.act(self.blocks[0](x))
        return self.head(self.act(self.blocks[1](x)).flatten(1))


def test_nested_and_shared_modules_are_swapped(mnist):
    converted = he_friendly(Nested(), mnist[0][:128], epochs=0)
    assert isinstance(converted.act, PolyActivation)
    assert isinstance(converted.blocks[0][1], nn.AvgPool2d)
    assert isinstance(converted.blocks[1][1], PolyActivation)
    assert len([m for m in converted.modules() if isinstance(m, PolyActivation)]) == 2


def test_nothing_to_convert_returns_an_unchanged_copy(mnist):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.warns(HeccWarning, match="nothing to convert"):
        copied = he_friendly(model, mnist[0][:64])
    assert copied is not model and torch.equal(copied[1].weight, model[1].weight)


class Attention(nn.Module):
    """Self-attention as vit-pytorch writes it: an nn.Softmax module on the scores (``functional``:
    ``scores.softmax(-1)`` instead, which cannot be swapped)."""

    def __init__(self, width: int, heads: int = 2, functional: bool = False):
        super().__init__()
        self.heads, self.functional = heads, functional
        self.qkv = nn.Linear(width, 3 * width)
        self.attend = None if functional else nn.Softmax(dim=-1)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        n, t, w = x.shape
        q, k, v = (part.reshape(n, t, self.heads, w // self.heads).transpose(1, 2)
                   for part in self.qkv(x).chunk(3, -1))
        scores = q @ k.transpose(-2, -1) * (w // self.heads) ** -0.5
        weights = scores.softmax(-1) if self.functional else self.attend(scores)
        return self.out((weights @ v).transpose(1, 2).reshape(n, t, w))


class TinyViT(nn.Module):
    """7x7 images as 7 tokens (their rows), one pre-norm encoder block (LayerNorm, softmax
    attention, a GELU MLP), the tokens' mean to 10 logits."""

    def __init__(self, width: int = 16, functional: bool = False):
        super().__init__()
        self.embed = nn.Linear(7, width)
        self.pos = nn.Parameter(torch.randn(1, 7, width) * 0.1)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = Attention(width, functional=functional)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 7, 7)) + self.pos
        tokens = tokens + self.attention(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens.mean(1))


def test_a_transformer_block_becomes_polynomial_and_compiles(mnist, tmp_path):
    """LayerNorm -> a learned affine map, softmax attention -> polynomial attention, GELU -> a
    polynomial: hecc refuses the original (softmax's reciprocal over too wide a range) and compiles
    the converted one with nothing to approximate, its reference run equal to PyTorch's; after
    fine-tuning it is within 2 points of the original."""
    x, y, x_test, y_test = (F.avg_pool2d(t, 4) if t.is_floating_point() else t for t in mnist)
    torch.manual_seed(0)
    model = fit(TinyViT(), x, y, epochs=20, lr=3e-3).eval()
    converted = he_friendly(model, (x, y), epochs=10, lr=3e-3)
    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(AffineNorm) == 2 and kinds.count(PolySoftmax) == 1 and kinds.count(PolyActivation) == 1
    assert not {nn.LayerNorm, nn.Softmax, nn.GELU} & set(kinds)
    assert accuracy(converted, x_test, y_test) >= accuracy(model, x_test, y_test) - 0.02
    with pytest.raises(UserError):
        hecc.compile(export(model, tmp_path / "exact.onnx", side=7), calibration=x[:256].numpy(), layout="batch")
    program = hecc.compile(export(converted, tmp_path / "converted.onnx", side=7), calibration=x[:256].numpy(),
                           layout="batch")
    assert program.artifact.manifest.get("approximations", []) == []
    with torch.no_grad():
        expected = converted(x_test[:16]).numpy()
    assert_close(program.run(x_test[:16].numpy(), backend="reference")["logits"], expected, 1e-5, "reference")


def test_a_softmax_at_the_output_stays_exact(mnist):
    """A classifier's final softmax is computed exactly on the client: not replaced."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 10),
                          nn.Softmax(dim=1))
    converted = he_friendly(model, mnist[0][:128], epochs=0)
    assert isinstance(converted[5], nn.Softmax) and isinstance(converted[2], AffineNorm)
    with torch.no_grad():
        assert torch.allclose(converted(mnist[0][:4]).sum(1), torch.ones(4))


def test_softmax_and_layer_norm_that_cannot_be_swapped_are_refused(mnist):
    x = F.avg_pool2d(mnist[0][:64], 4)
    with pytest.raises(UserError, match=r"softmax inside the network as a function.*nn\.Softmax"):
        he_friendly(TinyViT(functional=True), x, epochs=0)
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    with pytest.raises(UserError, match="nn.MultiheadAttention"):
        he_friendly(nn.Sequential(nn.Flatten(), nn.Linear(49, 16), attention), x, epochs=0)


@pytest.mark.parametrize("data, match", [
    ("images.npy", "data must be"),
    ((torch.zeros(0, 1, 28, 28), None), "no inputs"),
    ((torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long)), "3 labels for 4 inputs"),
    ((torch.zeros(4, 1, 28, 28), torch.zeros(4)), "integer class indices"),
    (torch.utils.data.DataLoader([]), "yields no batch"),
])
def test_bad_data_is_a_typed_error(data, match):
    with pytest.raises(InputError, match=match):
        he_friendly(small_cnn(), data)


@pytest.mark.parametrize("options, match", [
    ({"degree": 1}, "degree must be"), ({"degree": 9}, "degree must be"), ({"alpha": 2.0}, "alpha"),
    ({"epochs": -1}, "epochs"),
])
def test_bad_options_are_typed_errors(options, match):
    with pytest.raises(UserError, match=match):
        he_friendly(small_cnn(), torch.zeros(4, 1, 28, 28), **options)


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(UserError, match="torch.nn.Module"):
        he_friendly(lambda x: x, torch.zeros(4, 1, 28, 28))
