"""The Python API: ``hecc.compile`` and ``Program``.

    prog = hecc.compile("model.onnx")
    y = prog.run(x, backend="reference")     # dict: output name -> array
    prog.save("model.hecc"); prog = hecc.load("model.hecc")
"""
from __future__ import annotations

import os
import time
import warnings
from typing import TextIO

import numpy as np

from . import artifact
from .errors import HeccWarning, InputError, UserError
from .ir import Graph, print_graph
from .pipeline import PipelineResult, run_passes
from .runtime import input_specs, output_specs, stack_inputs, unstack_outputs


LAYOUTS = ("batch", "slots", "packed")
# the stages of each layout's CKKS program: right after the lowering, and the program that runs
STAGES = {"batch": ("ckks", "final"), "slots": ("ckks-slots", "final-slots"),
          "packed": ("ckks-packed", "final-packed")}


class Program:
    """A compiled model: its IR at every stage and the constants; runs on a chosen backend.

    ``stages`` are ``tensor`` (after the tensor passes) and, for each layout the model was
    compiled for, its CKKS program right after the lowering and the executable one: ``ckks`` and
    ``final`` (batch layout), ``ckks-slots`` and ``final-slots`` (slots layout). ``layout`` is the
    layout this object's ``graph``, ``ir`` and client/server steps use (``with_layout`` gives
    another); ``run`` picks per call under ``layout="auto"``.
    """

    def __init__(self, art: artifact.Artifact, timings: PipelineResult | None = None,
                 layout: str | None = None):
        from .pipeline import PassTiming
        self.artifact = art
        self.timings = timings.timings if timings else [
            PassTiming(name, seconds) for name, seconds in art.manifest.get("pass_seconds", [])]
        self.last_stats: dict | None = None
        available = self.layouts
        if layout is not None and layout not in available:
            raise UserError(f"this artifact has no {layout} layout; it was compiled for "
                            f"{', '.join(available) or 'no encrypted layout'} (compile with --layout {layout})")
        self.layout = layout or (available[0] if available else None)

    @property
    def layouts(self) -> list[str]:
        """The layouts this artifact holds an executable CKKS program for."""
        order = self.artifact.manifest.get("layouts", LAYOUTS)
        return [name for name in order if STAGES[name][1] in self.artifact.stages]

    def with_layout(self, layout: str) -> "Program":
        other = Program(self.artifact, layout=layout)
        other.timings = self.timings
        return other

    @property
    def final_stage(self) -> str:
        return STAGES[self.layout][1] if self.layout else "tensor"

    @property
    def graph(self) -> Graph:
        """The IR of the program that runs (this layout's final stage)."""
        return self.artifact.graph(self.final_stage)

    @property
    def stages(self) -> list[str]:
        return list(self.artifact.stages)

    @property
    def encrypted(self) -> bool:
        return self.layout is not None

    @property
    def inputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return input_specs(self.graph)

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return output_specs(self.graph)

    @property
    def parameters(self) -> dict | None:
        """poly_modulus_degree, coeff_modulus_bits, layout and galois_steps of the CKKS program
        (None without one)."""
        for op in self.graph.ops:
            if op.name == "ckks.params":
                return dict(op.attrs)
        return None

    def stage_name(self, stage: str) -> str:
        """``final`` and ``ckks`` name this layout's stages; other names are taken as they are."""
        if stage == "final":
            return self.final_stage
        if stage == "ckks" and self.layout:
            return STAGES[self.layout][0]
        return stage

    def ir(self, stage: str = "final") -> str:
        """The IR text of ``stage`` ('final': the program that runs, in this layout)."""
        stage = self.stage_name(stage)
        if stage not in self.artifact.stages:
            why = self.artifact.manifest.get("not_encrypted_because")
            raise UserError(f"this program has no {stage!r} stage; it has {', '.join(self.stages)}"
                            + (f" (it could not be compiled for encryption: {why})" if why else ""))
        return self.artifact.stages[stage]

    def estimate(self, runs: int, layout: str | None = None, measure: bool = True) -> dict | None:
        """Predicted seconds to encrypt, evaluate and decrypt ``runs`` inputs in ``layout`` on this
        machine (two workers), from the measured primitive costs; None without costs."""
        from .report import estimate_run, primitive_costs
        prog = self if layout in (None, self.layout) else self.with_layout(layout)
        costs = primitive_costs(prog.parameters, measure)
        return None if costs is None else estimate_run(prog.graph, runs, costs)

    def choose_layout(self, runs: int, measure: bool = True) -> str | None:
        """The layout with the smaller predicted total time for ``runs`` inputs."""
        if len(self.layouts) < 2:
            return self.layout
        totals = {}
        for layout in self.layouts:
            estimate = self.estimate(runs, layout, measure)
            if estimate is None:
                return self.layout
            totals[layout] = estimate["total"]
        return min(totals, key=totals.get)

    def run(self, inputs, backend: str = "reference", noise: bool = False, workers: int | None = None,
            progress=None, layout: str = "auto", cluster: str | None = None) -> dict[str, np.ndarray]:
        """Run on plaintext ``inputs`` (an array for a one-input model, or a dict by input name),
        each with a leading batch dimension; returns every output by name. ``reference`` runs the
        tensor IR in numpy; ``sim`` simulates the CKKS program (``noise`` adds CKKS's errors);
        ``tenseal`` encrypts, evaluates and decrypts with SEAL. ``layout``: ``auto`` (the layout
        predicted fastest for this many inputs, when the artifact has several), ``batch``,
        ``slots`` (one input per ciphertext) or ``packed`` (several inputs per ciphertext).
        ``workers``: worker processes (tenseal). ``cluster``: the address of a Ray cluster to
        evaluate on (tenseal; needs ``hecc[ray]``): keys, encryption and decryption
        stay in this process, evaluation runs on one worker per CPU of the cluster (or
        ``workers``). Statistics land in ``last_stats``."""
        if layout not in ("auto",) + LAYOUTS:
            raise UserError(f"unknown layout {layout!r}; choose auto, batch, slots or packed")
        if cluster and backend != "tenseal":
            raise UserError(f"a cluster runs the tenseal backend only, not {backend}; use --backend tenseal")
        if backend != "reference" and self.encrypted:
            if layout == "auto":
                runs = stack_inputs(self.artifact.graph("tensor"), inputs if isinstance(inputs, dict)
                                    else {self.inputs[0][0]: inputs})[1]
                layout = self.choose_layout(runs, measure=backend == "tenseal")
            if layout != self.layout:
                prog = self.with_layout(layout)
                out = prog.run(inputs, backend, noise, workers, progress, layout, cluster)
                self.last_stats = prog.last_stats
                return out
        inputs = named_inputs(self, inputs)
        if backend not in ("reference", "sim", "tenseal"):
            raise UserError(f"unknown backend {backend!r}; choose reference, sim or tenseal")
        graph = self.artifact.graph("tensor") if backend == "reference" else self.graph
        if backend != "reference" and not self.encrypted:
            why = self.artifact.manifest.get("not_encrypted_because", "")
            raise UserError(f"this artifact has no CKKS program, so it cannot run on the {backend} "
                            f"backend: {why}. Use --backend reference")
        stacked, runs = stack_inputs(graph, inputs)
        if backend != "reference":
            warn_outside_calibration(self, inputs)
        start = time.perf_counter()
        from .backends.common import RunStats, op_counts
        stats = RunStats()
        if backend == "reference":
            from .backends.reference import evaluate
            results = evaluate(graph, stacked)
        elif backend == "sim":
            from .backends.sim import Simulator
            results = Simulator(graph, noise=noise).run(stacked, stats)
        else:
            from .backends.sim import Simulator
            from .backends.tenseal import TensealBackend
            from .executors import executor_for
            executor = executor_for(workers, cluster)  # a missing Ray is said before any work
            # the plaintext program first: an input that would overflow the modulus is refused
            # with the simulator's message instead of decrypting to garbage
            Simulator(graph).run(stacked)
            results = executor.run(TensealBackend(graph), stacked, stats, progress)
        self.last_stats = {
            "backend": backend, "layout": self.layout if backend != "reference" else None,
            "inputs": int(runs * (input_specs(graph)[0][1][0] if graph.inputs() else 1)),
            "batches": stats.batches, "workers": stats.workers,
            "seconds": {**{k: round(v, 6) for k, v in stats.seconds.items()},
                        "eval_wall": round(stats.eval_wall_seconds, 6),
                        "total": round(time.perf_counter() - start, 6)},
            "eval_key_bytes": stats.eval_key_bytes,
        }
        if backend != "reference":
            params = self.parameters
            self.last_stats.update({
                "parameters": {"poly_modulus_degree": params["poly_modulus_degree"],
                               "coeff_modulus_bits": params["coeff_modulus_bits"],
                               "scale_bits": self.artifact.manifest.get("scales", {}).get(self.layout, [None])[0]},
                "galois_steps": params.get("galois_steps", []),
                "op_counts": op_counts(graph, stats.batches)})
        return unstack_outputs(graph, results)

    def save(self, path: str) -> None:
        artifact.save(self.artifact, os.fspath(path))


def named_inputs(program: "Program", inputs) -> dict:
    """``inputs`` by input name: a dict as it is, an array as the one input of a one-input model."""
    if isinstance(inputs, dict):
        return inputs
    names = [n for n, _ in program.inputs]
    if len(names) != 1:
        raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}); pass a dict")
    return {names[0]: inputs}


def outside_calibration(program: "Program", inputs: dict) -> list[str]:
    """For each input with values outside the range seen at calibration (the encryption
    parameters and activation polynomials were sized for that range), a sentence saying so."""
    ranges = program.artifact.manifest.get("input_ranges", {})
    found = []
    for name, x in inputs.items():
        if name not in ranges:
            continue
        lo, hi = ranges[name]
        slack = 1e-6 * max(hi - lo, 1e-12)
        outside = int(np.count_nonzero((np.asarray(x) < lo - slack) | (np.asarray(x) > hi + slack)))
        if outside:
            found.append(f"{outside} value(s) of input {name!r} lie outside [{lo:.4g}, {hi:.4g}], the range "
                         "seen at calibration")
    return found


def warn_outside_calibration(program: "Program", inputs: dict) -> None:
    """Warn (with the count) about input values outside the calibrated range."""
    for found in outside_calibration(program, inputs):
        warnings.warn(f"{found}; encrypted results for them may be wrong. Recompile with "
                      "--calibration data that covers such inputs", HeccWarning, stacklevel=3)


def compile(model, *, calibration=None, layout: str = "auto", scale_bits: int | None = None,
            weight_scale_bits: int | None = None, rescale: str = "lazy",
            max_rotation_keys: int | None = None, activation_degree: int | None = None,
            approx_error: float = 0.01, activation_margin: float = 0.1, objective: str = "time",
            print_after_all: TextIO | None = None, progress=None) -> Program:
    """Compile an ONNX model (path, bytes or onnx.ModelProto) into a ``Program``.

    ``calibration``: representative inputs (an array, or a dict by input name) from which value
    ranges are measured: the intervals activations are approximated on and the magnitudes that
    size the encryption parameters. ``layout``: "batch" (one input per slot: throughput),
    "slots" (one input in the slots of a ciphertext: latency) or "auto" (both; ``run`` picks by
    the number of inputs). ``scale_bits`` is the CKKS scale of encrypted values,
    ``weight_scale_bits`` that of plaintext weights (batch: 14, the eager baseline and the slots
    layout: ``scale_bits``), ``rescale`` "lazy" (waterline) or "eager" (after every multiply,
    batch layout only). ``max_rotation_keys`` bounds the slots layout's Galois keys (rotations
    are then composed of the chosen steps).
    Non-polynomial activations become Chebyshev polynomials of degree ``activation_degree`` (or the
    smallest whose error is within ``approx_error`` of the activation's output range) on the
    calibrated interval widened by ``activation_margin``. ``objective``: what the slots layout's
    choices (placements, baby steps, pooling, the client's rotated inputs) minimize: "time" (this
    machine's costs of rotations, products and new Galois keys) or "operations" (products and
    rotations counted alike, as papers count HE operations; a ciphertext the client sends counts
    half, a new key a quarter). If the model cannot be compiled for
    encryption, the program keeps only the tensor stage (for the reference backend) and says why.
    """
    from .calibrate import activation_samples, calibration_trace, max_abs, random_inputs, value_intervals
    from .errors import ModelError, ParameterError, UnsupportedOpError
    from .frontends.onnx import import_model
    from .passes import APPROXIMATION_PIPELINE, TENSOR_PIPELINE
    from .options import CompileOptions
    checked = CompileOptions(layout, scale_bits, weight_scale_bits, rescale, max_rotation_keys,
                             activation_degree, approx_error, activation_margin, objective).checked()
    if rescale == "eager" and layout == "auto":
        layout = "batch"  # the eager baseline exists for the batch layout
    options = checked.as_dict()
    del options["layout"]
    graph = import_model(model)
    bad = sorted(name for name, array in graph.constants.items()
                 if np.asarray(array).dtype.kind in "fc" and not np.all(np.isfinite(array)))
    if bad:
        raise ModelError(f"the model's weights {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold NaN "
                         "or infinite values; every result would be NaN. Fix the trained model")
    if isinstance(calibration, (str, os.PathLike)):
        from .arrays import load_named_arrays, load_npy
        path = os.fspath(calibration)
        calibration = load_named_arrays(path) if path.endswith(".npz") else load_npy(path)
    result = run_passes(graph, TENSOR_PIPELINE, print_after_all=print_after_all, progress=progress)
    tensor = result.graph
    stages = {"tensor": print_graph(tensor)}
    constants = dict(tensor.constants)
    extra = {"options": {k: v for k, v in options.items() if v is not None}}
    if calibration is not None and not isinstance(calibration, dict):
        names = [op.attrs["name"] for op in tensor.inputs()]
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} inputs; give calibration data as a dict by name")
        calibration = {names[0]: calibration}
    final = tensor
    layouts: list[str] = []
    if layout not in ("auto",) + LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose auto, batch, slots or packed")
    # auto: both programs; the batch one first, whose ring size seeds the slots layout's
    wanted = LAYOUTS if layout == "auto" else (layout,)
    guessed = calibration is None
    try:
        if guessed:
            calibration = random_inputs(tensor)
        trace = calibration_trace(tensor, calibration)
        intervals = value_intervals(tensor, calibration, trace)
        extra["input_ranges"] = {op.attrs["name"]: list(intervals[op.result]) for op in tensor.inputs()
                                 if op.result in intervals}
        samples = activation_samples(tensor, calibration, trace=trace)

        def approximate(max_degree):
            graph = tensor.copy()
            pairs = list(zip(_values(tensor), _values(graph)))
            graph.meta["intervals"] = {new: intervals[old] for old, new in pairs if old in intervals}
            graph.meta["samples"] = {new: samples[old] for old, new in pairs if old in samples}
            graph.meta["originals"] = {new: old for old, new in pairs}
            chosen = dict(options, max_degree=max_degree) if max_degree else options
            done = run_passes(graph, APPROXIMATION_PIPELINE, chosen, print_after_all=print_after_all,
                              progress=progress)
            return done.graph, done
        if options.get("activation_degree") is None:
            from .degrees import choose_degrees
            approximated, approx_result = choose_degrees(tensor, approximate,
                                                         stack_inputs(tensor, calibration)[0])
        else:
            approximated, approx_result = approximate(None)
        # the magnitudes the polynomial program reaches on the same inputs size the parameters
        if not any(op.name == "tensor.poly" for op in approximated.ops):  # nothing was approximated
            pairs = dict(zip(_values(tensor), _values(approximated)))
            approximated.meta["ranges"] = {pairs[v]: m for v, m in max_abs(intervals).items() if v in pairs}
            approximate_trace: dict = {}
        else:  # one run of the polynomial program: its magnitudes and the approximations' errors
            approximate_trace = calibration_trace(approximated, calibration)
            approximated.meta["ranges"] = max_abs(value_intervals(approximated, calibration, approximate_trace))
        extra["approximations"] = _approximation_report(approximated, trace, approximate_trace)
        del trace, approximate_trace
        if guessed and extra["approximations"]:
            assumed = "; ".join(f"{a['kind']} on [{a['interval'][0]:.3g}, {a['interval'][1]:.3g}]"
                                for a in extra["approximations"])
            warnings.warn(f"activations were approximated on ranges measured on random inputs, which "
                          f"may not be the ranges your data produces: {assumed}. Pass calibration "
                          "data (--calibration X.npy)", HeccWarning, stacklevel=2)
        result.timings += approx_result.timings
        reasons, slots, refused, one_input, one_seconds, one_final = {}, None, [], None, None, None
        for name in wanted:
            try:
                if name == "packed":
                    if one_input is None:
                        one_input = dict(options, layout="slots")
                        (_, one_final), _ = _lower(approximated, calibration, one_input, slots, print_after_all,
                                                   progress)
                        one_seconds = _predicted_time(one_final)
                    chosen = dict(one_input, layout="slots", constant_prefix="packed.")
                    graph, timings = _lower_packed(approximated, calibration, chosen, one_input["slots"],
                                                   print_after_all, progress, one_seconds, one_final)
                else:
                    chosen = dict(options, layout=name)
                    graph, timings = _lower(approximated, calibration, chosen, slots, print_after_all, progress)
                    if name == "slots":
                        one_input, one_seconds, one_final = chosen, _predicted_time(graph[1]), graph[1]
                lowered, final = graph
                precision = _predicted_precision(final, calibration)
                if precision is not None and precision > PRECISION_LIMIT:
                    raise ParameterError(
                        f"the {name} layout's program would answer with errors up to {precision:.1%} of "
                        f"the largest output (the simulator's CKKS noise model on the calibration data); "
                        f"raise --scale-bits or --weight-scale-bits")
            except UnsupportedOpError as exc:
                reasons[name] = "; ".join(f"{op} ({exc.details.get(op, 'no lowering')})"
                                          for op in sorted(exc.unsupported))
                continue
            except ParameterError as exc:  # under auto the other layout may still do
                if len(wanted) == 1:
                    raise
                refused.append(exc)
                reasons[name] = str(exc)
                continue
            slots = slots or _inputs_per_batch(final)
            result.timings += timings
            stages[STAGES[name][0]] = lowered
            stages[STAGES[name][1]] = print_graph(final)
            constants.update(final.constants)
            layouts.append(name)
            extra.setdefault("predicted_precision", {})[name] = precision
            extra.setdefault("scales", {})[name] = [chosen["scale_bits"], chosen["weight_scale_bits"]]
            if "rotation_keys" in final.meta and name == "slots":
                extra["rotation_keys"] = final.meta["rotation_keys"]
        if not layouts and refused:
            raise refused[0]
        if not layouts:  # the first layout's reason: the batch layout's, under auto
            extra["not_encrypted_because"] = reasons[wanted[0]]
        elif reasons:
            extra["layout_unavailable"] = reasons
    except UnsupportedOpError as exc:
        extra["not_encrypted_because"] = "; ".join(f"{op} ({exc.details.get(op, 'no lowering')})"
                                                   for op in sorted(exc.unsupported))
    extra["layouts"] = layouts
    final = tensor
    final.constants = constants
    extra["pass_seconds"] = [[t.name, round(t.seconds, 6)] for t in result.timings]
    return Program(artifact.build(stages, final, extra), result)


def _lower(approximated: Graph, calibration, options: dict, slots: int | None, print_after_all,
           progress):
    """The CKKS program of one layout: (the graph right after lowering, the final graph) and the
    pass timings. The slots layout is laid out for a slot count first (the batch program's, if
    any, else 4096) and again for more slots when its parameters need a larger ring; unless the
    weight scale is given, it is compiled with weights small enough for a linear map and the
    product after it to share one prime, and with weights at the waterline scale, and keeps the
    program the cost model predicts faster (the first, only if its predicted CKKS error stays
    within MERGED_PRECISION)."""
    if options["layout"] == "slots":
        if options["rescale"] == "eager":
            raise UserError("--rescale eager is the batch layout's baseline; the slots layout "
                            "rescales every linear map already")
        return _lower_slots(approximated, calibration, options, slots or 4096, print_after_all, progress)
    if options.get("scale_bits") is None:
        options["scale_bits"] = DEFAULT_SCALE_BITS
    if options.get("weight_scale_bits") is None:
        options["weight_scale_bits"] = options["scale_bits"] if options["rescale"] == "eager" else 14
    from .passes.lower_to_ckks.batch import materializes
    polys = [op for op in approximated.ops if op.name == "tensor.poly"]
    if options["rescale"] == "eager" or not any(materializes("wide", op) for op in polys):
        return _lower_measured(approximated, calibration, options, print_after_all, progress)
    return _lower_batch_polys(approximated, calibration, options, print_after_all, progress)


MERGED_PRODUCTS_LIMIT = 3  # merged polynomial outputs may cost this many times the products


def _lower_batch_polys(approximated: Graph, calibration, options: dict, print_after_all, progress):
    """The batch program of a model with polynomials on wide tensors (convolution layers). A
    polynomial's output either stays a form over its terms (merged: no level, but the next map
    multiplies every term, and through the T_1 term the layer before, so a deep network composes
    maps across layers: LeNet-5 took 6.7 million products per batch) or becomes ciphertexts (one
    level per polynomial). Both are lowered, the wide outputs made ciphertexts first, and the one
    the cost model predicts faster per input is kept; the merged lowering stops once it passes
    MERGED_PRODUCTS_LIMIT times the other's products, and either stands alone when the other
    does not compile (too deep for any ring)."""
    try:
        wide = _lower_measured(approximated, calibration, dict(options, poly_outputs="wide"),
                               print_after_all, progress)
    except UserError:  # too deep for any ring, a prime past 60 bits, a map too large: merged alone
        return _lower_measured(approximated, calibration, options, print_after_all, progress)
    try:
        merged = _lower_measured(approximated, calibration,
                                 dict(options, max_products=MERGED_PRODUCTS_LIMIT * _lowered_products(wide)),
                                 print_after_all, progress)
    except UserError:  # over budget (OverBudget), too deep, too large: the wide one stands
        return wide
    return min((merged, wide), key=lambda pair: _predicted_time(pair[0][1]) / _inputs_per_batch(pair[0][1]))


def _inputs_per_batch(graph: Graph) -> int:
    """The slots of a program's ciphertexts (N/2): a batch's inputs, or the slots one input has."""
    return next(op.attrs["poly_modulus_degree"] // 2 for op in graph.ops if op.name == "ckks.params")


def _lowered_products(lowered) -> int:
    """Products by plaintext weights of a batch program (``_lower_measured``'s result)."""
    from .backends.common import LinearWeights
    final = lowered[0][1]
    return sum(LinearWeights(final, op).products(op) for op in final.ops if op.name == "ckks.linear")


DEFAULT_SCALE_BITS = 26
MERGED_SCALE_BITS = 22  # the slots layout's scale when a linear map and its product share a 60-bit prime


def _slots_variants(scale_bits: int | None, weight_scale_bits: int | None) -> list[tuple[int, int]]:
    """(scale, weight scale) pairs the slots layout is compiled with, the one with merged levels
    first: encrypted values at 2^22 and weights at 2^19 (22 + 2 x 19 = 60) balance the noise of
    fresh encryptions against the encoding error of weight vectors (4.6x less error than 2^26
    and 2^17 on LeNet-5), then both at 2^26, a prime per linear map."""
    from .passes.lower_to_ckks.slots import merged_weight_bits
    if scale_bits is not None and weight_scale_bits is not None:
        return [(scale_bits, weight_scale_bits)]
    if weight_scale_bits is not None:
        return [(DEFAULT_SCALE_BITS, weight_scale_bits)]
    if scale_bits is not None:
        pairs = [(scale_bits, merged_weight_bits(scale_bits)), (scale_bits, scale_bits)]
    else:
        pairs = [(MERGED_SCALE_BITS, merged_weight_bits(MERGED_SCALE_BITS)), (DEFAULT_SCALE_BITS, DEFAULT_SCALE_BITS)]
    return list(dict.fromkeys(pairs))


# predicted CKKS error past which (or a class changed by the noise on the calibration data) the slots
# layout keeps its weights at the waterline, a prime per linear map
MERGED_PRECISION = 1e-2


def _lower_slots(approximated: Graph, calibration, options: dict, slots: int, print_after_all, progress):
    trials = [dict(options, scale_bits=scale, weight_scale_bits=bits, slots=slots)
              for scale, bits in _slots_variants(options.get("scale_bits"), options.get("weight_scale_bits"))]
    ranked = [(seconds, order, trial, ckks) for order, (seconds, trial, ckks)
              in enumerate(_slots_estimates(approximated, trials))]
    ranked.sort(key=lambda entry: entry[:2])
    for position, (_, _, trial, ckks) in enumerate(ranked):
        (lowered, final), timings = _lower_measured(approximated, calibration, trial, print_after_all, progress,
                                                    ckks)
        options.update(trial)
        if position + 1 < len(ranked) and trial["weight_scale_bits"] != trial["scale_bits"]:
            precision, agreement = _noise_prediction(final, calibration)
            if precision is None or precision > MERGED_PRECISION or agreement < 1.0:
                continue
        return (lowered, final), timings


def _slots_estimates(approximated: Graph, trials: list[dict]) -> list[tuple]:
    """``_slots_estimate`` of each scale variant: the first in this process, the others at the
    same time in a forked process, which sends back their predicted seconds and options but not
    their lowerings (None: lowered again if one is kept). A ViT's variants take 3.5 s each."""
    from .backends.workers import beside

    def elsewhere(rest):
        return [(seconds, chosen) for seconds, chosen, _ in (_slots_estimate(approximated, t) for t in rest)]
    with beside(elsewhere, trials[1:] or None, "It was lowering the slots layout at other scales.") as others:
        first = _slots_estimate(approximated, trials[0])
        found = others()
    if len(found) != len(trials) - 1:  # the forked process failed: again here, to report why
        return [first] + [_slots_estimate(approximated, trial) for trial in trials[1:]]
    return [first] + [(seconds, chosen, None) for seconds, chosen in found]


def _slots_estimate(approximated: Graph, trial: dict) -> tuple[float, dict, object]:
    """(predicted seconds, options, CKKS lowering) of the slots program at one pair of scales,
    laid out again for the ring its parameters need (from the lowering's own magnitude
    estimates) and for a smaller one when its primes fit it."""
    from .passes import CKKS_PIPELINE, FINAL_PIPELINE
    from .passes.select_parameters import SlotsMismatch
    trial = dict(trial)
    while True:
        ckks = run_passes(approximated, CKKS_PIPELINE, trial)
        try:
            estimate = run_passes(_analyzed_copy(ckks.graph), FINAL_PIPELINE, trial).graph
        except SlotsMismatch as exc:
            trial["slots"] = exc.n // 2
            continue
        except UserError:
            estimate = None
        break
    if estimate is not None:
        smaller = _smaller_ring(approximated, trial, estimate)
        if smaller is not None:
            trial, ckks, estimate = smaller
    return _predicted_time(estimate), trial, ckks


def _smaller_ring(approximated: Graph, trial: dict, estimate: Graph):
    """The slots program of ``trial`` laid out again for a smaller ring, when its primes fit one
    (a lowering starts from the batch program's ring or 4,096 slots, and a ring larger than the
    primes need only adds security): (trial, ckks lowering, final estimate) if it lowers at that
    ring and the cost model predicts it no slower, else None. Halving the ring halves every
    ciphertext, so a small model's encrypted input shrinks with it."""
    from .passes import CKKS_PIPELINE, FINAL_PIPELINE
    from .passes.select_parameters import smallest_ring
    params = next(op.attrs for op in estimate.ops if op.name == "ckks.params")
    n = smallest_ring(params["coeff_modulus_bits"])
    per_ct = int(trial.get("inputs_per_ciphertext", 1))
    if n is None or n >= params["poly_modulus_degree"] or n // 2 // per_ct < PACKED_MIN_SLOTS:
        return None
    smaller = dict(trial, slots=n // 2 // per_ct)
    try:
        ckks = run_passes(approximated, CKKS_PIPELINE, smaller)
        graph = run_passes(_analyzed_copy(ckks.graph), FINAL_PIPELINE, smaller).graph
    except UserError:  # too large for the smaller ring's slots, or its primes do not fit it
        return None
    if _predicted_time(graph) > _predicted_time(estimate):
        return None
    return smaller, ckks, graph


PACKED_MIN_SLOTS = 16  # the smallest one-input layout a packed program is tried with


def _lower_packed(approximated: Graph, calibration, options: dict, slots: int, print_after_all, progress,
                  one: float, one_final: Graph):
    """The slots program (its scales, on a ring of ``slots`` slots) for K inputs per ciphertext:
    laid out for slots / K slots, K the largest power of two whose predicted time per batch of
    ciphertexts stays within PACKED_SLOWDOWN of one input's (the cost model, from the
    lowering's magnitude estimates; ``one``: the one-input program's predicted seconds): K
    inputs for about the time of one, until the values of one input no longer fit the slots
    left to it. The search starts where the one-input program (``one_final``) repeats its
    values (period P: K = slots / P fills the slots its copies take, and that program is
    written from the one-input one: ``_interleaved``) and goes up while K fits (the larger K
    tried in a forked process meanwhile), or down until one does (the time grows with K).
    UnsupportedOpError when no K of 2 or more does."""
    from .backends.common import program_params, slot_period
    from .backends.workers import beside
    from .errors import UnsupportedOpError
    refused = UnsupportedOpError({"packing": []}, {"packing": "two inputs do not fit one ciphertext "
                                                                "for about the time of one"})
    if slots // 4 < PACKED_MIN_SLOTS:
        raise refused
    top = 2
    while slots // (4 * top) >= PACKED_MIN_SLOTS:
        top *= 2

    def fits(seconds) -> bool:
        return seconds is not None and seconds <= PACKED_SLOWDOWN * one

    def upward(k: int) -> list:  # (K, seconds, options) from k up to the first K that does not fit
        found = []
        while k <= top:
            seconds, chosen, _ = _packed_estimate(approximated, options, slots, k)
            found.append((k, seconds, chosen))
            if not fits(seconds):
                break
            k *= 2
        return found

    period = slot_period(one_final, program_params(one_final).slots)
    k = min(max(2, slots // period), top)
    best, derived = None, None
    with beside(upward, 2 * k if 2 * k <= top else None, "It was lowering the program for other layouts.") as above:
        if slots // period == k and one_final.meta.get("one_input_ckks") is not None:
            derived = _interleaved(one_final.meta.pop("one_input_ckks"), options, slots, k, print_after_all,
                                   progress)
        if derived is not None:
            (_, final), _, chosen = derived
            seconds, lowered = _predicted_time(final), None
            if fits(seconds):
                _noise_prediction(final, calibration)  # while the forked process tries the larger K
        else:
            seconds, chosen, lowered = _packed_estimate(approximated, options, slots, k)
        if fits(seconds):
            best = (k, chosen, lowered)
            for k_up, seconds_up, chosen_up in above():
                if not fits(seconds_up):
                    break
                best = (k_up, chosen_up, None)  # lowered again below
    while best is None and k > 2:
        k //= 2
        seconds, chosen, lowered = _packed_estimate(approximated, options, slots, k)
        best = (k, chosen, lowered) if fits(seconds) else None
    if best is None:
        raise refused
    options.update(best[1])
    if derived is not None and best[1] is derived[2]:
        return derived[:2]
    return _lower_measured(approximated, calibration, options, print_after_all, progress, best[2])


def _interleaved(one_input: Graph, options: dict, slots: int, k: int, print_after_all, progress):
    """The packed program for K = slots / P inputs per ciphertext written from the one-input
    program's CKKS lowering ``one_input`` (which this changes), whose values repeat with period P:
    ((lowered, final), timings, options), or None when it does not repeat so
    (``passes.lower_to_ckks.replicas``). Its magnitudes and exact outputs are the one-input
    program's (the same numbers in other slots)."""
    from .passes import FINAL_PIPELINE
    from .passes.lower_to_ckks.replicas import interleaved_program
    graph = interleaved_program(one_input, k, str(options.get("constant_prefix", "")))
    if graph is None:
        return None
    chosen = dict(options, slots=slots // k, inputs_per_ciphertext=k)
    lowered = print_graph(graph)
    try:
        done = run_passes(graph, FINAL_PIPELINE, chosen, print_after_all=print_after_all, progress=progress)
    except UserError:
        return None
    done.graph.meta["exact_outputs"] = one_input.meta.get("exact_outputs")
    return (lowered, done.graph), done.timings, chosen


def _packed_estimate(approximated: Graph, options: dict, slots: int, k: int) -> tuple:
    """(predicted seconds, or None if it does not lower; options; CKKS lowering) of the slots
    program with K inputs per ciphertext."""
    from .passes import CKKS_PIPELINE, FINAL_PIPELINE
    chosen = dict(options, slots=slots // k, inputs_per_ciphertext=k)
    try:
        ckks = run_passes(approximated, CKKS_PIPELINE, chosen)
        estimate = run_passes(_analyzed_copy(ckks.graph), FINAL_PIPELINE, chosen).graph
    except UserError:  # too large for slots / K slots, or for this ring
        return None, chosen, None
    return _predicted_time(estimate), chosen, ckks


PACKED_SLOWDOWN = 2.0


def _analyzed_copy(graph: Graph) -> Graph:
    """A copy of ``graph`` that passes may change freely: its own constant store, and the
    magnitudes of ``graph.meta["max_abs"]`` carried over to its values."""
    copy = graph.copy()
    copy.constants = dict(graph.constants)
    pairs = dict(zip(_values(graph), _values(copy)))
    copy.meta = {"max_abs": {pairs[v]: m for v, m in graph.meta.get("max_abs", {}).items() if v in pairs}}
    return copy


def _predicted_time(graph: Graph | None) -> float:
    """Seconds per batch or input the cost model predicts (stored costs, else modeled)."""
    if graph is None:
        return float("inf")
    from .costmodel import modeled_costs
    from .report import predict_seconds, primitive_costs
    params = next(op.attrs for op in graph.ops if op.name == "ckks.params")
    costs = primitive_costs(params, measure=False) or modeled_costs(params["poly_modulus_degree"],
                                                                     params["coeff_modulus_bits"])
    return sum(predict_seconds(graph, costs).values())


def _lower_measured(approximated: Graph, calibration, options: dict, print_after_all, progress, ckks=None):
    """The program of ``options`` with the magnitudes its ciphertexts reach on the calibration
    inputs; ``ckks``: the lowering of these options made already (unchanged since), if any."""
    from .passes import CKKS_PIPELINE, FINAL_PIPELINE
    from .passes.select_parameters import SlotsMismatch
    if print_after_all is not None:
        ckks = None  # print every pass of the program kept
    while True:
        if ckks is None:
            ckks = run_passes(approximated, CKKS_PIPELINE, options, print_after_all=print_after_all,
                              progress=progress)
        _measure_ciphertexts(ckks.graph, calibration, options["layout"] == "slots")
        lowered = print_graph(ckks.graph)
        exact = ckks.graph.meta.get("exact_outputs")
        one_input = None
        if options["layout"] == "slots" and int(options.get("inputs_per_ciphertext", 1)) == 1:
            one_input = _analyzed_copy(ckks.graph)  # for the packed layout (``_interleaved``)
            one_input.meta["exact_outputs"] = exact
        try:
            done = run_passes(ckks.graph, FINAL_PIPELINE, options, print_after_all=print_after_all,
                              progress=progress)
        except SlotsMismatch as exc:  # per input: the ring's slots over the inputs per ciphertext
            options["slots"] = exc.n // 2 // int(options.get("inputs_per_ciphertext", 1))
            ckks = None
            continue
        done.graph.meta["exact_outputs"] = exact
        done.graph.meta["one_input_ckks"] = one_input
        return (lowered, done.graph), ckks.timings + done.timings


def _predicted_precision(final: Graph, calibration) -> float | None:
    """Largest CKKS error relative to the largest output, by the simulator's noise model on (up to
    NOISE_SAMPLE_BATCH, in the slots layout NOISE_SAMPLE_SLOTS, of) the calibration inputs."""
    return _noise_prediction(final, calibration)[0]


def _noise_prediction(final: Graph, calibration) -> tuple[float | None, float]:
    """(``_predicted_precision``, the fraction of calibration inputs whose classes (the argmax
    of each output with several columns) the noise leaves unchanged). Computed once per program:
    the slots layout's choice of scales and the manifest's precision ask for the same figure."""
    if "noise_prediction" not in final.meta:
        final.meta["noise_prediction"] = _simulated_noise(final, calibration)
    return final.meta["noise_prediction"]


def _simulated_noise(final: Graph, calibration) -> tuple[float | None, float]:
    from .backends.common import is_slots
    from .backends.sim import Simulator  # noqa: F401  (imported before the workers fork)
    small = {k: np.asarray(v)[:NOISE_SAMPLE_SLOTS if is_slots(final) else NOISE_SAMPLE_BATCH]
             for k, v in calibration.items()}
    try:
        stacked, _ = stack_inputs(final, small)
        # two noisy draws: a program's encoded weights carry one draw of encoding error each,
        # which moves its error by 2x or more from one set of keys to the next. A large program's
        # draws go to two forked processes (a compile of LeNet-5 spends most of its time here)
        runs = stacked[0].shape[0]
        simulate = (lambda job: _simulation(final, stacked, job))
        # the exact outputs: those of the magnitude measurement's run, when it had these inputs
        exact = final.meta.get("exact_outputs")
        jobs = list(NOISE_DRAWS)
        if not exact or any(e.shape[0] != runs for e in exact):
            exact, jobs = None, jobs + [None]
        if (os.cpu_count() or 1) > 1 and len(final.ops) * stacked[0][:1].size >= PARALLEL_NOISE_WORK:
            from .backends.workers import forked_map
            results = list(forked_map(simulate, jobs, 2, "It was simulating the compiled program on the "
                                                         "calibration inputs to predict its CKKS noise."))
        else:
            results = list(map(simulate, jobs))
        noisy = results[:len(NOISE_DRAWS)]
        exact = exact or results[-1]
    except UserError:
        return None, 1.0
    pairs = [(a, b) for draw in noisy for a, b in zip(exact, draw) if a.dtype.kind == "f" and a.size]
    if not pairs:
        return None, 1.0
    precision = float(max(np.abs(b - a).max() / max(np.abs(a).max(), 1e-30) for a, b in pairs))
    agree = [np.mean(a.reshape(a.shape[0], -1).argmax(1) == b.reshape(b.shape[0], -1).argmax(1))
             for a, b in pairs if a.ndim >= 2 and a.reshape(a.shape[0], -1).shape[1] > 1]
    return precision, float(min(agree, default=1.0))


NOISE_DRAWS = (0, 1)
PARALLEL_NOISE_WORK = 1 << 20  # ops x values of one input from which the simulations are forked


def _simulation(final: Graph, stacked: list, seed: int | None):
    """The noise prediction's program on its inputs: exact (``seed`` None; the magnitude
    measurement's run gives these outputs already, unless it had other inputs) or with one draw
    of CKKS's errors. Neither checks values against the modulus: parameters were chosen from the
    magnitudes that run measured on these inputs."""
    from .backends.sim import Simulator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if seed is None:
            return Simulator(final, checks=False).run(stacked)
        return Simulator(final, noise=True, seed=seed, checks=False).run(stacked)
# calibration inputs the noise prediction simulates: every slot of each is a sample of the error, so
# a few dozen inputs of the slots layout (thousands of slots each) bound it as well as more would
NOISE_SAMPLE_SLOTS, NOISE_SAMPLE_BATCH = 32, 256


PRECISION_LIMIT = 0.05  # predicted CKKS error, relative to the largest output, past which compile refuses
SLOTS_SAMPLE = 64  # calibration inputs the slots layout simulates for magnitudes (a slot vector per input)


def _measure_ciphertexts(graph: Graph, calibration, slots: bool = False) -> None:
    """Replace the lowering's magnitude estimates by the magnitudes the ciphertext program really
    reaches on the calibration inputs (partial sums of a layer can exceed its result). The slots
    layout simulates the first SLOTS_SAMPLE inputs and keeps the larger of that and the estimate
    (the calibrated range of the tensor a value holds, over all the inputs). The same run's
    outputs on the inputs the noise prediction samples go to ``graph.meta["exact_outputs"]``:
    a noiseless run of the final program computes the same numbers."""
    from .backends.sim import magnitudes_and_outputs
    if slots:
        calibration = {k: np.asarray(v)[:SLOTS_SAMPLE] for k, v in calibration.items()}
    stacked, _ = stack_inputs(graph, calibration)
    measured, graph.meta["exact_outputs"] = magnitudes_and_outputs(
        graph, stacked, NOISE_SAMPLE_SLOTS if slots else NOISE_SAMPLE_BATCH)
    estimates = graph.meta.setdefault("max_abs", {})
    for value, peak in measured.items():
        before = estimates.get(value, float("nan"))
        estimates[value] = max(peak, before) if slots and np.isfinite(before) else peak


def _approximation_report(approximated: Graph, trace: dict, approximate_trace: dict) -> list[dict]:
    """Per approximated activation (the approximation pass's list): kind, interval, degree,
    depth (Newton steps, squarings) and its max error on the calibration data: the approximated
    program's value (``approximate_trace``) against the exact network's (``trace``: the tensor
    graph's values on the calibration data)."""
    originals = approximated.meta.get("originals", {})
    report = []
    for e in approximated.meta.get("approximations", []):
        entry = {k: v for k, v in e.items() if not k.startswith("_") and k != "max_error"}
        entry["interval"] = [round(float(b), 6) for b in e["interval"]]
        source, output = originals.get(e.get("_source")), e.get("_output")
        if source in trace and output in approximate_trace:
            exact, approx = trace[source], approximate_trace[output]
            entry["max_error_on_calibration"] = float(np.max(np.abs(approx - exact)))
        report.append(entry)
    return report


def _values(graph: Graph):
    for op in graph.ops:
        yield from op.results


def load(path) -> Program:
    """Load a ``.hecc`` artifact, checking its integrity."""
    return Program(artifact.load(os.fspath(path)))
