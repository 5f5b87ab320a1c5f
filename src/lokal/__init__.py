"""lokal: a LocalAI- and OpenAI-compatible inference server for local models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lokal")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
