"""pumpguard: the secure command protocol between an insulin pump and its remote.

This package only names the distribution; the work lives in its three parts,
which import one way (``protocol`` <- ``firmware_sim`` <- ``host``):

* :mod:`pumpguard.protocol` -- the sans-I/O protocol core (docs/SPEC.md);
* :mod:`pumpguard.firmware_sim` -- the simulated pump firmware;
* :mod:`pumpguard.host` -- the remote's client library and command-line tools.

The repository keeps those parts as the top-level folders ``protocol/``,
``firmware_sim/`` and ``host/``; ``pyproject.toml`` installs them under this one
name (this file lives in ``protocol/_pumpguard/`` only because the top-level
folders are fixed), so nothing generic such as ``protocol`` lands in
site-packages.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
