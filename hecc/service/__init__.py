"""The encrypted-inference service: ``hecc serve`` (``serve``, ``app``, ``store``, ``worker``;
the ``hecc[serve]`` extra) and its client, ``hecc infer`` / ``Client.infer`` (``client``; the
standard library only)."""
