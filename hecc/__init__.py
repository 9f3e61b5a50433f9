"""hecc: compile trained ONNX networks into CKKS homomorphic-encryption programs."""
__version__ = "0.1.0"

from .api import Program, compile, load  # noqa: E402
from .clientserver import Client, Server  # noqa: E402
from .errors import (ArtifactError, CiphertextFileError, HeccError, HeccWarning,  # noqa: E402
                     InputError, KeyFileError, ModelError, ParameterError, ParseError, PassError,
                     UnsupportedOpError, UserError, VerifyError)

__all__ = ["Program", "compile", "load", "HeccError", "UserError", "ParseError", "VerifyError",
           "UnsupportedOpError", "ModelError", "InputError", "ArtifactError", "PassError",
           "ParameterError", "HeccWarning", "KeyFileError", "CiphertextFileError", "Client", "Server",
           "__version__"]
