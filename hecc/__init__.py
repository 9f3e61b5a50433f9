"""hecc: compile trained ONNX networks into CKKS homomorphic-encryption programs."""
__version__ = "0.1.0"

from .api import Program, compile, load  # noqa: E402
from .errors import (ArtifactError, HeccError, InputError, ModelError, ParameterError,  # noqa: E402
                     ParseError, PassError, UnsupportedOpError, UserError, VerifyError)

__all__ = ["Program", "compile", "load", "HeccError", "UserError", "ParseError", "VerifyError",
           "UnsupportedOpError", "ModelError", "InputError", "ArtifactError", "PassError",
           "ParameterError", "__version__"]
