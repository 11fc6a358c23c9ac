"""HTTP to systems we do not control, bounded in size and in time.

`requests`' `timeout` bounds each socket read, not the call: a server that drips one byte every
few seconds keeps a call alive for ever, and a huge (or decompression-bomb) body is read into
memory whole. Every client of an outside system (Proxmox through proxmoxer, the agents,
Cloudflare, Technitium, Velocity, Discord) mounts `BoundedAdapter` on its session, so each
answer is read in pieces against two limits:

- `max_bytes`: the decoded body may not exceed it (`AnswerTooLarge`);
- a deadline: the call's `timeout` (or `deadline` when given) is the time from sending the
  request until the body has been read in full (`AnswerTooSlow`), not the time per socket
  read; each piece is one read, so the real bound is the deadline plus one read timeout.

Both errors are `requests.exceptions.RequestException`s, so every client's existing handling of
transport failures applies; both say "bad answer" (`BadAnswer`), which clients classify as such.

`parse` checks a decoded JSON answer against a pydantic type: an answer of the wrong shape is a
`BadAnswer` too, never a KeyError or TypeError three calls later.
"""
from __future__ import annotations

import functools
import json
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import pydantic
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.util.ssl_ import create_urllib3_context

from .metrics import record_call

T = TypeVar("T")

#: Bytes read per socket read.
PIECE = 64 * 1024


class BadAnswer(requests.exceptions.RequestException):
    """The outside system answered, but not something we can use."""


class AnswerTooLarge(BadAnswer):
    pass


class AnswerTooSlow(BadAnswer):
    pass


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter that reads every body itself, within `max_bytes` and `deadline`."""

    #: The deadline of a call made without a timeout (none of ours is).
    FALLBACK_DEADLINE = 60.0

    def __init__(self, *, max_bytes: int, deadline: float | None = None, system: str = "",
                 **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        self.deadline = deadline
        #: The outside system (proxmox, agent, cloudflare, …) its calls are counted for.
        self.system = system
        super().__init__(**kwargs)

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest,
                                             verify: Any, cert: Any = None,
                                             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every new TLS connection gets one of this process's SSL contexts (`tls_context`)
        instead of a fresh one that loads the whole CA bundle again: that load was a tenth of
        a busy lifecycle worker's time while a burst opened its threads' connections."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if host_params.get("scheme") == "https" and "cert_file" not in pool_kwargs:
            pool_kwargs["ssl_context"] = tls_context(
                verify=pool_kwargs["cert_reqs"] != "CERT_NONE",
                ca_certs=pool_kwargs.pop("ca_certs", None),
                ca_cert_dir=pool_kwargs.pop("ca_cert_dir", None))
        return host_params, pool_kwargs

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        try:
            resp = self._send(request, started, timeout=timeout, **kwargs)
        except Exception as exc:
            if self.system:
                record_call(self.system, request.method or "", request.path_url,
                            time.monotonic() - started, error=exc)
            raise
        if self.system:
            record_call(self.system, request.method or "", request.path_url,
                        time.monotonic() - started, status=resp.status_code)
        return resp

    def _send(self, request: requests.PreparedRequest, started: float, *, timeout: Any,
              **kwargs: Any) -> requests.Response:
        deadline = self.deadline or _total(timeout) or self.FALLBACK_DEADLINE
        resp = super().send(request, stream=True, timeout=timeout, **kwargs)
        try:
            declared = int(resp.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > self.max_bytes:
            resp.close()
            raise AnswerTooLarge(f"answer of {declared} bytes is over the {self.max_bytes} "
                                 "byte limit", request=request)
        pieces: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() - started > deadline:
                    raise AnswerTooSlow(f"answer not complete after {deadline:.0f}s",
                                        request=request)
                piece = resp.raw.read1(PIECE, decode_content=True)
                if not piece:
                    break
                size += len(piece)
                if size > self.max_bytes:
                    raise AnswerTooLarge(f"answer over the {self.max_bytes} byte limit",
                                         request=request)
                pieces.append(piece)
        except BadAnswer:
            resp.close()
            raise
        except Exception as exc:  # urllib3's read errors, as requests would raise them
            resp.close()
            raise requests.exceptions.ConnectionError(f"reading the answer failed: "
                                                      f"{exc.__class__.__name__}",
                                                      request=request) from exc
        resp._content = b"".join(pieces)
        resp._content_consumed = True
        resp.raw.release_conn()
        return resp


def tls_context(*, verify: bool, ca_certs: str | None = None,
                ca_cert_dir: str | None = None) -> ssl.SSLContext:
    """One SSL context per process and trust setting, its CA certificates loaded once (an
    SSLContext may be shared by threads). `verify=False` checks nothing (a devstack's
    self-signed Proxmox); otherwise the certificate and the host name are checked against
    `ca_certs` / `ca_cert_dir`, or the system's CAs."""
    return _tls_context(bool(verify), ca_certs or None, ca_cert_dir or None)


@functools.lru_cache(maxsize=16)
def _tls_context(verify: bool, ca_certs: str | None, ca_cert_dir: str | None,
                 ) -> ssl.SSLContext:
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    if verify:
        if ca_certs or ca_cert_dir:
            context.load_verify_locations(cafile=ca_certs, capath=ca_cert_dir)
        else:
            context.load_default_certs()
    return context


def _total(timeout: Any) -> float | None:
    """requests' timeout (a number, or a (connect, read) pair) as one number of seconds."""
    if isinstance(timeout, tuple):
        parts = [t for t in timeout if t is not None]
        return float(sum(parts)) if parts else None
    return float(timeout) if timeout is not None else None


def bounded_session(*, max_bytes: int, deadline: float | None = None,
                    session: requests.Session | None = None,
                    system: str = "") -> requests.Session:
    """`session` (or a new one) with BoundedAdapter mounted for http and https, and the
    environment's settings read once (`environment_read_once`); its calls are counted as
    `system`'s (core/metrics.py)."""
    session = session if session is not None else requests.Session()
    adapter = BoundedAdapter(max_bytes=max_bytes, deadline=deadline, system=system)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return environment_read_once(session)


_THREAD = threading.local()
C = TypeVar("C")


def per_thread_client(name: str, setting_names: Iterable[str], build: Callable[[], C]) -> C:
    """This thread's client `name`, built by `build` and kept while the settings it is built
    from stay the same: a worker's flows reuse its HTTP sessions (connections, TLS) from one
    step and operation to the next. Per thread, as a session is not to be shared between
    threads."""
    key = tuple(str(getattr(settings, setting)) for setting in setting_names)
    held = getattr(_THREAD, name, None)
    if held is None or held[0] != key:
        held = (key, build())
        setattr(_THREAD, name, held)
    return held[1]


def ca_bundle() -> str | bool:
    """What `verify=True` means for requests in this environment: the CA bundle named by
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else True (certifi's)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def environment_read_once(session: requests.Session) -> requests.Session:
    """requests reads the environment again at every call (proxy variables and the CA bundle:
    a scan of all of os.environ, a tenth of a busy worker's CPU). Without proxy variables the
    session stops doing so and keeps what it means, read now: the CA bundle as its `verify`
    (callers passing verify=True per call pass `ca_bundle()` instead). With proxy variables it
    keeps reading them per call, so that NO_PROXY is matched against each URL."""
    if urllib.request.getproxies():
        return session
    session.trust_env = False
    if session.verify is True:
        session.verify = ca_bundle()
    return session


def json_body(resp: requests.Response) -> Any:
    """The decoded JSON body, or None when the body is empty. Not JSON: BadAnswer."""
    if not resp.content:
        return None
    try:
        return json.loads(resp.content)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = resp.headers.get("content-type", "?").split(";")[0]
        raise BadAnswer(f"HTTP {resp.status_code} answer is not JSON ({kind}, "
                        f"{len(resp.content)} bytes)") from exc


@functools.lru_cache(maxsize=None)
def _adapter(schema: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(schema)


def parse(schema: Any, data: Any, *, what: str) -> Any:
    """`data` validated against `schema` (a pydantic model or any type pydantic accepts).
    Anything else: BadAnswer naming the first problem."""
    try:
        return _adapter(schema).validate_python(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "(top)"
        raise BadAnswer(f"{what}: unexpected answer at {where}: {first.get('msg', exc)} "
                        f"({exc.error_count()} problem(s))") from None


class Answer(pydantic.BaseModel):
    """The schema of an outside answer: fields we do not use are ignored; those we use are
    type-checked (a `null` or an object where a number belongs is an error)."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


def clipped(limit: int) -> Any:
    """A string type cut to `limit` characters (outside text we show or store, never trust)."""
    return Annotated[str, pydantic.AfterValidator(lambda text: text[:limit])]
