"""V-Gate operator: reconciles VGateDeployment resources (kopf)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vgate")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
