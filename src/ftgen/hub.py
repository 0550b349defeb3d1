"""Model and dataset names: local paths or Hugging Face Hub ids, and whether the Hub can be reached at all.

Offline, the Hub libraries retry each request for most of a minute and print a line per retry. ftgen asks
once, with a short connection probe (or trusts `HF_HUB_OFFLINE=1`), and when the Hub is out of reach loads
from the local Hugging Face cache only, failing in one line within seconds.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from ftgen.errors import UserError
from ftgen.files import list_dir, stat_input

PROBE_TIMEOUT_S = 2.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# 'gpt2' or 'owner/name': letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters a part
_HUB_PART = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")


def is_hub_id(name: str) -> bool:
    """True if `name` has the shape of a Hub repository id ('gpt2', 'owner/name')."""
    return bool(HUB_ID.match(name))


def looks_like_path(name: str) -> bool:
    """True if `name` means a local directory rather than a Hub id (see ftgen.models' docstring)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or not is_hub_id(name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()  # `models/nope` where models/ exists


def check_model_name(name_or_path: str) -> None:
    """Refuse at once, before any data or model loads, a model that cannot be: a path-like name that does
    not exist, or a path that is not a directory (or holds a FIFO or a device where a file should be).
    Imports no torch: a config validator may call it. `default` and Hub ids pass."""
    if not name_or_path.strip():
        raise UserError(f"model '{name_or_path}': no such directory (an empty model name)")
    path = expand_path(name_or_path)
    if not os.path.lexists(path):
        if looks_like_path(name_or_path):
            raise UserError(f"model '{name_or_path}': no such directory")
        return
    try:
        for entry in list_dir(path):  # the library would open a FIFO named config.json and wait forever
            stat_input(entry, "any")
    except UserError as e:
        raise UserError(f"model '{name_or_path}': {e}") from None


def expand_path(name: str) -> Path:
    """`name` as a path, `~` expanded (left as is for an unknown user)."""
    try:
        return Path(name).expanduser()
    except RuntimeError:  # `~nosuchuser/x`
        return Path(name)


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_ENV)


@cache
def hub_unreachable() -> bool:
    """True if `HF_HUB_OFFLINE` (or its kin) is set, or a TCP connection to the Hub (or the HTTPS proxy)
    cannot be opened within PROBE_TIMEOUT_S. Asked once per process."""
    if _env_offline():
        return True
    proxy = next(
        (os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if v in os.environ), ""
    )
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False  # an endpoint we cannot parse: let the library try
    reached: list[bool] = []

    def probe() -> None:  # a thread: name resolution itself ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return not reached


@contextmanager
def offline_mode() -> Iterator[None]:
    """Within it, huggingface_hub and datasets make no network request (they read the local cache only).
    Both libraries read HF_HUB_OFFLINE once, at import; this sets their copies for the duration."""
    import huggingface_hub.constants as hub_constants

    modules = [hub_constants, sys.modules.get("datasets.config")]
    saved = [(m, m.HF_HUB_OFFLINE) for m in modules if m is not None and hasattr(m, "HF_HUB_OFFLINE")]
    for m, _ in saved:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, value in saved:
            m.HF_HUB_OFFLINE = value
