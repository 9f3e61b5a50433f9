"""Faults as a user or an attacker meets them, through the real ``hecc`` command line:

- SIGKILL at many moments of keygen, encrypt, eval and decrypt (both layouts): no file outside
  the keys folder loads as a SEAL secret key, no temporary file is left, key folders hold whole
  key files, outputs are the old file or a whole new one, no worker outlives the command;
- a worker killed under ``hecc run``: exit 1 with one message, promptly, no worker left;
- SIGTERM under ``hecc run``: exit 143 promptly, workers gone, nothing written;
- zip and zstd bombs in every container (artifact, nested weights, eval.keys, secret.key, input
  and result ciphertexts): exit 2 with one message and a small peak memory (measured in a wrapper
  process that runs hecc as its only child);
- outputs that cannot be written (missing folder, a folder root cannot write, a full disk
  simulated with RLIMIT_FSIZE): exit 2 with one message, before any long work where possible,
  nothing left behind and no existing file changed.

Figures are printed (run with ``-s`` to see them)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

import hecc
from hecc.clientserver import fingerprint, member_limits
from hecc.containers import read_container

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procutil  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")
EXAMPLE = os.path.join(ROOT, "examples", "cryptonets_mnist")
MODEL, DIGITS = os.path.join(EXAMPLE, "model.onnx"), os.path.join(EXAMPLE, "input.npy")
KEY_NAMES = {"secret.key", "eval.keys"}


# --- helpers ---------------------------------------------------------------------------------------

def _env(tmpdir) -> dict:
    env = dict(os.environ, TMPDIR=str(tmpdir))
    env.pop("HECC_DEBUG", None)
    return env


def _hecc(args, cwd, env, timeout=600, **kw):
    return subprocess.run([HECC, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _one_error(stderr: str) -> str:
    """The single message hecc printed: one line, an error, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one message, got {len(lines)} lines:\n{stderr}"
    assert lines[0].startswith("hecc: error: "), stderr
    return lines[0]


def _listing(folder) -> dict[str, str]:
    """Name -> sha256 of every file in ``folder`` (a snapshot to compare)."""
    return {n: _sha(os.path.join(folder, n)) if os.path.isfile(os.path.join(folder, n)) else "dir"
            for n in sorted(os.listdir(folder))}


class SecretKeyScanner:
    """Tries every regular file, every member of every zip file and every SEAL object found inside
    a file (by its header) as a SEAL secret key of either layout of the program."""

    SEAL_HEAD = struct.Struct("<HBBBBHQ")
    MAGIC = b"\x5e\xa1\x10\x04"  # 0xA15E, header size 16, version 4
    MAX_FILE = 512 << 20

    def __init__(self, prog):
        from hecc.backends.tenseal import _Seal
        self.contexts = {}
        for layout in prog.layouts:
            params = prog.with_layout(layout).parameters
            self.contexts[layout] = _Seal(params["poly_modulus_degree"], params["coeff_modulus_bits"],
                                          relin=False).context
        self.tried = 0

    def loads(self, blob: bytes) -> list[str]:
        import tenseal.sealapi as seal
        from hecc.backends import seal_bytes
        found = []
        for layout, context in self.contexts.items():
            try:
                seal_bytes.from_bytes(seal.SecretKey(), context, blob)
                found.append(layout)
            except Exception:  # noqa: BLE001 - anything SEAL refuses is not a secret key
                pass
        return found

    def _blobs(self, where: str, data: bytes):
        yield where, data
        if data[:4] == b"PK\x03\x04" or data[-22:-18] == b"PK\x05\x06" or zipfile.is_zipfile(io.BytesIO(data)):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    for info in zf.infolist():
                        if info.file_size <= self.MAX_FILE:
                            try:
                                yield f"{where}!{info.filename}", zf.read(info)
                            except Exception:  # noqa: BLE001 - a damaged member is no key
                                pass
            except Exception:  # noqa: BLE001
                pass
        start = 0
        while (at := data.find(self.MAGIC, start)) >= 0:
            start = at + 1
            if at + 16 <= len(data):
                size = self.SEAL_HEAD.unpack_from(data, at)[-1]
                if 16 < size <= len(data) - at:
                    yield f"{where}@{at}", data[at:at + size]

    def scan(self, roots, exclude=()) -> list[tuple[str, list[str]]]:
        exclude = {os.path.realpath(e) for e in exclude}
        hits, seen = [], set()
        for root in roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in exclude]
                for name in files:
                    path = os.path.join(folder, name)
                    try:
                        st = os.lstat(path)
                        if not stat.S_ISREG(st.st_mode) or st.st_size > self.MAX_FILE:
                            continue
                        with open(path, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    for where, blob in self._blobs(path, data):
                        digest = hashlib.sha256(blob).digest()
                        if digest in seen:
                            continue
                        seen.add(digest)
                        self.tried += 1
                        layouts = self.loads(blob)
                        if layouts:
                            hits.append((where, layouts))
        return hits


# --- the compiled example ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def art(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    x = np.load(DIGITS)
    np.save(root / "x4.npy", x[:4])
    np.save(root / "x2.npy", x[:2])
    np.save(root / "x64.npy", x[:64])
    proc = _hecc(["compile", MODEL, "-o", root / "m.hecc", "--calibration", DIGITS, "-q"], root, _env(root))
    assert proc.returncode == 0, proc.stderr
    prog = hecc.load(str(root / "m.hecc"))
    assert set(prog.layouts) == {"batch", "slots", "packed"}
    return SimpleNamespace(root=root, hecc=root / "m.hecc", x4=root / "x4.npy", x2=root / "x2.npy",
                           x64=root / "x64.npy", prog=prog)


@pytest.fixture(scope="module")
def client(art, tmp_path_factory):
    """Slots-layout keys, an encrypted input (2 digits) and its encrypted result, made by the CLI."""
    root = tmp_path_factory.mktemp("client")
    env = _env(root)
    for args in (["keygen", art.hecc, "--out", root / "keys", "--layout", "slots", "-q"],
                 ["encrypt", art.hecc, art.x2, "--keys", root / "keys", "-o", root / "x.ct", "-q"],
                 ["eval", art.hecc, root / "x.ct", "--eval-keys", root / "keys" / "eval.keys", "-o",
                  root / "y.ct", "-q"],
                 ["decrypt", art.hecc, root / "y.ct", "--keys", root / "keys", "-o", root / "y.npy", "-q"]):
        proc = _hecc(args, root, env)
        assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(root=root, keys=root / "keys", x=root / "x.ct", y=root / "y.ct",
                           prog=art.prog.with_layout("slots"))


# --- 1. SIGKILL at many moments -------------------------------------------------------------------

def _delays(duration: float) -> list[float]:
    """Kill moments spread over a command that takes ``duration`` seconds."""
    fixed = [d for d in (0.05, 0.2, 0.5, 1.0, 2.0) if d < 0.85 * duration]
    fractions = (0.2, 0.4, 0.6, 0.75, 0.9) if duration < 3 else (0.3, 0.55, 0.8)
    out = []
    for d in sorted(fixed + [f * duration for f in fractions]):
        if not out or d - out[-1] >= 0.05:
            out.append(round(d, 3))
    return out


def _kill_at(cmd, cwd, env, delay, marker: str) -> dict | None:
    """Start ``cmd``, SIGKILL it ``delay`` seconds later (or, when ``delay`` is a function, as
    soon as it returns true); None if it ended first. Returns what ran under it at the kill and
    what still ran 2 s later."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    start = time.monotonic()
    if callable(delay):
        while proc.poll() is None and not delay() and time.monotonic() - start < 120:
            time.sleep(0.0005)
    else:
        time.sleep(max(0.0, delay - (time.monotonic() - start)))
    if proc.poll() is not None:
        proc.communicate()
        return None
    family = procutil.descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    if proc.returncode == 0:  # it finished between the check and the kill
        return None
    assert proc.returncode == -signal.SIGKILL
    left, waited = procutil.wait_gone(family, marker, timeout=2.0)
    return {"family": family, "left": left, "waited": waited}


def _inode(path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _key_files(folder, prog) -> dict[str, str]:
    """Key file name -> key set, for each key file in ``folder``; each must read as a whole key
    file of its kind for this program."""
    present = {}
    for name, kind in (("secret.key", "secret"), ("eval.keys", "eval")):
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            header, _ = read_container(path, (kind,), fingerprint(prog), member_limits(prog))
            present[name] = header["keyset"]
    return present


@pytest.mark.parametrize("layout", ["slots", "batch"])
def test_sigkill_leaves_no_secret_key_no_temporary_file_and_no_worker(art, layout, tmp_path):
    work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    env, marker = _env(tmpdir), str(tmp_path)
    prog = art.prog.with_layout(layout)
    shutil.copy(art.hecc, work / "m.hecc")
    shutil.copy(art.x4, work / "x.npy")
    shm_before = set(os.listdir("/dev/shm"))

    def a(name):
        return str(work / name)

    commands = {
        "keygen": lambda out, force: ["keygen", a("m.hecc"), "--out", out, "--layout", layout, "-q"]
        + (["--force"] if force else []),
        "encrypt": lambda out, force: ["encrypt", a("m.hecc"), a("x.npy"), "--keys", a("keys"), "-o", out, "-q"],
        "eval": lambda out, force: ["eval", a("m.hecc"), a("x.ct"), "--eval-keys", a("keys/eval.keys"), "-o",
                                    out, "-q"],
        "decrypt": lambda out, force: ["decrypt", a("m.hecc"), a("y.ct"), "--keys", a("keys"), "-o", out, "-q"],
    }
    outputs = {"keygen": "keys", "encrypt": "x.ct", "eval": "y.ct", "decrypt": "y.npy"}
    allowed = {"m.hecc", "x.npy", *outputs.values()}
    key_dirs = {"keys"}

    def clean_everywhere(what):
        assert os.listdir(tmpdir) == [], f"{what}: left in TMPDIR: {os.listdir(tmpdir)}"
        extra = sorted(set(os.listdir(work)) - allowed)
        assert not extra, f"{what}: left in the working folder: {extra}"
        for d in key_dirs:
            if os.path.isdir(work / d):
                extra = sorted(set(os.listdir(work / d)) - KEY_NAMES)
                assert not extra, f"{what}: left in the keys folder {d}: {extra}"

    durations = {}
    # the batch layout's eval takes 17 s or more (one batch of 4096 slots, whatever the number of
    # inputs): it is killed at fixed moments of its first seconds (its workers are then running)
    # and not run to the end, so its decrypt is not tried (the slots layout covers it)
    fixed = {"eval": [0.3, 1.0, 2.0, 3.5, 5.0, 7.0]} if layout == "batch" else {}
    for name, make in commands.items():
        if name in fixed or (layout == "batch" and name == "decrypt"):
            continue
        start = time.monotonic()
        proc = _hecc(make(a(outputs[name]), False), work, env)
        durations[name] = time.monotonic() - start
        assert proc.returncode == 0, proc.stderr
    clean_everywhere("complete runs")
    reference = np.load(work / "y.npy") if "decrypt" in durations else None

    plan = {name: _delays(duration) for name, duration in durations.items()}
    plan.update(fixed)
    # and keygen killed right after it wrote secret.key: into a new folder, and replacing keys
    plan["keygen"] += ["once secret.key is written", "once secret.key is replaced"]
    kills = {name: 0 for name in plan}
    finished_first = {name: 0 for name in plan}
    with_children = {name: 0 for name in plan}
    worker_counts, waits, key_states = [], [], {}
    for name, delays in plan.items():
        for i, delay in enumerate(delays):
            existing = i % 2 == 1 and name not in fixed  # every other kill replaces an existing output
            if isinstance(delay, str):
                existing = delay.endswith("replaced")
            moment = delay if isinstance(delay, str) else f"after {delay} s"
            what = f"{layout} {name} killed {moment} ({'over an existing' if existing else 'new'} output)"
            if name == "keygen":
                target = work / f"kg{i}"
                key_dirs.add(target.name)
                if existing:
                    shutil.copytree(work / "keys", target)
                old = _listing(target) if existing else None
            else:
                target = work / f"k-{name}-{i}{os.path.splitext(outputs[name])[1]}"
                if existing:
                    shutil.copy(work / outputs[name], target)
                old = _sha(target) if existing else None
            allowed.add(target.name)
            when = delay
            if delay == "once secret.key is written":
                when = (lambda t: lambda: os.path.exists(t / "secret.key"))(target)
            elif delay == "once secret.key is replaced":
                when = (lambda t, inode: lambda: _inode(t / "secret.key") not in (inode, None))(
                    target, _inode(target / "secret.key"))
            result = _kill_at([HECC, *commands[name](str(target), existing)], work, env, when, marker)
            if result is None:
                finished_first[name] += 1
            else:
                kills[name] += 1
                with_children[name] += bool(result["family"])
                worker_counts.append(len(result["family"]))
                waits.append(result["waited"])
                assert not result["left"], (f"{what}: still running 2 s later: "
                                            f"{procutil.describe(result['left'])}")
            clean_everywhere(what)
            if name == "keygen":
                state = "no folder"
                if os.path.isdir(target):
                    mode = stat.S_IMODE(os.stat(target).st_mode)
                    assert mode & 0o077 == 0, f"{what}: keys folder mode {mode:o}"
                    present = _key_files(target, prog)  # raises if a key file is not whole
                    if "secret.key" in present:
                        smode = stat.S_IMODE(os.stat(target / "secret.key").st_mode)
                        assert smode == 0o600, f"{what}: secret.key mode {smode:o}"
                    if not present:
                        state = "no key files"
                    elif len(present) == 1:
                        state = f"only {next(iter(present))}"
                    elif len(set(present.values())) == 1:
                        state = "whole key set" + (" (unchanged)" if existing and _listing(target) == old else "")
                    else:
                        state = "secret.key and eval.keys of different key sets"
                if isinstance(delay, str):
                    state += f" [killed {delay}]"
                key_states[state] = key_states.get(state, 0) + 1
                again = _hecc(commands["keygen"](str(target), os.path.isdir(target) and bool(os.listdir(target))),
                              work, env)
                assert again.returncode == 0, f"{what}: keygen again: {again.stderr}"
                present = _key_files(target, prog)
                assert set(present) == KEY_NAMES and len(set(present.values())) == 1
            elif os.path.lexists(target):
                if not (existing and _sha(target) == old):  # else: a whole new output
                    if name == "decrypt":
                        assert np.load(target).shape == reference.shape, what
                    else:
                        read_container(str(target), ("input" if name == "encrypt" else "output",),
                                       fingerprint(prog), member_limits(prog))
            clean_everywhere(what)

    scanner = SecretKeyScanner(art.prog)
    hits = scanner.scan([work, tmpdir, "/dev/shm"], exclude=[work / d for d in key_dirs])
    control = scanner.scan([work / "keys"])
    shm_new = sorted(set(os.listdir("/dev/shm")) - shm_before)
    print(f"\n[sigkill {layout}] command seconds: "
          + ", ".join(f"{n} {d:.2f}" for n, d in durations.items())
          + f"\n[sigkill {layout}] kills: {kills} (total {sum(kills.values())}); ended before the kill: "
          f"{finished_first}\n[sigkill {layout}] kills with worker processes running: {with_children}, "
          f"at most {max(worker_counts, default=0)}; all gone within {max(waits, default=0):.3f} s"
          f"\n[sigkill {layout}] keygen folders after the kill: {key_states}"
          f"\n[sigkill {layout}] SEAL objects tried as a secret key: {scanner.tried}; secret keys "
          f"outside the keys folders: {hits}; new names in /dev/shm: {shm_new}")
    # the packed layout has the slots layout's parameters, so its key loads under both
    found = [layouts for where, layouts in control if where.endswith("secret.key!secret")]
    assert len(found) == 1 and layout in found[0], f"the scanner must find the real secret key: {control}"
    assert not hits, f"SEAL secret keys outside the keys folder: {hits}"
    assert sum(kills.values()) >= (20 if layout == "slots" else 15), kills
    assert all(kills.values()), kills
    shutil.rmtree(work)  # gigabytes of ciphertext copies in the batch layout


# --- 2 and 3. a worker killed, SIGTERM --------------------------------------------------------------

def _start_run_with_workers(art, tmp_path, extra=()):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    cmd = [HECC, "run", str(art.hecc), "--input", str(art.x64), "--backend", "tenseal", "--layout", "slots",
           "-q", *map(str, extra)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmpdir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, workers = time.monotonic() + 120, set()
    while time.monotonic() < deadline and proc.poll() is None:
        line = procutil.cmdline(proc.pid)  # forked workers keep their parent's command line
        workers = {c for c in procutil.children(proc.pid) if procutil.cmdline(c[0]) == line}
        if len(workers) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None and len(workers) == 2, f"no 2 workers seen: {workers}, {proc.poll()}"
    time.sleep(0.3)  # let them compute
    return proc, workers, tmpdir


def test_killed_worker_ends_the_run_with_one_message(art, tmp_path):
    proc, workers, tmpdir = _start_run_with_workers(art, tmp_path)
    victim = min(workers)
    start = time.monotonic()
    os.kill(victim[0], signal.SIGKILL)
    out, err = procutil.communicate_or_fail(proc, 60, "hecc run did not end within 60 s of its worker's death")
    elapsed = time.monotonic() - start
    left, waited = procutil.wait_gone(workers, str(art.root), timeout=2.0)
    print(f"\n[worker killed] workers {sorted(p for p, _ in workers)}, killed {victim[0]}: hecc exited "
          f"{proc.returncode} {elapsed:.3f} s after the kill; other worker gone {waited:.3f} s after "
          f"exit\n[worker killed] stderr: {err.strip()}")
    assert proc.returncode == 1, err
    assert elapsed < 10
    message = _one_error(err)
    assert "worker" in message and "killed" in message and "SIGKILL" in message, message
    assert not left, procutil.describe(left)
    assert os.listdir(tmpdir) == []


def test_sigterm_during_run_ends_promptly_and_writes_nothing(art, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output, stats = out_dir / "y.npy", out_dir / "s.json"
    proc, workers, tmpdir = _start_run_with_workers(art, tmp_path, ["--output", output, "--stats", stats])
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, err = procutil.communicate_or_fail(proc, 60, "hecc run did not end within 60 s of SIGTERM")
    elapsed = time.monotonic() - start
    left, waited = procutil.wait_gone(workers, str(art.root), timeout=1.0)
    print(f"\n[sigterm] hecc exited {proc.returncode} {elapsed:.3f} s after SIGTERM; workers gone "
          f"{waited:.3f} s after exit; stderr: {err.strip()!r}")
    assert proc.returncode == 143, err
    assert elapsed < 5
    assert "Traceback" not in err and err.strip() == "hecc: terminated", err
    assert not left, procutil.describe(left)
    assert os.listdir(tmpdir) == []
    assert not os.path.lexists(output)
    assert os.listdir(out_dir) == []


# --- 4. bombs -------------------------------------------------------------------------------------

BOMB = 2 << 30  # bytes each bomb inflates to
CHUNK = 16 << 20


def _deflate_zeros(prefix: bytes = b"", digest: bool = True) -> SimpleNamespace:
    """A raw DEFLATE stream of ``prefix`` + BOMB zero bytes (~2 MB), with its CRC-32, size and
    (``digest``) sha256. Built with full flushes, so the stream is a first part, one repeated
    part and a last part; after a full flush nothing refers back, so inflating the first part,
    the repeated part twice and the last part shows the whole stream is sound."""
    zeros = bytes(CHUNK)
    count = BOMB // CHUNK
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(prefix + zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    second = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    third = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert second == third
    last = comp.compress(zeros) + comp.flush()
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(first + second * 2 + last) == prefix + zeros * 4 and inflater.eof
    crc, sha = zlib.crc32(prefix), hashlib.sha256(prefix) if digest else None
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
        if sha:
            sha.update(zeros)
    return SimpleNamespace(data=first + second * (count - 2) + last, crc=crc, size=len(prefix) + BOMB,
                           sha=sha.hexdigest() if sha else None)


def _zstd_seal_bomb(real_seal_object: bytes) -> bytes:
    """A SEAL object (the header of ``real_seal_object``'s version) whose zstd body inflates to BOMB
    zero bytes."""
    import zstandard
    magic, head, major, minor, mode, reserved, size = struct.unpack_from("<HBBBBHQ", real_seal_object)
    assert (magic, head, mode) == (0xA15E, 16, 2)
    buf, zeros = io.BytesIO(), bytes(CHUNK)
    with zstandard.ZstdCompressor(level=3).stream_writer(buf, size=BOMB, closefd=False) as writer:
        for _ in range(BOMB // CHUNK):
            writer.write(zeros)
    frame = buf.getvalue()
    total = 0
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame)) as reader:
        while piece := reader.read(CHUNK):
            total += len(piece)
    assert total == BOMB
    return struct.pack("<HBBBBHQ", 0xA15E, 16, major, minor, 2, 0, 16 + len(frame)) + frame


def _write_zip(target, members, comment: bytes = b"") -> None:
    """A zip written by hand: ``members`` is a list of (name, data) for stored members or (name,
    SimpleNamespace(data, crc, size)) for raw DEFLATE streams."""
    out = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target
    try:
        central = []
        for name, body in members:
            if isinstance(body, (bytes, bytearray)):
                method, payload, crc, size = 0, bytes(body), zlib.crc32(body), len(body)
            else:
                method, payload, crc, size = 8, body.data, body.crc, body.size
            assert size < 1 << 32 and len(payload) < 1 << 32
            offset, raw = out.tell(), name.encode()
            out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size,
                                  len(raw), 0) + raw)
            out.write(payload)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                                       len(payload), size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
        start, directory = out.tell(), b"".join(central)
        out.write(directory)
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), start,
                              len(comment)) + comment)
    finally:
        if out is not target:
            out.close()


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _artifact_bomb(art, path, replace: dict, digests: dict):
    members = _members(art.hecc)
    manifest = json.loads(members.pop("manifest.json"))
    manifest["members"].update(digests)
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    body = [("manifest.json", raw)] + [(n, replace.get(n, d)) for n, d in members.items()]
    _write_zip(path, body, b"hecc sha256:" + hashlib.sha256(raw).hexdigest().encode())


def _container_bomb(source, path, name, body, digest: str):
    members = _members(source)
    header = json.loads(members.pop("header.json"))
    assert name in header["members"]
    header["members"][name] = digest
    raw = json.dumps(header, sort_keys=True).encode()
    _write_zip(path, [("header.json", raw)] + [(n, body if n == name else d) for n, d in members.items()],
               b"hecc sha256:" + hashlib.sha256(raw).hexdigest().encode())


@pytest.fixture(scope="module")
def bombs(art, client, tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    built = time.monotonic()
    zeros = _deflate_zeros()
    # artifacts: a deflated weights.npz, a deflated IR stage, a stored weights.npz holding a
    # deflated .npy that declares 2 GiB of float64
    _artifact_bomb(art, root / "weights.hecc", {"weights.npz": zeros}, {"weights.npz": zeros.sha})
    stage = [n for n in _members(art.hecc) if n.startswith("ir/")][-1]
    _artifact_bomb(art, root / "ir.hecc", {stage: zeros}, {stage: zeros.sha})
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f8", "fortran_order": False, "shape": (BOMB // 8,)})
    inner_stream = _deflate_zeros(npy.getvalue(), digest=False)
    with zipfile.ZipFile(io.BytesIO(_members(art.hecc)["weights.npz"])) as zf:
        weight = zf.namelist()[0]
    inner = io.BytesIO()
    _write_zip(inner, [(weight, inner_stream)])
    inner = inner.getvalue()
    _artifact_bomb(art, root / "nested.hecc", {"weights.npz": inner},
                   {"weights.npz": hashlib.sha256(inner).hexdigest()})
    with zipfile.ZipFile(root / "weights.hecc") as zf, zf.open("weights.npz") as member:
        assert zf.getinfo("weights.npz").file_size == BOMB  # zipfile reads the hand-made zip
        assert member.read(CHUNK * 3) == bytes(CHUNK * 3)
    with zipfile.ZipFile(root / "nested.hecc") as zf, zipfile.ZipFile(io.BytesIO(zf.read("weights.npz"))) as inside:
        assert zf.getinfo("weights.npz").compress_type == zipfile.ZIP_STORED
        assert inside.getinfo(weight).compress_type == zipfile.ZIP_DEFLATED
        assert inside.getinfo(weight).file_size == BOMB + len(npy.getvalue())
    # key and ciphertext files: a deflated member, and a stored SEAL object whose zstd body
    # inflates to 2 GiB (header digests recomputed, so it reaches SEAL's check)
    seal_bomb = _zstd_seal_bomb(_members(client.x)["b0/i0/0"])
    seal_sha = hashlib.sha256(seal_bomb).hexdigest()
    for name, source, member in (("eval", client.keys / "eval.keys", "relin"),
                                 ("secret", client.keys / "secret.key", "secret"),
                                 ("x", client.x, "b0/i0/0"), ("y", client.y, "b0/i0/0")):
        for kind, body, digest in (("deflate", zeros, zeros.sha), ("zstd", seal_bomb, seal_sha)):
            target = root / f"{name}-{kind}"
            if name == "secret":  # a keys folder holding the bomb as its secret.key (and eval.keys)
                target.mkdir(mode=0o700)
                _container_bomb(source, target / "secret.key", member, body, digest)
                os.chmod(target / "secret.key", 0o600)
                shutil.copy(client.keys / "eval.keys", target / "eval.keys")
            else:
                _container_bomb(source, target, member, body, digest)
    for path in root.iterdir():
        with zipfile.ZipFile(path / "secret.key" if path.is_dir() else path) as zf:
            infos = zf.infolist()
        deflated = [i for i in infos if i.compress_type == zipfile.ZIP_DEFLATED]
        if path.name.endswith("-zstd") or path.name == "nested.hecc":
            assert not deflated
        else:
            assert [i.file_size for i in deflated] == [BOMB], path
    print(f"\n[bombs] built in {time.monotonic() - built:.1f} s: "
          + ", ".join(f"{p.name} {os.path.getsize(p if p.is_file() else p / 'secret.key') / 1e6:.2f} MB"
                      for p in sorted(root.iterdir())))
    return root


WRAPPER = ("import json, resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[2:]).returncode\n"
           "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
           "open(sys.argv[1], 'w').write(json.dumps([code, peak]))\n")


def _measured(args, cwd, env, report) -> tuple[int, str, int]:
    """hecc run as the only child of a wrapper process: (exit code, stderr, peak RSS in KiB)."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(report), HECC, *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code, peak = json.loads(open(report).read())
    return code, proc.stderr, peak


BOMB_CASES = {
    # name: (commands, words the message must hold)
    "weights.hecc": (["inspect", "keygen", "run"], ["compressed"]),
    "ir.hecc": (["inspect", "keygen", "run"], ["compressed"]),
    "nested.hecc": (["inspect", "keygen", "run"], ["weights.npz", "compressed"]),
    "eval-deflate": (["eval"], ["compressed"]),
    "eval-zstd": (["eval"], ["relinearization keys", "decompress"]),
    "secret-deflate": (["decrypt", "encrypt"], ["compressed"]),
    "secret-zstd": (["decrypt", "encrypt"], ["secret key", "decompress"]),
    "x-deflate": (["eval"], ["compressed"]),
    "x-zstd": (["eval"], ["decompress"]),
    "y-deflate": (["decrypt"], ["compressed"]),
    "y-zstd": (["decrypt"], ["decompress"]),
}


@pytest.mark.parametrize("case", list(BOMB_CASES))
def test_bombs_are_refused_in_little_memory(art, client, bombs, case, tmp_path):
    commands, words = BOMB_CASES[case]
    bomb = bombs / case
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = _env(tmpdir)
    artifact = bomb if case.endswith(".hecc") else art.hecc
    keys = bomb if case.startswith("secret") else client.keys
    eval_keys = bomb if case.startswith("eval") else client.keys / "eval.keys"
    x_ct = bomb if case.startswith("x-") else client.x
    y_ct = bomb if case.startswith("y-") else client.y
    argv = {"inspect": ["inspect", artifact],
            "keygen": ["keygen", artifact, "--out", tmp_path / "newkeys", "-q"],
            "run": ["run", artifact, "--input", art.x2, "-q"],
            "eval": ["eval", artifact, x_ct, "--eval-keys", eval_keys, "-o", tmp_path / "out.ct", "-q"],
            "decrypt": ["decrypt", artifact, y_ct, "--keys", keys, "-o", tmp_path / "out.npy", "-q"],
            "encrypt": ["encrypt", artifact, art.x2, "--keys", keys, "-o", tmp_path / "out.ct", "-q"]}
    failures = []
    for command in commands:
        code, err, peak = _measured(argv[command], tmp_path, env, tmp_path / "peak.json")
        print(f"\n[bomb] {case:15} hecc {command:8} exit {code}, peak RSS {peak / 1024:.0f} MiB: {err.strip()}")
        try:
            assert code == 2, err
            message = _one_error(err)
            assert str(bomb) in message, f"the message does not name the file {bomb}: {message}"
            assert all(w in message for w in words), (words, message)
            assert peak < 300 * 1024, f"peak RSS {peak / 1024:.0f} MiB"
        except AssertionError as exc:
            failures.append(f"hecc {command}: {exc}")
    assert os.listdir(tmpdir) == []
    assert not os.path.exists(tmp_path / "newkeys") or os.listdir(tmp_path / "newkeys") == []
    assert not failures, failures


# --- 5. outputs that cannot be written ------------------------------------------------------------

def _long_commands(art, client, folder):
    """Commands whose work takes seconds (tenseal on 64 digits), each writing into ``folder``."""
    return {
        "run --output": ["run", art.hecc, "--input", art.x64, "--backend", "tenseal", "--layout", "slots", "-q",
                         "--output", folder / "y.npy"],
        "run --stats": ["run", art.hecc, "--input", art.x64, "--backend", "tenseal", "--layout", "slots", "-q",
                        "--stats", folder / "s.json"],
        "encrypt -o": ["encrypt", art.hecc, art.x64, "--keys", client.keys, "-o", folder / "x.ct", "-q"],
        "eval -o": ["eval", art.hecc, client.x, "--eval-keys", client.keys / "eval.keys", "-o", folder / "y.ct",
                    "-q"],
        "decrypt -o": ["decrypt", art.hecc, client.y, "--keys", client.keys, "-o", folder / "y.npy", "-q"],
        "compile -o": ["compile", MODEL, "--calibration", DIGITS, "-o", folder / "m.hecc", "-q"],
    }


def test_missing_output_folder_fails_before_the_run(art, client, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = _env(tmpdir)
    for what, args in _long_commands(art, client, tmp_path / "nodir").items():
        start = time.monotonic()
        proc = _hecc(args, tmp_path, env)
        elapsed = time.monotonic() - start
        print(f"\n[missing folder] {what}: exit {proc.returncode} in {elapsed:.2f} s: {proc.stderr.strip()}")
        assert proc.returncode == 2, (what, proc.stderr)
        message = _one_error(proc.stderr)
        assert "nodir" in message and "does not exist" in message, message
        assert elapsed < 3, f"{what}: {elapsed:.2f} s"
    assert not (tmp_path / "nodir").exists()
    assert os.listdir(tmpdir) == []


def _existing_outputs(art, client, folder):
    """An older file of each kind at each output path (what a failed write must leave alone)."""
    np.save(folder / "y.npy", np.zeros((1, 10)))
    (folder / "s.json").write_text(json.dumps({"backend": "tenseal", "seconds": {"eval": 1.0}}))
    shutil.copy(client.x, folder / "x.ct")
    shutil.copy(client.y, folder / "y.ct")
    shutil.copy(art.hecc, folder / "m.hecc")


def test_folder_root_cannot_write_fails_before_the_run(art, client, tmp_path):
    """An immutable folder (chattr +i): even root cannot create a file in it."""
    tmpdir, folder = tmp_path / "tmpdir", tmp_path / "ro"
    tmpdir.mkdir()
    folder.mkdir()
    _existing_outputs(art, client, folder)
    os.chmod(folder, 0o555)
    before = _listing(folder)
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        os.chmod(folder, 0o755)
        if os.geteuid() == 0:
            pytest.skip(f"running as root and this file system has no immutable folders: {made.stderr}")
    try:
        with pytest.raises(OSError):
            open(folder / "probe", "wb").close()
        for what, args in _long_commands(art, client, folder).items():
            start = time.monotonic()
            proc = _hecc(args, tmp_path, _env(tmpdir))
            elapsed = time.monotonic() - start
            print(f"\n[unwritable folder] {what}: exit {proc.returncode} in {elapsed:.2f} s: "
                  f"{proc.stderr.strip()}")
            assert proc.returncode == 2, (what, proc.stderr)
            message = _one_error(proc.stderr)
            assert str(folder) in message and "not writable" in message, message
            assert elapsed < 3, f"{what}: {elapsed:.2f} s"
            assert _listing(folder) == before, what
    finally:
        if made.returncode == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)
    assert os.listdir(tmpdir) == []


def _file_size_limit(nbytes: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limit


def test_full_disk_fails_with_one_message_and_changes_nothing(art, client, tmp_path):
    """A full disk, simulated with RLIMIT_FSIZE: every file write past the limit fails with EFBIG.
    The limit also binds SEAL's in-memory files (memfd), so only commands whose output is larger
    than any SEAL object they handle are tried (eval and decrypt load keys larger than their
    output: they would fail in memory first)."""
    tmpdir, folder = tmp_path / "tmpdir", tmp_path / "full"
    tmpdir.mkdir()
    folder.mkdir()
    _existing_outputs(art, client, folder)
    before = _listing(folder)
    cases = {
        "encrypt -o": (["encrypt", art.hecc, art.x4, "--keys", client.keys, "-o", folder / "x.ct", "-q"], 1 << 22),
        "compile -o": (["compile", MODEL, "--calibration", DIGITS, "-o", folder / "m.hecc", "-q"], 1 << 20),
        "run --stats": (["run", art.hecc, "--input", art.x64, "-q", "--stats", folder / "s.json"], 64),
        "run --output": (["run", art.hecc, "--input", art.x64, "-q", "--output", folder / "y.npy"], 1024),
    }
    failures = []
    for what, (args, limit) in cases.items():
        proc = _hecc(args, tmp_path, _env(tmpdir), preexec_fn=_file_size_limit(limit))
        print(f"\n[full disk] {what} (limit {limit} B): exit {proc.returncode}: {proc.stderr.strip()}")
        try:
            assert proc.returncode == 2, proc.stderr
            message = _one_error(proc.stderr)
            assert "cannot write" in message and str(folder) in message and "File too large" in message, message
            assert _listing(folder) == before
            assert os.listdir(tmpdir) == []
        except AssertionError as exc:
            failures.append(f"{what}: {exc}")
    assert not failures, "\n".join(failures)


def test_keygen_that_cannot_write_keeps_the_old_keys(art, tmp_path):
    """keygen --force over a key set on a full disk (RLIMIT_FSIZE between the sizes of secret.key
    and eval.keys, batch layout): exit 2 with one message, and the old key set is still there,
    whole (else data encrypted under it can never be decrypted again)."""
    tmpdir, keys = tmp_path / "tmpdir", tmp_path / "keys"
    tmpdir.mkdir()
    env = _env(tmpdir)
    made = _hecc(["keygen", art.hecc, "--out", keys, "--layout", "batch", "-q"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    sizes = {n: os.path.getsize(keys / n) for n in KEY_NAMES}
    assert sizes["secret.key"] < 1_000_000 < sizes["eval.keys"], sizes
    before = _listing(keys)
    proc = _hecc(["keygen", art.hecc, "--out", keys, "--layout", "batch", "--force", "-q"], tmp_path, env,
                 preexec_fn=_file_size_limit(1_000_000))
    prog = art.prog.with_layout("batch")
    after = _key_files(keys, prog)
    print(f"\n[full disk] keygen --force (limit 1000000 B, key files {sizes}): exit {proc.returncode}: "
          f"{proc.stderr.strip()}\n[full disk] keys folder afterwards: "
          + ", ".join(f"{n} {'unchanged' if before.get(n) == h else 'REPLACED'}" for n, h in _listing(keys).items())
          + f"; key sets {after}")
    assert proc.returncode == 2, proc.stderr
    message = _one_error(proc.stderr)
    assert "cannot write" in message and "File too large" in message, message
    assert set(os.listdir(keys)) == KEY_NAMES and os.listdir(tmpdir) == []
    assert _listing(keys) == before, (f"a keygen that failed changed the keys: secret.key and eval.keys now "
                                      f"belong to key sets {after}")


def test_worker_death_message_names_the_death_not_the_pools_sigterm():
    """When one worker dies the pool sends SIGTERM to the others; whichever order they are
    listed in, the message names the first death (CI once saw SIGTERM named instead)."""
    from hecc.backends.workers import _death_message

    class Gone:
        def __init__(self, code):
            self.exitcode = code

        def join(self, timeout=None):
            pass
    for order in ([-signal.SIGTERM, -signal.SIGKILL], [-signal.SIGKILL, -signal.SIGTERM]):
        message = _death_message({i: Gone(c) for i, c in enumerate(order)}, "")
        assert message.startswith("a worker process was killed by SIGKILL"), message
    # a death whose status was lost (reaped elsewhere) beside the pool's SIGTERM
    message = _death_message({0: Gone(None), 1: Gone(-signal.SIGTERM)}, "")
    assert message.startswith("a worker process was killed (its exit status was lost; a SIGKILL"), message
