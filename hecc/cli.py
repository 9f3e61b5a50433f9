"""The ``hecc`` command line. Exit codes: 0 success, 2 a user error (one message on stderr, no
traceback), 1 an internal error (a bug in hecc; HECC_DEBUG=1 shows the traceback)."""
from __future__ import annotations

import argparse
import io
import os
import sys
import traceback
import warnings

import numpy as np

from . import __version__
from .errors import HeccWarning, InputError, UserError, WorkerDied
from .outputs import (Terminated, atomic_output, check_output, cleanup_on_signals, is_ciphertext_file,
                      is_hecc_json, is_hecc_picture, is_numpy_file)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hecc", description="Compile ONNX models into CKKS homomorphic-encryption programs.")
    p.add_argument("--version", action="version", version=f"hecc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="ONNX model -> .hecc artifact")
    c.add_argument("model", help="the ONNX model file")
    c.add_argument("-o", "--output", help="artifact path (default: MODEL with .hecc)")
    c.add_argument("--calibration", metavar="X.npy", action="append",
                   help="representative inputs ([NAME=]X.npy, leading batch dimension) whose value "
                        "ranges size the encryption parameters")
    c.add_argument("--layout", default="auto", choices=["auto", "batch", "slots", "packed"],
                   help="how tensors live in ciphertext slots: batch (one input per slot; "
                        "throughput), slots (one input in the slots of one ciphertext; latency), "
                        "packed (several inputs side by side in one ciphertext) or auto (every "
                        "layout the model fits; `hecc run` picks by the number of inputs; default)")
    c.add_argument("--max-rotation-keys", type=int, metavar="K",
                   help="slots layout: at most K Galois keys; other rotations are composed of them")
    c.add_argument("--rescale", default="lazy", choices=["lazy", "eager"],
                   help="lazy: rescale once per multiplicative level (default); eager: after every "
                        "multiply (a baseline)")
    c.add_argument("--scale-bits", type=int,
                   help="CKKS scale of encrypted values (log2; default 26, and 22 for a slots program whose "
                        "linear maps share a prime with the product after them)")
    c.add_argument("--weight-scale-bits", type=int,
                   help="scale of plaintext weights (log2; default 14 in the batch layout, --scale-bits when "
                        "eager; the slots layout compiles 19 and the scale, and keeps the faster)")
    c.add_argument("--activation-degree", type=int,
                   help="degree of the polynomials that replace activations (default: automatic)")
    c.add_argument("--approx-error", type=float, default=0.01,
                   help="automatic degree: largest error as a fraction of the activation's range")
    c.add_argument("--activation-margin", type=float, default=0.1,
                   help="widen each calibrated interval by this fraction of its width on each side")
    c.add_argument("--objective", default="time", choices=["time", "operations"],
                   help="what the slots layout's plans minimize: time (this machine's costs: a rotation "
                        "weighs about ten products; default) or operations (products and rotations alike, "
                        "as papers count HE operations)")
    c.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    c.add_argument("--force", action="store_true", help="overwrite OUTPUT even if it is not a hecc artifact")
    c.add_argument("--report", action="store_true",
                   help="print the compile report: passes, depth, parameters, op counts, sizes, "
                        "predicted time and precision (measures this machine's primitives once)")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    i = sub.add_parser("inspect", help="print a stage of a compiled artifact")
    i.add_argument("artifact")
    i.add_argument("--stage", default="final", choices=["tensor", "ckks", "final"])
    i.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="which layout's program (default: the artifact's first)")
    i.add_argument("--report", action="store_true",
                   help="print the compile report instead of the IR")
    i.add_argument("--graph", metavar="OUT.svg", help="draw the IR graph of the stage as SVG")
    i.add_argument("--levels", metavar="OUT.png", help="plot level and scale along the final program")
    i.add_argument("--force", action="store_true", help="overwrite picture files of another kind")

    cal = sub.add_parser("calibrate", help="measure this machine's CKKS primitives for an artifact's "
                                           "parameters (the cost model of the report)")
    cal.add_argument("artifact")

    r = sub.add_parser("run", help="run a compiled artifact on inputs")
    r.add_argument("artifact")
    r.add_argument("--input", action="append", required=True, metavar="[NAME=]X.npy",
                   help="input array (.npy) with a leading batch dimension; repeat as NAME=X.npy for several")
    r.add_argument("-o", "--output", metavar="Y.npy|Y.npz",
                   help="write the first output (.npy) or every output by name (.npz)")
    r.add_argument("--backend", default="reference", choices=["reference", "sim", "tenseal"])
    r.add_argument("--layout", default="auto", choices=["auto", "batch", "slots", "packed"],
                   help="sim/tenseal: which compiled layout runs (auto: the one predicted fastest "
                        "for this many inputs)")
    r.add_argument("--stats", metavar="S.json", help="write run statistics as JSON")
    r.add_argument("--noise", action="store_true", help="sim backend: add CKKS-like encryption and "
                   "rescale errors to predict TenSEAL's precision")
    r.add_argument("--workers", type=int, help="tenseal backend: worker processes (default: 2; with "
                   "--cluster, one per CPU of the cluster)")
    r.add_argument("--cluster", metavar="ADDRESS", help="tenseal backend: evaluate on the Ray cluster at "
                   "ADDRESS (host:port of `ray start --head`; needs pip install 'hecc[ray]'); keys, "
                   "encryption and decryption stay here")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    r.add_argument("--force", action="store_true", help="overwrite output files of another kind")

    k = sub.add_parser("keygen", help="client: make secret.key and eval.keys for an artifact")
    k.add_argument("artifact")
    k.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="the layout to use (default: the artifact's first)")
    k.add_argument("--out", required=True, metavar="KEYS/", help="folder for the keys")
    k.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.add_argument("--max-key-bytes", type=int, metavar="MIB",
                   help="refuse to make more than MIB mebibytes of evaluation keys (default 4096, or "
                        "HECC_MAX_KEY_BYTES in bytes)")

    e = sub.add_parser("encrypt", help="client: encrypt inputs with the secret key")
    e.add_argument("artifact")
    e.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="the layout to use (default: that of the keys)")
    e.add_argument("inputs", nargs="+", metavar="[NAME=]X.npy")
    e.add_argument("--keys", required=True, metavar="KEYS/")
    e.add_argument("-o", "--output", required=True, metavar="X.ct")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    e.add_argument("--force", action="store_true")
    e.add_argument("--allow-out-of-range", action="store_true",
                   help="encrypt inputs outside the range seen at calibration (refused by default: "
                        "the server cannot check them, and their results may be wrong)")

    v = sub.add_parser("eval", help="server: evaluate encrypted inputs (no secret key)")
    v.add_argument("artifact")
    v.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="the layout to use (default: that of the keys)")
    v.add_argument("ciphertexts", metavar="X.ct")
    v.add_argument("--eval-keys", required=True, metavar="eval.keys")
    v.add_argument("-o", "--output", required=True, metavar="Y.ct")
    v.add_argument("--workers", type=int, help="worker processes (default: 2; with --cluster, one per "
                   "CPU of the cluster)")
    v.add_argument("--cluster", metavar="ADDRESS", help="evaluate on the Ray cluster at ADDRESS (host:port "
                   "of `ray start --head`; needs pip install 'hecc[ray]')")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    v.add_argument("--force", action="store_true")

    d = sub.add_parser("decrypt", help="client: decrypt the server's result")
    d.add_argument("artifact")
    d.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="the layout to use (default: that of the keys)")
    d.add_argument("ciphertexts", metavar="Y.ct")
    d.add_argument("--keys", required=True, metavar="KEYS/")
    d.add_argument("-o", "--output", required=True, metavar="Y.npy|Y.npz")
    d.add_argument("--output-mode", default="logits", choices=["logits", "argmax"],
                   help="argmax keeps only the predicted class (share that, not the values)")
    d.add_argument("--round", type=int, metavar="DIGITS", help="round the decrypted values")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    d.add_argument("--force", action="store_true")

    s = sub.add_parser("serve", help="server: an HTTP service that evaluates clients' encrypted inputs "
                                     "(needs pip install 'hecc[serve]')")
    s.add_argument("artifact")
    s.add_argument("--data", required=True, metavar="DIR",
                   help="folder for the service's state (key sets, jobs, results); made if new, reused "
                        "after a restart")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one)")
    s.add_argument("--workers", type=int, default=1, help="evaluation processes (default 1)")
    s.add_argument("--cluster", metavar="ADDRESS", help="evaluate on the Ray cluster at ADDRESS "
                   "(needs pip install 'hecc[ray]')")
    s.add_argument("--max-queue", type=int, default=64, metavar="JOBS",
                   help="jobs queued or running at once; more are answered 503 (default 64)")
    s.add_argument("--max-inputs", type=int, default=64, metavar="N",
                   help="inputs in one job (default 64); bounds the size of an upload")
    s.add_argument("--max-keysets", type=int, default=1000, metavar="K", help="key sets registered (default 1000)")
    s.add_argument("--max-uploads", type=int, default=16, metavar="N",
                   help="uploads received at once; more are answered 503 (default 16)")
    s.add_argument("--upload-timeout", type=float, default=30.0, metavar="S",
                   help="drop an upload when no byte came for S seconds (default 30)")

    f = sub.add_parser("infer", help="client: encrypt inputs, have a `hecc serve` service evaluate them, "
                                     "decrypt the result")
    f.add_argument("artifact")
    f.add_argument("inputs", nargs="+", metavar="[NAME=]X.npy")
    f.add_argument("--server", required=True, metavar="URL", help="the service, http://HOST:PORT")
    f.add_argument("--keys", required=True, metavar="KEYS/",
                   help="the keys folder (made, with a new key set, if it has none)")
    f.add_argument("--layout", choices=["batch", "slots", "packed"],
                   help="the layout of new keys (default: that of the keys, else the fastest for this many inputs)")
    f.add_argument("-o", "--output", required=True, metavar="Y.npy|Y.npz")
    f.add_argument("--output-mode", default="logits", choices=["logits", "argmax"],
                   help="argmax keeps only the predicted class (share that, not the values)")
    f.add_argument("--round", type=int, metavar="DIGITS", help="round the decrypted values")
    f.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="give up when the service cannot be reached for S seconds, or the job has not "
                        "ended S seconds after it was submitted (default 600)")
    f.add_argument("--allow-out-of-range", action="store_true",
                   help="encrypt inputs outside the range seen at calibration (see encrypt)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    f.add_argument("--force", action="store_true")

    o = sub.add_parser("opt", help="run passes on textual IR and print the result")
    o.add_argument("file", help="IR text (.hir); - reads stdin")
    o.add_argument("-p", "--passes", required=True, help="comma-separated pass names")
    o.add_argument("--weights", metavar="W.npz", help="constant values for passes that need them")
    o.add_argument("--print-after-all", action="store_true")
    return p


def _cmd_compile(args) -> int:
    from .api import compile as compile_model
    from .artifact import is_artifact
    out = args.output or os.path.splitext(args.model)[0] + ".hecc"
    check_output(out, is_artifact, args.force, reads=(args.model, *_paths(args.calibration)))
    calibration = _named_arrays(args.calibration) if args.calibration else None
    prog = compile_model(args.model, calibration=calibration, layout=args.layout,
                         max_rotation_keys=args.max_rotation_keys, scale_bits=args.scale_bits,
                         weight_scale_bits=args.weight_scale_bits, rescale=args.rescale,
                         activation_degree=args.activation_degree, approx_error=args.approx_error,
                         activation_margin=args.activation_margin, objective=args.objective,
                         print_after_all=sys.stderr if args.print_after_all else None)
    prog.save(out)
    if args.report:
        from .report import render
        sys.stdout.write(render(prog))
    if not args.quiet:
        ins = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in prog.inputs)
        outs = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in prog.outputs)
        print(f"compiled {args.model} -> {out} (inputs: {ins}; outputs: {outs})")
        from .report import refinement_text
        for a in prog.artifact.manifest.get("approximations", []):
            err = a.get("max_error_on_calibration")
            err_text = f", max error {err:.3g} on the calibration data" if err is not None else ""
            print(f"approximated {a['kind']} by a degree-{a['degree']} polynomial{refinement_text(a)} on "
                  f"[{a['interval'][0]:.4g}, {a['interval'][1]:.4g}] (depth {a['depth']}{err_text})")
        for layout in prog.layouts:
            params = prog.with_layout(layout).parameters
            k = params.get("inputs_per_ciphertext", 1)
            per = (f"{params['poly_modulus_degree'] // 2} inputs per ciphertext" if layout == "batch" else
                   f"{'one input' if k == 1 else f'{k} inputs'} per ciphertext, "
                   f"{len(params.get('galois_steps', []))} rotation keys")
            print(f"encryption ({layout} layout): CKKS N={params['poly_modulus_degree']}, coefficient "
                  f"modulus {params['coeff_modulus_bits']} bits, 128-bit security ({per})")
        if not prog.layouts:
            why = prog.artifact.manifest.get("not_encrypted_because", "")
            print(f"not compiled for encryption: {why}\nthe artifact runs on --backend reference only")
        for layout, why in prog.artifact.manifest.get("layout_unavailable", {}).items():
            print(f"no {layout} layout: {why}")
    return 0


def _split_item(item: str) -> tuple[str | None, str]:
    """[NAME=]PATH -> (NAME or None, PATH); a path that exists as written is a path, '=' and all."""
    name, sep, path = item.partition("=")
    if not sep or os.path.exists(item):
        return None, item
    return name, path


def _named_arrays(items: list[str]) -> dict | np.ndarray:
    """[NAME=]X.npy items -> one array (a single unnamed .npy), or a dict by name (NAME=X.npy
    items, or the arrays of one .npz by their names)."""
    from .arrays import load_named_arrays, load_npy
    if len(items) == 1 and _split_item(items[0])[0] is None:
        path = items[0]
        return load_named_arrays(path) if path.endswith(".npz") else load_npy(path)
    out = {}
    for item in items:
        name, path = _split_item(item)
        if name is None:
            raise InputError(f"{item}: with several arrays, give each as NAME=X.npy")
        if name in out:
            raise InputError(f"input {name!r} is given twice; give each input once")
        out[name] = load_npy(path)
    return out


def _cmd_inspect(args) -> int:
    from .api import load
    prog = _with_layout(load(args.artifact), args.layout, None)
    if args.graph or args.levels:
        from .pictures import graph_svg, levels_png
        for path in (args.graph, args.levels):
            if path:
                check_output(path, is_hecc_picture, args.force, reads=(args.artifact,))
        if args.graph:
            stage = prog.stage_name(args.stage)
            prog.ir(stage)  # a clear error for a missing stage
            with atomic_output(args.graph) as f:
                f.write(graph_svg(prog.artifact.graph(stage)).encode())
            print(f"wrote {args.graph}")
        if args.levels:
            if not prog.encrypted:
                raise UserError("this artifact has no CKKS program, so it has no levels to plot")
            with atomic_output(args.levels) as f:
                levels_png(prog.graph, f)
            print(f"wrote {args.levels}")
        return 0
    if not args.report:
        sys.stdout.write(prog.ir(args.stage))
        return 0
    from .report import render
    sys.stdout.write(render(prog))
    return 0


def _cmd_calibrate(args) -> int:
    from .api import load
    from .report import COSTS_PATH, primitive_costs
    params = load(args.artifact).parameters
    if params is None:
        raise UserError("this artifact has no CKKS program, so there is nothing to calibrate")
    costs = primitive_costs(params, refresh=True)
    for name, per_level in costs.items():
        print(f"{name:<15}" + "  ".join(f"level {i}: {t * 1e3:.3f} ms" for i, t in enumerate(per_level)))
    print(f"stored in {COSTS_PATH}")
    return 0


def _cmd_run(args) -> int:
    import json
    from .api import load
    reads = (args.artifact, *_paths(args.input))
    if args.output:
        if not args.output.endswith((".npy", ".npz")):
            raise UserError(f"--output {args.output}: use a .npy (first output) or .npz (all outputs) path")
        check_output(args.output, is_numpy_file, args.force, reads)
    if args.stats:
        check_output(args.stats, is_hecc_json, args.force, reads)
        if args.output and os.path.abspath(args.stats) == os.path.abspath(args.output):
            raise UserError("--stats and --output name the same file")
    prog = load(args.artifact)
    inputs = _input_arrays(prog, args.input)
    progress = _progress(args)
    if args.backend == "tenseal" and not args.quiet:
        sys.stderr.write("hecc: generating keys, encrypting, evaluating and decrypting with SEAL...\n")
    outputs = prog.run(inputs, backend=args.backend, noise=args.noise, workers=args.workers,
                       progress=progress, layout=args.layout, cluster=args.cluster)
    if args.output:
        _save_outputs(args.output, outputs)
    else:
        with np.printoptions(precision=6, suppress=True, threshold=200):
            for name, y in outputs.items():
                print(f"{name}: shape {'x'.join(map(str, y.shape))}\n{y}")
    if args.stats:
        with atomic_output(args.stats) as f:
            f.write(json.dumps(prog.last_stats, indent=2).encode())
    return 0


def _save_outputs(path: str, outputs: dict) -> None:
    """The first output (.npy) or every output by name (.npz), written atomically."""
    buffer = io.BytesIO()  # numpy's own writes lose the reason a write failed (ENOSPC, EFBIG)
    if path.endswith(".npz"):
        np.savez(buffer, **outputs)
    else:
        np.save(buffer, next(iter(outputs.values())))
    with atomic_output(path) as f:
        f.write(buffer.getbuffer())


def _paths(items) -> list[str]:
    """The file paths in [NAME=]PATH arguments."""
    return [_split_item(item)[1] for item in items or ()]


def _cmd_opt(args) -> int:
    from .ir import parse, print_graph
    from .pipeline import run_passes
    if args.file == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        if not os.path.isfile(args.file):
            raise UserError(f"{args.file}: no such file")
        with open(args.file) as f:
            text, source = f.read(), args.file
    constants = {}
    if args.weights:
        with np.load(args.weights, allow_pickle=False) as npz:
            constants = {k: npz[k] for k in npz.files}
    graph = parse(text, constants, source=source)
    from .ir import verify
    verify(graph, check_constants=bool(args.weights))
    try:
        result = run_passes(graph, args.passes, print_after_all=sys.stderr if args.print_after_all else None,
                            check_constants=bool(args.weights), verify_each=True)
    except KeyError as exc:
        name = exc.args[0] if exc.args else ""
        if isinstance(name, str) and name not in graph.constants:
            raise UserError(f"{source}: a pass needs the value of constant {name!r}, which the IR names "
                            "but does not hold; pass --weights W.npz with the constants' arrays") from None
        raise
    sys.stdout.write(print_graph(result.graph))
    return 0


def _progress(args):
    from .progress import Progress
    return None if args.quiet else Progress()


def _with_layout(prog, layout: str | None, key_file: str | None):
    """The artifact's program in ``layout``; by default the layout the keys were made for (or
    the artifact's first)."""
    from .clientserver import file_layout
    if layout is None and key_file is not None:
        layout = file_layout(key_file)
        if layout not in prog.layouts:
            layout = None
    return prog.with_layout(layout) if layout else prog


def _cmd_keygen(args) -> int:
    from .api import load
    from .clientserver import Client
    prog = _with_layout(load(args.artifact), args.layout, None)
    secret, evaluation = Client(prog, args.out, _progress(args)).keygen(
        force=args.force, max_key_bytes=args.max_key_bytes and args.max_key_bytes << 20)
    if not args.quiet:
        print(f"wrote {secret} (keep it: it decrypts) and {evaluation} (for the server)")
    return 0


def _cmd_encrypt(args) -> int:
    from .api import load
    from .clientserver import Client
    secret = os.path.join(args.keys, "secret.key")
    check_output(args.output, is_ciphertext_file, args.force, reads=(args.artifact, secret, *_paths(args.inputs)))
    prog = _with_layout(load(args.artifact), args.layout, secret)
    Client(prog, args.keys, _progress(args)).encrypt(_input_arrays(prog, args.inputs), args.output,
                                                     args.allow_out_of_range)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def _cmd_eval(args) -> int:
    from .api import load
    from .clientserver import Server
    check_output(args.output, is_ciphertext_file, args.force,
                 reads=(args.artifact, args.ciphertexts, args.eval_keys))
    prog = _with_layout(load(args.artifact), args.layout, args.eval_keys)
    Server(prog, args.eval_keys, _progress(args), cluster=args.cluster,
           workers=args.workers).evaluate(args.ciphertexts, args.output)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def _cmd_decrypt(args) -> int:
    from .api import load
    from .clientserver import Client
    if not args.output.endswith((".npy", ".npz")):
        raise UserError(f"-o {args.output}: use a .npy (first output) or .npz (all outputs) path")
    secret = os.path.join(args.keys, "secret.key")
    check_output(args.output, is_numpy_file, args.force, reads=(args.artifact, args.ciphertexts, secret))
    prog = _with_layout(load(args.artifact), args.layout, secret)
    outputs = Client(prog, args.keys, _progress(args)).decrypt(args.ciphertexts, args.output_mode,
                                                                            args.round)
    _save_outputs(args.output, outputs)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def _cmd_serve(args) -> int:
    from .service.serve import serve
    for name in ("max_queue", "max_inputs", "max_keysets", "max_uploads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 0 to 65535")
    if not args.upload_timeout > 0:
        raise UserError("--upload-timeout must be a positive number of seconds")
    try:
        from .service.app import Limits
    except ImportError:
        Limits = None  # serve says which extra is missing
    limits = Limits and Limits(max_queue=args.max_queue, max_inputs=args.max_inputs, max_keysets=args.max_keysets,
                               max_uploads=args.max_uploads, upload_timeout=args.upload_timeout)
    serve(args.artifact, args.data, args.host, args.port, args.workers, args.cluster, limits)
    return 0


def _cmd_infer(args) -> int:
    from .api import load
    from .clientserver import Client
    if not args.output.endswith((".npy", ".npz")):
        raise UserError(f"-o {args.output}: use a .npy (first output) or .npz (all outputs) path")
    if not args.timeout > 0:
        raise UserError("--timeout must be a positive number of seconds")
    secret = os.path.join(args.keys, "secret.key")
    check_output(args.output, is_numpy_file, args.force, reads=(args.artifact, secret, *_paths(args.inputs)))
    prog = load(args.artifact)
    inputs = _input_arrays(prog, args.inputs)
    layout = args.layout
    if layout is None and not os.path.exists(secret) and prog.encrypted:
        from .runtime import stack_inputs
        layout = prog.choose_layout(stack_inputs(prog.artifact.graph("tensor"), inputs)[1], measure=False)
    prog = _with_layout(prog, layout, secret)
    outputs = Client(prog, args.keys, _progress(args)).infer(inputs, args.server, args.output_mode, args.round,
                                                             args.timeout, args.allow_out_of_range)
    _save_outputs(args.output, outputs)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def _input_arrays(prog, items) -> dict:
    from .arrays import load_npy
    names = [n for n, _ in prog.inputs]
    inputs = {}
    for item in items:
        name, path = _split_item(item)
        if name is None:
            if len(names) != 1:
                raise InputError(f"the model has inputs {', '.join(names)}; give each as NAME=X.npy")
            name = names[0]
        if name in inputs:
            raise InputError(f"input {name!r} is given twice; give each input once")
        inputs[name] = load_npy(path)
    return inputs


COMMANDS = {"compile": _cmd_compile, "inspect": _cmd_inspect, "run": _cmd_run, "opt": _cmd_opt,
            "calibrate": _cmd_calibrate, "keygen": _cmd_keygen, "encrypt": _cmd_encrypt, "eval": _cmd_eval, "decrypt": _cmd_decrypt,
            "serve": _cmd_serve, "infer": _cmd_infer}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(f"hecc: warning: {message}\n")


def main(argv=None) -> int:
    try:
        if argv is None:  # the process is ours: clean up temporary outputs on SIGTERM
            cleanup_on_signals()
        args = _build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if getattr(args, "quiet", False) else "always", HeccWarning)
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except UserError as exc:
        sys.stderr.write(f"hecc: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("hecc: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write("hecc: terminated\n")
        return 143
    except WorkerDied as exc:
        sys.stderr.write(f"hecc: error: {exc}\n")
        return 1
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in hecc: say so, keep the traceback for those who ask
        if os.environ.get("HECC_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"hecc: internal error: {type(exc).__name__}: {exc}\n"
                         "this is a bug in hecc; rerun with HECC_DEBUG=1 for the traceback and report it\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
