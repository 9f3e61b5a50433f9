"""Typed errors. Every error a user can cause is a ``UserError``: the CLI prints its message and
exits with code 2, Python callers catch the specific subclass. Anything else is a bug in hecc."""


class HeccError(Exception):
    """Base class of every error hecc raises on purpose."""


class UserError(HeccError):
    """Something the user gave hecc is wrong; the message says what and what to do."""


class ParseError(UserError):
    """IR text that does not parse; carries the 1-based line and column."""

    def __init__(self, message: str, line: int, column: int, source: str = "<text>"):
        self.line, self.column, self.source = line, column, source
        super().__init__(f"{source}:{line}:{column}: {message}")


class VerifyError(UserError):
    """IR that parses but breaks an op's rules (types, operand counts, attributes)."""


class UnsupportedOpError(UserError):
    """An ONNX model uses ops hecc cannot compile; lists every one of them at once."""

    def __init__(self, unsupported: dict[str, list[str]], details: dict[str, str] | None = None):
        self.unsupported = unsupported
        details = self.details = details or {}
        lines = [f"the model uses {len(unsupported)} unsupported op type(s):"]
        for op_type in sorted(unsupported):
            names = ", ".join(unsupported[op_type])
            why = f" ({details[op_type]})" if op_type in details else ""
            lines.append(f"  {op_type}: node(s) {names}{why}")
        lines.append("see the supported-ops table in the README; export the model without these ops")
        super().__init__("\n".join(lines))


class ModelError(UserError):
    """An ONNX model that cannot be read or is malformed (not a matter of unsupported ops)."""


class InputError(UserError):
    """Run-time input data of the wrong name, shape, dtype or value."""


class ArtifactError(UserError):
    """A ``.hecc`` artifact that is missing, corrupted, tampered with or from another version."""


class PassError(UserError):
    """An unknown pass name or a pass that cannot apply to the given IR."""


class KeyFileError(UserError):
    """A key file that is corrupted, truncated, of the wrong kind or for another program."""


class CiphertextFileError(UserError):
    """A ciphertext file that is corrupted, truncated or for another program."""


class ParameterError(UserError):
    """No secure CKKS parameter set can hold the program."""


class ResourceError(UserError):
    """The machine refuses what the work needs (a file-size limit, memory for SEAL's objects)."""


class HeccWarning(UserWarning):
    """Something the user should know (a guess hecc had to make); the CLI prints it on stderr."""


class WorkerDied(HeccError):
    """A worker process ended without its result (killed, most often for lack of memory): not a
    bug in hecc, not the user's input either; the CLI says what happened and exits with 1."""
