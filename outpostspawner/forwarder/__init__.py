"""The SSH forwarder: a separate process that keeps SSH connections and port
forwards, controlled over HTTP by the Hub (see ``docs/ssh.md``).

- :mod:`.options`: validation and the SSH option allow-list (pure);
- :mod:`.core`: the connections and forwards (runs in the forwarder process);
- :mod:`.server` and :mod:`.app`: the control API and the process entry point;
- :mod:`.client` and :mod:`.supervisor`: the Hub side.
"""

from .options import ConfigError, ForwardSpec, SSHTarget

__all__ = ["ConfigError", "ForwardSpec", "SSHTarget"]
