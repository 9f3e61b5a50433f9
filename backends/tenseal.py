"""The TenSEAL backend: lowers ckks IR to SEAL through ``tenseal.sealapi`` (the only module of hecc
that imports tenseal).

Keys: a secret key, a public key and, when the program relinearizes, relinearization keys; no
Galois keys (the batch layout never rotates). Bias plaintexts are encoded once per loaded program;
scalar weights are encoded as they are used (0.008 ms each on this machine, while caching all of
them would take gigabytes). The backend evaluates one batch (or one input) in the process that
calls it and manages no process: where batches run is an executor's concern (``hecc.executors``).
An executor may hand ``_evaluate`` a row splitter (``parts``, ``map(fn, chunks)``), which runs
the rows of each large linear layer (and the elementwise ops after it) elsewhere and returns
their ciphertexts as bytes. SEAL objects become bytes in memory only (``seal_bytes``), and bytes
from outside are checked before SEAL reads them.
"""
from __future__ import annotations

import os
import time

import numpy as np
import tenseal.sealapi as seal

from ..errors import CiphertextFileError, KeyFileError, ParameterError
from ..progress import count_progress
from ..ir import Graph
from . import seal_bytes
from ..params import data_primes
from .common import (LinearWeights, batches, evaluation_keys, inputs_per_batch, inputs_per_ciphertext, is_slots,
                     plain_rows, program_params, run_client_tail, slot_inputs, slot_outputs, split_program)
from . import segments as row_segments
from .segments import Stream, external, live_out


class _Seal:
    """SEAL objects for one parameter set and one key set: new keys, or keys loaded from bytes
    (``keys``: "secret", "public", "relin"; a server has no "secret")."""

    def __init__(self, n: int, chain: list[int], relin: bool, keys: dict[str, bytes] | None = None,
                 galois_steps: list[int] | None = None):
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        try:
            parms.set_coeff_modulus(seal.CoeffModulus.Create(n, chain))
        except (ValueError, RuntimeError) as exc:
            raise ParameterError(f"SEAL cannot make primes {chain} for N={n}: {exc}") from None
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ParameterError(f"SEAL rejects N={n}, coeff_modulus {chain} at 128-bit security: "
                                 f"{self.context.parameters_error_message()}")
        self.n, self.primes = n, len(chain)
        self.chain_index = {}  # parms_id -> SEAL's chain index (primes left - 1)
        data = self.context.first_context_data()
        while data is not None:
            self.chain_index[tuple(data.parms_id())] = data.chain_index()
            data = data.next_context_data()
        self.top = self.context.first_context_data().chain_index()
        self.secret_key, self._relin_keys, self._galois_keys, self.keygen = None, None, None, None
        self._made: dict[str, bytes] | None = None  # evaluation keys made here, seeded
        self.galois_steps = list(galois_steps or [])
        self.relin = relin
        if keys is None:  # evaluation keys are made when first exported or used (``_make_keys``)
            keygen = self.keygen = seal.KeyGenerator(self.context)
            self.secret_key = keygen.secret_key()
            self.public_key = seal.PublicKey()
            keygen.create_public_key(self.public_key)
        else:
            poly = n * len(chain) * 8
            switching = (len(chain) - 1) * 2 * poly
            if "secret" in keys:
                self.secret_key = self._load_key(seal.SecretKey(), keys["secret"], "secret key", poly)
            self.public_key = self._load_key(seal.PublicKey(), keys.get("public"), "public key", 2 * poly)
            server = "secret" not in keys  # the client needs no evaluation keys
            if relin and server:
                self._relin_keys = self._load_key(seal.RelinKeys(), keys.get("relin"),
                                                 "relinearization keys", switching)
            if self.galois_steps and server:
                self._galois_keys = self._load_key(seal.GaloisKeys(), keys.get("galois"), "rotation keys",
                                                   switching * len(self.galois_steps))
                missing = [s for s, e in zip(self.galois_steps, self.galois_elements())
                           if not self.galois_keys.has_key(e)]
                if missing:
                    raise KeyFileError(f"its rotation keys lack steps {missing} that this program "
                                       "uses; they were made for another program: run `hecc keygen`")
        self.encoder = seal.CKKSEncoder(self.context)
        self.encryptor = seal.Encryptor(self.context, self.public_key)
        self.evaluator = seal.Evaluator(self.context)
        self.decryptor = None
        if self.secret_key is not None:
            self.encryptor.set_secret_key(self.secret_key)
            self.decryptor = seal.Decryptor(self.context, self.secret_key)

    def _load_key(self, obj, data: bytes | None, what: str, raw_bytes: int):
        """A key from bytes: SEAL's header and size checked, its body decompressed within the
        bound, and the result valid for this program's parameters."""
        if data is None:
            raise KeyFileError(f"it holds no {what}, which this program needs; run `hecc keygen` again")
        try:
            blob = seal_bytes.inflate(data, raw_bytes + (1 << 16))
            seal_bytes.from_bytes(obj, self.context, blob)
        except (seal_bytes.SealBytesError, ValueError, RuntimeError, TypeError) as exc:
            raise KeyFileError(f"its {what} could not be loaded for this program's parameters ({exc}); the "
                               "file is corrupted or was made for another model") from None
        if not seal.is_valid_for(obj, self.context):
            raise KeyFileError(f"its {what} are not valid for this program's parameters")
        return obj

    def galois_elements(self) -> list[int]:
        """SEAL's Galois element for each rotation step: 3^step mod 2N."""
        n = self.context.key_context_data().parms().poly_modulus_degree()
        return [pow(3, step % (n // 2), 2 * n) for step in self.galois_steps]

    @property
    def relin_keys(self):
        if self._relin_keys is None and self.keygen is not None and self.relin:
            self._make_keys()
        return self._relin_keys

    @property
    def galois_keys(self):
        if self._galois_keys is None and self.keygen is not None and self.galois_steps:
            self._make_keys()
        return self._galois_keys

    def _make_keys(self) -> dict[str, bytes]:
        """The evaluation keys of a key set made here, once: saved seeded (SEAL regenerates the
        random half of each key-switching key from a seed when loading: half the bytes) and
        loaded back for this process's own use, so they exist once in memory, not twice."""
        if self._made is None:
            dump, made = seal_bytes.to_bytes, {}
            if self.relin:
                made["relin"] = dump(self.keygen.create_relin_keys())
                self._relin_keys = seal_bytes.from_bytes(seal.RelinKeys(), self.context, made["relin"])
            if self.galois_steps:
                made["galois"] = dump(self.keygen.create_galois_keys(self.galois_elements()))
                self._galois_keys = seal_bytes.from_bytes(seal.GaloisKeys(), self.context, made["galois"])
            self._made = made
        return self._made

    def export(self) -> dict[str, bytes]:
        """Serialized keys (evaluation keys made here: seeded)."""
        dump = seal_bytes.to_bytes
        out = {"public": dump(self.public_key)}
        if self.secret_key is not None:
            out["secret"] = dump(self.secret_key)
        if self.keygen is not None:
            return {**out, **self._make_keys()}
        if self._relin_keys is not None:
            out["relin"] = dump(self._relin_keys)
        if self._galois_keys is not None:
            out["galois"] = dump(self._galois_keys)
        return out

    def eval_key_bytes(self) -> int:
        """Bytes of the evaluation keys (relinearization and rotation), serialized seeded."""
        keys = self.export()
        return sum(len(keys[k]) for k in ("relin", "galois") if k in keys)

    def load_ciphertext(self, data: bytes, level: int, scale: float, what: str):
        """A ciphertext from hostile bytes: before SEAL reads them, its size, level (primes
        left), component count, ring degree and scale are checked against what the program has
        at this point (``level``, ``scale``)."""
        chain_index = self.top - level
        primes = chain_index + 1
        try:
            blob = seal_bytes.inflate(data, 3 * self.n * primes * 8 + 1024)  # 3: to say so
            meta = seal_bytes.ciphertext_meta(blob)
        except seal_bytes.SealBytesError as exc:
            raise CiphertextFileError(f"{what} is not a ciphertext of this program ({exc})") from None
        found = self.chain_index.get(meta["parms_id"])
        if found is None:
            raise CiphertextFileError(f"{what} was made for other encryption parameters")
        if found != chain_index:
            raise CiphertextFileError(f"{what} is at level {self.top - found}; the program expects it "
                                      f"at level {level}")
        if meta["size"] != 2 or meta["degree"] != self.n or meta["primes"] != primes or meta["ntt"] != 1:
            raise CiphertextFileError(f"{what} has {meta['size']} components over {meta['primes']} "
                                      f"primes at N={meta['degree']}; the program expects 2 over {primes} "
                                      f"at N={self.n}")
        if not abs(meta["scale"] / scale - 1) <= SCALE_CHECK:
            raise CiphertextFileError(f"{what} has scale {meta['scale']:.6g}; the program expects "
                                      f"{scale:.6g} (its values would decode wrongly)")
        try:
            ct = seal_bytes.from_bytes(seal.Ciphertext(), self.context, blob)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CiphertextFileError(f"{what} does not load ({exc})") from None
        if not seal.is_valid_for(ct, self.context):
            raise CiphertextFileError(f"{what} is not valid for this program's parameters")
        return ct


class Deferred:
    """A value a row splitter left where its rows were computed; ``load`` brings its
    ciphertexts here (see ``TensealBackend._evaluate``)."""

    def load(self, backend) -> list:
        raise NotImplementedError


class TensealBackend:
    """One program on SEAL, one batch (or one input) at a time, in the calling process."""

    def __init__(self, graph: Graph, streams: bool = True):
        """``streams``: evaluate the batch layout's streams (``segments.Stream``) as such; an
        executor whose row splitter cannot share a stream among workers (the Ray cluster's)
        asks for the plain segments."""
        self.graph = graph
        self.params = program_params(graph)
        self.inputs, self.server, self.decrypts, self.client, self.outputs = split_program(graph)
        self.blocks = {id(op): _block_plan(LinearWeights(graph, op))
                       for op in self.server if op.name == "ckks.linear"}
        self.slots_layout = is_slots(graph)
        self.per_batch = inputs_per_batch(graph)  # inputs a batch of ciphertexts holds
        self.per_ct = inputs_per_ciphertext(graph)
        self.plains: dict[tuple, object] = {}  # slots layout: encoded weight vectors, per program
        self.server, self.segments = row_segments.plan(graph, self.server, self.slots_layout, streams)
        self.row_chunk = row_segments.row_chunk(graph)
        last_use = {}
        for index, op in enumerate(self.server + self.decrypts):
            for v in op.operands:
                last_use[v] = index
        self.last_use = last_use
        self._live_out: dict[int, list] = {}
        self.seal: _Seal | None = None
        self.align_target: dict[int, float] = {}
        self.plain_scale: dict[int, float] = {}  # mul_plain: the encoding scale that lands exactly

    def connect(self, keys: dict[str, bytes] | None) -> _Seal:
        """Set up SEAL for this program: new keys (None) or the given serialized ones."""
        steps, relin = evaluation_keys(self.graph)
        self.seal = _Seal(self.params.poly_modulus_degree, self.params.coeff_modulus_bits, relin, keys,
                          steps)
        self._plan_scales()
        return self.seal

    def _plan_scales(self) -> None:
        """Follow SEAL's exact scales (rescales divide by the real primes, not powers of two) and
        give every modswitch that feeds a sum the scale of the sum's other operand as its target:
        it then runs as a multiplication by 1 encoded at target * p / scale, rescaled by p (the
        prime a modswitch would drop anyway), so the sum needs no approximation."""
        moduli = [m.value() for m in self.seal.context.key_context_data().parms().coeff_modulus()]
        data = moduli[:-1]

        def prime(level):
            return float(data[len(data) - 1 - level])
        desired = self._desired_scales(prime)
        scale = self.scales = {op.result: 2.0 ** op.result.type.scale_bits for op in self.inputs}
        for op in self.server:
            args = [scale[v] for v in op.operands]
            level = op.operands[0].type.level
            if op.name == "ckks.linear":
                s = args[0] * 2.0 ** op.attrs["weight_scale"]
                scale[op.result] = s / prime(level) if op.attrs.get("rescale_terms") else s
            elif op.name in ("ckks.mul", "ckks.matmul"):
                scale[op.result] = args[0] * args[1]
            elif op.name == "ckks.square":
                scale[op.result] = args[0] * args[0]
            elif op.name == "ckks.rescale":
                scale[op.result] = args[0] / prime(level)
            elif op.name == "ckks.mul_plain":
                nominal = 2.0 ** op.attrs["weight_scale"]
                want = desired.get(op.result)
                if want is not None and 2 ** -8 < want / (args[0] * nominal) < 2 ** 8:
                    self.plain_scale[id(op)] = want / args[0]
                    scale[op.result] = want
                else:
                    scale[op.result] = args[0] * nominal
            elif op.name in ("ckks.add", "ckks.sub", "ckks.concat"):
                target = next((a for a, v in zip(args, op.operands) if v.producer.name != "ckks.modswitch"),
                              args[0])
                for v in op.operands:
                    if v.producer.name == "ckks.modswitch" and scale[v] != target:
                        self.align_target.setdefault(id(v.producer), target)
                        scale[v] = self.align_target[id(v.producer)]
                scale[op.result] = target
            else:
                scale[op.result] = args[0]

    def _desired_scales(self, prime) -> dict:
        """The exact scale each value should have so that every rescale lands exactly on its
        nominal scale 2^bits and the operands of every sum agree (on the sum's nominal scale when
        nothing later asks for another), followed back through sums and rotations (which keep the
        scale) to the products by plaintext, which are encoded to meet it. Without it, rescales by primes
        a few percent below 2^bits make the two operands of a sum drift apart along the chain
        (slots layout: 26-bit primes, a dozen rescales)."""
        desired: dict = {}
        for op in reversed(self.server):
            result = op.result
            if op.name == "ckks.rescale":
                desired.setdefault(op.operands[0], 2.0 ** result.type.scale_bits * prime(op.operands[0].type.level))
            elif op.name in ("ckks.add", "ckks.sub"):  # both operands the same exact scale
                want = desired.setdefault(result, 2.0 ** result.type.scale_bits)
                for v in op.operands:
                    desired.setdefault(v, want)
            elif op.name in ("ckks.rotate", "ckks.relinearize", "ckks.add_plain") and result in desired:
                desired.setdefault(op.operands[0], desired[result])
            elif op.name == "ckks.square" and result in desired:  # a linear map merged into the product
                desired.setdefault(op.operands[0], desired[result] ** 0.5)
        return desired

    def _modswitch(self, op, ct, out):
        s = self.seal
        target = self.align_target.get(id(op))
        if target is None:
            s.evaluator.mod_switch_to_next(ct, out)
            return
        moduli = s.context.get_context_data(ct.parms_id()).parms().coeff_modulus()
        p = float(moduli[-1].value())
        one = seal.Plaintext()
        s.encoder.encode(1.0, ct.parms_id(), target * p / ct.scale, one)
        s.evaluator.multiply_plain(ct, one, out)
        s.evaluator.rescale_to_next_inplace(out)
        out.scale = target  # equal up to the last bits of a double

    # --- one batch -----------------------------------------------------------------------------
    def spans(self, runs: int) -> list[tuple[int, int]]:
        """The runs that share ciphertexts: up to N/2 in the batch layout, one in the slots layout."""
        return batches(runs, self.per_batch)

    def _encrypt(self, stacked, lo, hi, seeded: bool = False):
        """Encrypt runs lo..hi of every input, symmetrically (the client holds the secret key).
        ``seeded``: SEAL's serializable form, which saves the random half of each ciphertext as a
        seed (half the bytes; for files, it cannot be computed on)."""
        s, env = self.seal, {}

        def encrypt(vector, scale):
            plain = seal.Plaintext()
            s.encoder.encode(vector, scale, plain)
            if seeded:
                return s.encryptor.encrypt_symmetric(plain)
            ct = seal.Ciphertext()
            s.encryptor.encrypt_symmetric(plain, ct)
            return ct
        for op, x in zip(self.inputs, stacked):
            scale = 2.0 ** op.result.type.scale_bits
            if self.slots_layout:
                vectors = list(slot_inputs(self.graph, op, x[lo:hi])[:, 0])
            else:
                vectors = [column.tolist() for column in x[lo:hi].reshape(hi - lo, -1).T]
            env[op.result] = [encrypt(v, scale) for v in vectors]
        return env

    def _linear(self, op, cts, rows=None):
        """Rows (all, or lo..hi) of y = matrix @ x + bias."""
        lo, hi = rows if rows is not None else (0, op.result.type.count)
        return self._linear_rows(op, self._linear_terms(op, cts, lo, hi), lo, hi, cts[0])

    def _linear_terms(self, op, cts, lo: int, hi: int, first: int = 0) -> list:
        """Per row lo..hi of ``matrix @ x``, the sum of its terms over the input ciphertexts
        first..first + len(cts) - 1 (``cts``; None where there are none). Rows go in blocks of
        BLOCK_ROWS and, within a block, column by column, so each input ciphertext is read once
        per block while it is in cache (11% faster than row by row on this machine; SEAL's
        arithmetic is exact, so the order does not change the result)."""
        s = self.seal
        ev, encoder = s.evaluator, s.encoder
        encode, multiply_plain, add_inplace = encoder.encode, ev.multiply_plain, ev.add_inplace
        weight_scale = 2.0 ** op.attrs["weight_scale"]
        eager = op.attrs.get("rescale_terms", False)
        unit = op.attrs["weight_scale"] == 0 and not eager  # weights of +-1: additions, no product
        sub_inplace = ev.sub_inplace

        def negate(x):
            out = seal.Ciphertext()
            ev.negate(x, out)
            return out
        parms_id = cts[0].parms_id()
        plain, tmp = seal.Plaintext(), seal.Ciphertext()
        last = first + len(cts)
        accs = [None] * (hi - lo)
        for block_lo, plan in self.blocks[id(op)]:
            if block_lo + BLOCK_ROWS <= lo or block_lo >= hi:
                continue
            for j, entries in plan:
                if not first <= j < last:
                    continue
                x = cts[j - first]
                for b, w in entries:
                    at = block_lo + b - lo
                    if not 0 <= at < hi - lo:
                        continue
                    if unit and (w == 1.0 or w == -1.0):  # exactly what a product by 1 or -1 gives
                        if accs[at] is None:
                            accs[at] = negate(x)
                            if w > 0:  # a copy (no copy constructor in the bindings)
                                ev.negate_inplace(accs[at])
                        elif w > 0:
                            add_inplace(accs[at], x)
                        else:
                            sub_inplace(accs[at], x)
                        continue
                    encode(w, parms_id, weight_scale, plain)
                    if accs[at] is None:
                        accs[at] = seal.Ciphertext()
                        multiply_plain(x, plain, accs[at])
                        if eager:
                            ev.rescale_to_next_inplace(accs[at])
                    else:
                        multiply_plain(x, plain, tmp)
                        if eager:
                            ev.rescale_to_next_inplace(tmp)
                        add_inplace(accs[at], tmp)
        return accs

    def _linear_rows(self, op, accs: list, lo: int, hi: int, like) -> list:
        """Rows lo..hi of a linear op from the sums of their terms (``_linear_terms``): an
        encryption of zero where a row has none (at the level and scale of a row computed from
        ``like``, an input ciphertext), plus the bias."""
        ev, encoder = self.seal.evaluator, self.seal.encoder
        eager = op.attrs.get("rescale_terms", False)
        bias = self.graph.constants[op.attrs["bias"]] if op.attrs.get("bias") else None
        out, plain = [], seal.Plaintext()
        for row, acc in zip(range(lo, hi), accs):
            if acc is None:
                acc = self._zero_like(like, op, eager)
            if bias is not None and bias[row] != 0:
                # encoded per use, not kept: a constant costs what the addition costs, and one
                # kept per row and layer took gigabytes at N=16384
                encoder.encode(float(bias[row]), acc.parms_id(), acc.scale, plain)
                ev.add_plain_inplace(acc, plain)
            out.append(acc)
        return out

    def _zero_like(self, x, op, eager):
        """A fresh encryption of zero at the scale and level the row would have had: a row whose
        weights all round to zero at the weight scale (padding, negligible terms)."""
        s = self.seal
        scale = x.scale * 2.0 ** op.attrs["weight_scale"]
        parms_id = x.parms_id()
        if eager:
            moduli = s.context.get_context_data(parms_id).parms().coeff_modulus()
            scale /= float(moduli[-1].value())
            parms_id = s.context.get_context_data(parms_id).next_context_data().parms_id()
        zero = seal.Ciphertext()
        s.encryptor.encrypt_zero(parms_id, zero)
        zero.scale = scale
        return zero

    def _dies_here(self, op, index: int) -> bool:
        """Whether a sum may overwrite its first operand: in the slots layout (where no two values
        share a ciphertext object) when nothing reads that operand after this op."""
        if not self.slots_layout or op.name not in ("ckks.add", "ckks.sub"):
            return False
        first = op.operands[0]
        return first is not op.operands[1] and self.last_use.get(first) == index

    def _apply(self, op, args, rows=None, reuse: bool = False):
        """One server op on lists of ciphertexts (``rows``: only these rows of a linear op;
        ``reuse``: a sum may write into its first operand, which is dead after it)."""
        s = self.seal
        ev = s.evaluator
        name = op.name
        if name == "ckks.linear":
            return self._linear(op, args[0], rows)
        if name == "ckks.extract":
            return [args[0][op.attrs["index"]]]
        if name in ("ckks.mul_plain", "ckks.add_plain"):
            return [self._plain_op(op, ct, c) for c, ct in enumerate(args[0])]
        if name == "ckks.concat" and self.slots_layout:  # single ciphertexts into a tensor of them
            return [ct for a in args for ct in a]
        if name == "ckks.concat":
            parts = [np.array(a, dtype=object).reshape(v.type.shape) for a, v in zip(args, op.operands)]
            return list(np.concatenate(parts, axis=op.attrs["axis"]).reshape(-1))
        if name == "ckks.matmul":
            return self._matmul(op, args)
        result = []
        for parts in zip(*args):
            out = seal.Ciphertext()
            if name == "ckks.square":
                ev.square(parts[0], out)
            elif name == "ckks.mul":
                ev.multiply(parts[0], parts[1], out)
            elif name in ("ckks.add", "ckks.sub"):
                a, b = parts
                if a.scale != b.scale:
                    b = _adopt_scale(b, a.scale)
                if reuse:
                    (ev.add_inplace if name == "ckks.add" else ev.sub_inplace)(a, b)
                    out = a
                else:
                    (ev.add if name == "ckks.add" else ev.sub)(a, b, out)
            elif name == "ckks.relinearize":
                ev.relinearize(parts[0], s.relin_keys, out)
            elif name == "ckks.rescale":
                ev.rescale_to_next(parts[0], out)
            elif name == "ckks.modswitch":
                self._modswitch(op, parts[0], out)
            elif name == "ckks.rotate":
                ev.rotate_vector(parts[0], op.attrs["step"], s.galois_keys, out)
            result.append(out)
        return result

    def _matmul(self, op, args) -> list:
        """Each result: the sum of k products, accumulated at size 3 (one relinearization after
        the sum, by insert-relinearize, instead of one per product)."""
        ev = self.seal.evaluator
        a = np.array(args[0], dtype=object).reshape(op.operands[0].type.shape)
        b = np.array(args[1], dtype=object).reshape(op.operands[1].type.shape)
        n, k, m = a.shape[-2], a.shape[-1], b.shape[-1]
        a, b = a.reshape(-1, n, k), b.reshape(-1, k, m)
        result, tmp = [], seal.Ciphertext()
        for h in range(a.shape[0]):
            for i in range(n):
                for j in range(m):
                    out = seal.Ciphertext()
                    ev.multiply(a[h, i, 0], b[h, 0, j], out)
                    for t in range(1, k):
                        ev.multiply(a[h, i, t], b[h, t, j], tmp)
                        ev.add_inplace(out, tmp)
                    result.append(out)
        return result

    def _plain_op(self, op, ct, c: int):
        """mul_plain / add_plain on one ciphertext; the encoded vector is cached per program
        (encoding costs three times the product)."""
        s = self.seal
        scale = (self.plain_scale.get(id(op), 2.0 ** op.attrs["weight_scale"]) if op.name == "ckks.mul_plain"
                 else ct.scale)
        key = (op.attrs["plain"], op.attrs.get("row", 0) + c, tuple(ct.parms_id()), scale)
        plain = self.plains.get(key)
        if plain is None:
            vector = plain_rows(self.graph, op, self.params.slots, c + 1, self.per_ct)[c]
            plain = seal.Plaintext()
            s.encoder.encode(vector, ct.parms_id(), scale, plain)
            self.plains[key] = plain
        out = seal.Ciphertext()
        if op.name == "ckks.mul_plain":
            if plain.is_zero():  # SEAL refuses a product that is transparent (no randomness left)
                s.encryptor.encrypt_zero(ct.parms_id(), out)
                out.scale = ct.scale * scale
                return out
            s.evaluator.multiply_plain(ct, plain, out)
        else:
            s.evaluator.add_plain(ct, plain, out)
        return out

    def _evaluate(self, env, rows=None):
        """The server ops on ``env``, segment by segment (``segments``): a segment of several
        ops runs ``segments.row_chunk`` rows at a time, so its temporaries never exist for all rows at once.
        ``rows`` (an executor's row splitter, or None) runs the rows of large segments in
        ``rows.parts`` pieces elsewhere. A splitter may leave a segment's results where they
        were computed (a ``Deferred``): the next split segment reads them there, anything else
        loads them here first."""
        parallel = rows.parts if rows is not None else 1
        index = 0
        for number, segment in enumerate(self.segments):
            stream = isinstance(segment, Stream)
            if parallel > 1 and self.splittable(number) and (not stream or getattr(rows, "streams", False)):
                count = segment.count if stream else segment[0].result.type.count
                bounds = np.linspace(0, count, parallel + 1).astype(int)
                chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
                source = (lambda v: self._loaded(env, v)) if stream else env[segment[0].operands[0]]
                env.update(rows.split(self, number, source, chunks))
            elif stream:
                env.update(self._stream_values(number, lambda v: self._loaded(env, v)))
            elif len(segment) > 1 and not self.slots_layout:
                values = self._chunked(number, lambda v: self._loaded(env, v), 0, segment[0].result.type.count)
                env.update(zip(self.live_out(number), values))
            else:
                for offset, op in enumerate(segment):
                    env[op.result] = self._apply(op, [self._loaded(env, v) for v in op.operands],
                                                 reuse=self._dies_here(op, index + offset))
            for op in segment:
                for v in op.operands:
                    if self.last_use.get(v) == index:
                        env.pop(v, None)
                index += 1
        for v in list(env):
            self._loaded(env, v)
        return env

    def _loaded(self, env, value):
        if isinstance(env[value], Deferred):
            env[value] = env[value].load(self)
        return env[value]

    def splittable(self, number: int) -> bool:
        """Whether segment ``number`` is worth sharing among workers by rows: its linear layer is
        large, and the only value it reads from before it is that layer's input."""
        segment = self.segments[number]
        if isinstance(segment, Stream):
            return sum(len(e) for op in segment if op.name == "ckks.linear"
                       for _, plan in self.blocks[id(op)] for _, e in plan) >= PARALLEL_MIN_PRODUCTS
        head = segment[0]
        return (head.name == "ckks.linear" and external(segment) == [head.operands[0]] and
                sum(len(e) for _, plan in self.blocks[id(head)] for _, e in plan) >= PARALLEL_MIN_PRODUCTS)

    def live_out(self, number: int) -> list:
        """The values of segment ``number`` that later ops read, in segment order."""
        if number not in self._live_out:
            segment = self.segments[number]
            at = self.server.index(segment[-1]) + 1
            self._live_out[number] = live_out(segment, self.server[at:] + self.decrypts)
        return self._live_out[number]

    def kept(self, number: int) -> list:
        """The values of segment ``number`` that later ops read and that it makes row by row (of
        a stream: not its tails' sums)."""
        segment = self.segments[number]
        tails = segment.tails if isinstance(segment, Stream) else ()
        return [v for v in self.live_out(number) if id(v.producer) not in tails]

    def _chunked(self, number: int, read, lo: int, hi: int, shares=None, like=None, sums=None) -> list[list]:
        """Rows lo..hi of segment ``number``, ``row_chunk`` at a time (``_rows``); per value of
        ``kept(number)``, its ciphertexts (a stream's tails add to ``sums``)."""
        out = [[] for _ in self.kept(number)]
        step = self.row_chunk
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            part = None if shares is None else [share[a - lo:b - lo] for share in shares]
            for acc, cts in zip(out, self._rows(number, read, a, b, part, like, sums)):
                acc += cts
        return out

    def _stream_values(self, number: int, read) -> dict:
        """Every value of stream ``number`` that later ops read, all its rows evaluated here."""
        segment = self.segments[number]
        sums: dict = {}
        kept = self._chunked(number, read, 0, segment.count, sums=sums)
        return {**dict(zip(self.kept(number), kept)), **self._tail_values(number, sums)}

    def _tail_values(self, number: int, sums: dict) -> dict:
        """The tails of stream ``number`` from the sums of their terms over all its rows
        (``sums``: tail id -> (sums per output row, an input ciphertext of the tail))."""
        out = {}
        for op in self.segments[number].tail_ops():
            accs, like = sums.get(id(op), ([None] * op.result.type.count, None))
            out[op.result] = self._linear_rows(op, accs, 0, op.result.type.count, like)
        return out

    def _add_terms(self, sums: dict, op, terms: list, like) -> None:
        """Add a chunk's sums of a tail's terms (None: no terms) to ``sums``; ``like`` (an input
        ciphertext of the tail, or None) is kept for rows that end with no terms."""
        accs, known = sums.get(id(op), ([None] * op.result.type.count, None))
        sums[id(op)] = (self._sum_shares([accs, terms]), known if known is not None else like)

    def _rows(self, number: int, read, lo: int, hi: int, shares=None, like=None, sums=None) -> list[list]:
        """Rows lo..hi of segment ``number``; ``read(value)`` gives a value made before the
        segment (all its rows). ``shares``: instead of computing the head linear op, add these
        shares of its sums (``segment_partial``; ``like``: an input ciphertext of it). A
        stream's tails add their terms over these rows to ``sums``. A value is dropped after
        its last read within the segment."""
        segment = self.segments[number]
        tails = segment.tails if isinstance(segment, Stream) else ()
        keep = set(self.live_out(number))
        last = {v: i for i, op in enumerate(segment) for v in op.operands}
        local = {}
        for i, op in enumerate(segment):
            if id(op) in tails:
                v = op.operands[0]
                self._add_terms(sums, op, self._linear_terms(op, local[v], 0, op.result.type.count, lo), local[v][0])
            elif i == 0 and shares is not None:
                local[op.result] = self._linear_rows(op, self._sum_shares(shares), lo, hi, like)
            elif op.name == "ckks.linear":
                v = op.operands[0]
                if v in local:  # diagonal: rows lo..hi of its input are all it reads
                    local[op.result] = self._linear_rows(op, self._linear_terms(op, local[v], lo, hi, lo), lo, hi,
                                                         local[v][0])
                else:
                    local[op.result] = self._linear(op, read(v), (lo, hi))
            else:
                args = [local[v] if v in local else read(v)[lo:hi] for v in op.operands]
                if op.name in ("ckks.mul_plain", "ckks.add_plain"):
                    local[op.result] = [self._plain_op(op, ct, lo + c) for c, ct in enumerate(args[0])]
                else:
                    local[op.result] = self._apply(op, args)
            for v in op.operands:
                if last.get(v) == i and v in local and v not in keep:
                    del local[v]
        return [local[v] for v in self.kept(number)]

    def _sum_shares(self, shares: list[list]) -> list:
        add = self.seal.evaluator.add_inplace
        sums = []
        for terms in zip(*shares):
            acc = None
            for term in terms:
                if term is None:
                    continue
                if acc is None:
                    acc = term
                else:
                    add(acc, term)
            sums.append(acc)
        return sums

    def segment_rows(self, number: int, source, lo: int, hi: int) -> list[bytes]:
        """Rows lo..hi of segment ``number`` (a ``splittable`` one) from ``source``, its linear
        layer's input ciphertexts: the serialized results of every value of
        ``live_out(number)``, value after value, row after row. Of a stream (``source``: a
        function from a value made before it to its ciphertexts): per tail, its sums over these
        rows (b"" where none) and an input ciphertext of it if some sum is empty (else b""),
        then the rows of every value of ``kept(number)``."""
        dump = seal_bytes.to_bytes
        if not isinstance(self.segments[number], Stream):
            return [dump(ct) for cts in self.segment_values(number, source, lo, hi) for ct in cts]
        sums: dict = {}
        kept = self._chunked(number, source, lo, hi, sums=sums)
        out = []
        for op in self.segments[number].tail_ops():
            accs, like = sums.get(id(op), ([None] * op.result.type.count, None))
            out += [b"" if ct is None else dump(ct) for ct in accs]
            out.append(dump(like) if like is not None and any(ct is None for ct in accs) else b"")
        return out + [dump(ct) for cts in kept for ct in cts]

    def segment_values(self, number: int, source: list, lo: int, hi: int) -> list[list]:
        """Rows lo..hi of segment ``number`` (a ``splittable`` one) from its input ``source``:
        per value of ``live_out(number)``, its ciphertexts."""
        return self._chunked(number, lambda v: source, lo, hi)

    def segment_partial(self, number: int, source: list, first: int, lo: int, hi: int) -> list:
        """Rows lo..hi of segment ``number``'s linear layer summed over its input ciphertexts
        first..first + len(source) - 1 only (None: no terms there): one worker's share when
        the input is split among workers by rows (``segment_finish`` adds the shares)."""
        return self._linear_terms(self.segments[number][0], source, lo, hi, first)

    def segment_finish(self, number: int, shares: list[list], lo: int, hi: int, like) -> list[list]:
        """Rows lo..hi of segment ``number`` from the shares of its linear layer's sums (each a
        list over the rows, None where a share has no terms; ``like``: an input ciphertext of the
        layer): the sums, bias, then the rest of the segment; per value of
        ``live_out(number)``, its ciphertexts."""
        return self._chunked(number, None, lo, hi, shares, like)

    def load_rows(self, blob: bytes):
        """A ciphertext that ``segment_rows`` serialized (in this run: not outside input)."""
        return seal_bytes.from_bytes(seal.Ciphertext(), self.seal.context, blob)

    def assemble(self, number: int, chunks, blobs) -> dict:
        """``segment_rows``'s results for each chunk of rows (in row order) as the segment's
        values: per value of ``live_out(number)``, its ciphertexts."""
        segment = self.segments[number]
        stream = isinstance(segment, Stream)
        live = self.kept(number)
        results = {value: [] for value in live}
        sums: dict = {}
        for (lo, hi), part in zip(chunks, blobs):
            part = iter(part)
            for op in segment.tail_ops() if stream else ():
                terms = [self.load_rows(b) if b else None for b in
                         (next(part) for _ in range(op.result.type.count))]
                like = next(part)
                self._add_terms(sums, op, terms, self.load_rows(like) if like else None)
            for value in live:
                results[value] += [self.load_rows(next(part)) for _ in range(lo, hi)]
        if stream:
            results.update(self._tail_values(number, sums))
        return results

    def _decrypt(self, env, lo, hi):
        s = self.seal
        plain = seal.Plaintext()
        for op in self.decrypts:
            values = []
            for ct in env[op.operands[0]]:
                s.decryptor.decrypt(ct, plain)
                values.append(np.asarray(s.encoder.decode_double(plain)))
            if self.slots_layout:
                env[op.result] = slot_outputs(self.graph, op, np.asarray(values)[:, None, :], hi - lo)
            else:
                env[op.result] = np.stack([v[: hi - lo] for v in values], axis=1).reshape(
                    (hi - lo,) + op.result.type.shape)
        run_client_tail(self.graph, self.client, env)
        return [env[op.operands[0]] for op in self.outputs]

    def run_batch(self, stacked, lo, hi, rows=None):
        """Encrypt, evaluate and decrypt inputs lo..hi; ``rows`` (a row splitter) shares the rows
        of each large linear layer (the eval time is then wall time on that many cores)."""
        timings = {}
        start = time.perf_counter()
        env = self._encrypt(stacked, lo, hi)
        timings["encrypt"] = time.perf_counter() - start
        start = time.perf_counter()
        env = self._evaluate(env, rows)
        timings["eval"] = time.perf_counter() - start
        start = time.perf_counter()
        outputs = self._decrypt(env, lo, hi)
        timings["decrypt"] = time.perf_counter() - start
        return outputs, timings


def generate_keys(graph: Graph, max_key_bytes: int | None = None) -> dict[str, bytes]:
    """New keys for ``graph``'s parameters: secret, public and, as the program needs them,
    relinearization and rotation keys; refused beforehand when the evaluation keys would exceed
    ``max_key_bytes`` (default MAX_KEY_BYTES)."""
    check_key_budget(graph, max_key_bytes)
    backend = TensealBackend(graph)
    return backend.connect(None).export()


def encrypt_batches(graph: Graph, keys: dict[str, bytes], stacked, progress=None) -> list[list[list[bytes]]]:
    """Client: per batch, per input, the serialized ciphertexts (symmetric, with the secret key)."""
    backend = TensealBackend(graph)
    backend.connect(keys)
    runs = stacked[0].shape[0]
    out = []
    spans = backend.spans(runs)
    unit = "encrypted input" if backend.per_batch == 1 else "encrypted batch"
    for i, (lo, hi) in enumerate(spans):
        env = backend._encrypt(stacked, lo, hi, seeded=True)
        out.append([[seal_bytes.to_bytes(ct) for ct in env[op.result]] for op in backend.inputs])
        count_progress(progress, i + 1, len(spans), unit)
    return out


def input_groups(graph: Graph) -> list[int]:
    """Ciphertexts per input of one batch, in input order."""
    return [op.result.type.count for op in graph.inputs()]


def result_groups(graph: Graph) -> list[int]:
    """Ciphertexts per decryption point of one batch, in program order."""
    return [op.operands[0].type.count for op in graph.ops if op.name == "ckks.decrypt"]


def _load_group(backend, value, group, what: str) -> list:
    """The ciphertexts of one IR value, each checked against its level and planned scale."""
    level, scale = value.type.level, backend.scales[value]
    return [backend.seal.load_ciphertext(data, level, scale, f"{what}, ciphertext {j}")
            for j, data in enumerate(group)]


def server_backend(graph: Graph, eval_keys: dict[str, bytes], streams: bool = True) -> TensealBackend:
    """A backend for the server side: evaluation keys only (a secret key is refused)."""
    if "secret" in eval_keys:
        raise KeyFileError("the server was given a secret key; it must never have one")
    backend = TensealBackend(graph, streams)
    backend.connect(eval_keys)
    return backend


def evaluate_batch(backend: TensealBackend, batch: list[list[bytes]], number: int, rows=None) -> list[list[bytes]]:
    """Server: one batch (per input, its serialized ciphertexts) through the program; per
    decryption point, the serialized results. Every ciphertext is checked against the program's
    input level and scale before SEAL reads it."""
    env = {op.result: _load_group(backend, op.result, cts, f"batch {number}, input {op.attrs['name']!r}")
           for op, cts in zip(backend.inputs, batch)}
    env = backend._evaluate(env, rows)
    return [[seal_bytes.to_bytes(ct) for ct in env[op.operands[0]]] for op in backend.decrypts]


def encrypt_batch(backend: TensealBackend, stacked, lo: int, hi: int) -> list[list[bytes]]:
    """Client: runs lo..hi encrypted (seeded: half the bytes), per input its ciphertexts."""
    env = backend._encrypt(stacked, lo, hi, seeded=True)
    return [[seal_bytes.to_bytes(ct) for ct in env[op.result]] for op in backend.inputs]


def decrypt_batch(backend: TensealBackend, results: list[list[bytes]], lo: int, hi: int, number: int) -> list:
    """Client: one batch's serialized results (checked first) decrypted, with the client tail."""
    env = {op.operands[0]: _load_group(backend, op.operands[0], cts, f"batch {number}, result {i}")
           for i, (op, cts) in enumerate(zip(backend.decrypts, results))}
    return backend._decrypt(env, lo, hi)


def evaluate_batches(backend: TensealBackend, encrypted, progress=None, rows=None) -> list[list[list[bytes]]]:
    """Server: the program on ciphertexts with ``backend`` (``server_backend``: no secret key),
    batch after batch in this process (``rows``: an executor's row splitter); per batch, per
    decryption point."""
    out = []
    unit = "evaluated input" if backend.per_batch == 1 else "evaluated batch"
    for number, batch in enumerate(encrypted):
        out.append(evaluate_batch(backend, batch, number, rows))
        count_progress(progress, number + 1, len(encrypted), unit)
    return out


def decrypt_batches(graph: Graph, keys: dict[str, bytes], results, sizes: list[int]) -> list:
    """Client: decrypt the server's results and run the client-side tail; arrays (R, *shape).
    Every ciphertext is checked against the level and scale the program gives its result first."""
    backend = TensealBackend(graph)
    backend.connect(keys)
    pieces = []
    for number, (batch, size) in enumerate(zip(results, sizes)):
        env = {op.operands[0]: _load_group(backend, op.operands[0], cts, f"batch {number}, result {i}")
               for i, (op, cts) in enumerate(zip(backend.decrypts, batch))}
        pieces.append(backend._decrypt(env, 0, size))
    return [np.concatenate([p[i] for p in pieces]) for i in range(len(backend.outputs))]


MAX_KEY_BYTES = 4 << 30  # evaluation keys keygen makes without being told more (HECC_MAX_KEY_BYTES)


def check_key_budget(graph: Graph, max_key_bytes: int | None = None) -> int:
    """The bytes of the evaluation keys ``graph`` needs (relinearization and rotation keys,
    unseeded); refused over the budget, before any key is made."""
    params = program_params(graph)
    steps = next(op.attrs.get("galois_steps", []) for op in graph.ops if op.name == "ckks.params")
    n, primes = params.poly_modulus_degree, len(params.coeff_modulus_bits)
    switching = (primes - 1) * 2 * n * primes * 8
    relin = any(op.name == "ckks.relinearize" for op in graph.ops)
    need = switching * (len(steps) + relin)
    budget = max_key_bytes or int(os.environ.get("HECC_MAX_KEY_BYTES", MAX_KEY_BYTES))
    if need > budget:
        raise ParameterError(f"this program needs {len(steps)} rotation keys, {need / 2 ** 20:.0f} MiB of "
                             f"evaluation keys, over the budget of {budget / 2 ** 20:.0f} MiB; compile "
                             "with --max-rotation-keys to use fewer, or raise the budget "
                             "(--max-key-bytes, or HECC_MAX_KEY_BYTES)")
    return need


SCALE_CHECK = 1e-6  # ciphertexts from outside: relative difference of scale from the program's
SCALE_TOLERANCE = 1e-2


def _adopt_scale(ct, scale):
    """Give ``ct`` the scale of the other operand of a sum. The two differ only because a rescale
    divided by a prime, not by the power of two the IR counts (relative 2^-12 for 26-bit primes,
    2^-40 for 54-bit ones); adopting the scale costs exactly that much relative precision."""
    if abs(ct.scale / scale - 1) > SCALE_TOLERANCE:
        raise RuntimeError(f"scales {ct.scale} and {scale} of a sum differ beyond rescale rounding")
    ct.scale = scale
    return ct


BLOCK_ROWS = 8


def _block_plan(weights: LinearWeights):
    """For each block of BLOCK_ROWS rows: (first row, [(column, [(row in block, weight), ...])])
    over the non-zero weights (zero weights are skipped), columns and rows ascending."""
    block = weights.rows // BLOCK_ROWS
    order = np.lexsort((weights.rows, weights.cols, block))
    rows, cols, vals, block = weights.rows[order], weights.cols[order], weights.vals[order], block[order]
    plan, current, column = [], None, None
    for r, j, w, blk in zip(rows.tolist(), cols.tolist(), vals.tolist(), block.tolist()):
        if current is None or current[0] != blk * BLOCK_ROWS:
            current = (blk * BLOCK_ROWS, [])
            plan.append(current)
            column = None
        if column is None or column[0] != j:
            column = (j, [])
            current[1].append(column)
        column[1].append((r - blk * BLOCK_ROWS, w))
    have = {lo for lo, _ in plan}
    for lo in range(0, weights.shape[0], BLOCK_ROWS):  # blocks without weights, as before
        if lo not in have:
            plan.append((lo, []))
    plan.sort(key=lambda entry: entry[0])
    return plan


PARALLEL_MIN_PRODUCTS = 2000  # below this a linear layer is not worth forking for


MEASURED_LEVELS = 5  # levels timed per chain; the others interpolated (costs are smooth in the level)
MEASURE_SECONDS = 0.05  # per primitive and level: repeats stop here (one is always timed)


def measure_primitives(n: int, chain: list[int], repeats: int = 20,
                       levels: int | None = MEASURED_LEVELS) -> dict[str, list[float]]:
    """Seconds per primitive at each level of the chain (index = level), measured with SEAL on
    this machine: the cost model behind the compile report's predicted latency. ``levels``
    levels (the top, the bottom and evenly between; None: all) are timed, each primitive
    ``repeats`` times or for MEASURE_SECONDS, and the levels between are interpolated, so a
    new 23-prime chain at N=32768 is measured in seconds, not a minute."""
    keyed = len(chain) > 1  # one prime: no special prime, no key switching (nothing to rotate)
    s = _Seal(n, chain, relin=keyed, galois_steps=[1] if keyed else [])
    if keyed:  # used here only: made in place, not seeded, saved and loaded back (5 s at N=32768)
        s._relin_keys, s._galois_keys = seal.RelinKeys(), seal.GaloisKeys()
        s.keygen.create_relin_keys(s._relin_keys)
        s.keygen.create_galois_keys(s.galois_elements(), s._galois_keys)
    ev, encoder = s.evaluator, s.encoder
    plain, ct = seal.Plaintext(), seal.Ciphertext()
    scale = 2.0 ** min(16, (chain[0] - 4) // 3)  # squares and products fit even at the last level
    encoder.encode([0.5] * (n // 2), scale, plain)
    s.encryptor.encrypt_symmetric(plain, ct)
    names = ("multiply_plain", "add", "square", "relinearize", "rescale", "modswitch",
             "encrypt", "decrypt", "rotate", "multiply_vector", "add_plain", "encode")
    costs: dict[str, dict[int, float]] = {k: {} for k in names}
    vector = seal.Plaintext()

    def timed(fn):
        fn()  # untimed: the first call at a level allocates (SEAL's memory pool), up to 9x a later one
        count, start = 0, time.perf_counter()
        while count < repeats and (count < 1 or time.perf_counter() - start < MEASURE_SECONDS):
            fn()
            count += 1
        return (time.perf_counter() - start) / count
    depth = len(data_primes(chain)) - 1
    sampled = (set(range(depth + 1)) if levels is None or levels > depth
               else {round(i * depth / max(levels - 1, 1)) for i in range(levels)})
    for level in range(depth + 1):
        if level not in sampled:
            if level < depth:
                ev.mod_switch_to_next_inplace(ct)
            continue
        w, tmp, acc, sq = seal.Plaintext(), seal.Ciphertext(), seal.Ciphertext(), seal.Ciphertext()
        encoder.encode(0.3, ct.parms_id(), scale, w)
        ev.multiply_plain(ct, w, acc)
        costs["multiply_plain"][level] = timed(lambda: (encoder.encode(0.3, ct.parms_id(), scale, w),
                                                        ev.multiply_plain(ct, w, tmp)))
        costs["add"][level] = timed(lambda: ev.add_inplace(acc, tmp))
        # the slots layout: weight vectors encoded once per program, rotations with a Galois key
        encoder.encode([0.3] * (n // 2), ct.parms_id(), scale, vector)
        costs["multiply_vector"][level] = timed(lambda: ev.multiply_plain(ct, vector, tmp))
        encoder.encode([0.3] * (n // 2), ct.parms_id(), ct.scale, vector)
        costs["add_plain"][level] = timed(lambda: ev.add_plain(ct, vector, tmp))
        weights = [0.3] * (n // 2)
        costs["encode"][level] = timed(lambda: encoder.encode(weights, ct.parms_id(), scale, vector))
        for name, fn in (("rotate", lambda: ev.rotate_vector(ct, 1, s.galois_keys, tmp)),
                         ("square", lambda: ev.square(ct, sq)),
                         ("relinearize", lambda: ev.relinearize(sq, s.relin_keys, tmp))):
            costs[name][level] = timed(fn) if keyed else 0.0
        pt = seal.Plaintext()
        costs["encrypt"][level] = timed(lambda: (encoder.encode([0.5] * (n // 2), ct.parms_id(), scale, pt),
                                                 s.encryptor.encrypt_symmetric(pt, tmp)))
        costs["decrypt"][level] = timed(lambda: (s.decryptor.decrypt(ct, pt), encoder.decode_double(pt)))
        if level < depth:
            costs["rescale"][level] = timed(lambda: ev.rescale_to_next(acc, tmp))
            costs["modswitch"][level] = timed(lambda: ev.mod_switch_to_next(ct, tmp))
            ev.mod_switch_to_next_inplace(ct)
    out = {}
    for name, at in costs.items():
        if name in ("rescale", "modswitch") and depth > 0:
            # nothing below the last level; its cost next to it stands in for an unsampled one
            at.setdefault(depth - 1, at[max(at)] if at else 0.0)
        known = sorted(at)
        out[name] = [float(np.interp(level, known, [at[k] for k in known])) if known else 0.0
                     for level in range(depth + 1)]
        if name in ("rescale", "modswitch"):
            out[name][depth] = 0.0
    return out
