"""Small files of a binary cache read and written by nix-hive itself (pull mode's pointers and
status documents): HTTP GET and PUT through Python's urllib, each bounded by a timeout, or
files when the cache is `file:///DIR`. HTTP is not a process: this is no business of
hive/process.py. Nix writes the cache's store paths itself (`nix copy --to`)."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from hive.errors import HiveError, InputError

TIMEOUT = 10.0  # seconds for one request (connect, send, read)
LIMIT = 1 << 20  # bytes read of one file at most: pointers and status documents are small
SCHEMES = ("http", "https", "file")


class CacheFileError(HiveError):
    """A cache file that could not be read or written (the cache down, refusing, too slow)."""


def base_url(text: str, option: str = "--to") -> str:
    """A cache's base URL as given (without a trailing slash): http://, https:// or file:///DIR;
    anything else is bad input."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in SCHEMES or (parsed.scheme == "file" and (parsed.netloc or not parsed.path)) or (
            parsed.scheme != "file" and not parsed.netloc) or parsed.query or parsed.fragment:
        raise InputError(f"{option} {text!r}: expected the cache's URL: http://HOST[:PORT][/PATH], https://… "
                         "or file:///DIR")
    return text.rstrip("/")


def _local(url: str) -> Path | None:
    parsed = urllib.parse.urlsplit(url)
    return Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else None


def get(url: str, *, timeout: float = TIMEOUT) -> bytes | None:
    """The file at `url`, or None when there is none (HTTP 404 or 410, no such file)."""
    path = _local(url)
    try:
        if path is not None:
            with open(path, "rb") as fh:
                return fh.read(LIMIT)
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as answer:
            data: bytes = answer.read(LIMIT)
            return data
    except FileNotFoundError:
        return None
    except urllib.error.HTTPError as exc:
        exc.close()  # its body is a file: closed here, not by the garbage collector (a ResourceWarning)
        if exc.code in (404, 410):
            return None
        raise CacheFileError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CacheFileError(f"GET {url}: {_why(exc)}") from None


def put(url: str, data: bytes, *, content_type: str = "text/plain", timeout: float = TIMEOUT) -> None:
    """Write `data` at `url`: an HTTP PUT (the server must accept it: nginx's `dav_methods PUT;
    create_full_put_path on;`), or a file written beside its place and renamed over it."""
    path = _local(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        request = urllib.request.Request(url, data=data, method="PUT",
                                         headers={"Content-Type": content_type, "Content-Length": str(len(data))})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(LIMIT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise CacheFileError(f"PUT {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CacheFileError(f"PUT {url}: {_why(exc)}") from None


def ensure_cache_info(base: str, store_dir: str = "/nix/store") -> bool:
    """Write the cache's `nix-cache-info` if it has none; whether it was written. `nix copy
    --to` writes it only when its own record of the cache (kept for a week) does not list the
    cache, so a cache emptied at the same URL would be left without one: Nix on the hosts then
    tries to write it itself (a read-only cache refuses), and the agent, which asks for it to
    tell a cache that is down, would think so."""
    url = f"{base}/nix-cache-info"
    if get(url) is not None:
        return False
    put(url, f"StoreDir: {store_dir}\n".encode(), content_type="text/x-nix-cache-info")
    return True


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
