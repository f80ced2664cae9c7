"""Google Cloud Storage (google-cloud-storage): resumable uploads under generation preconditions with the right
Content-Type, generation-0 creates and generation-matched replaces for leases, ADC, emulator."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import posixpath
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import google.auth
import google.auth.exceptions as gae
import google_crc32c
import requests
from google.api_core import exceptions as gex
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from infra.storage.base import (
    TEMP_PREFIX, ObjectInfo, Storage, as_uri, content_type_for, env_settings, fill_atomically, temp_name,
)
from infra.storage.uri import Uri
from core.errors import InputError, StorageError
from core.retry import register_transient, retrying

log = logging.getLogger("s2v.storage.gcs")

_CHUNK_UNIT = 256 * 1024  # resumable chunks must be multiples of 256 KiB


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient_gcs(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, (gex.ServerError, gex.TooManyRequests, gex.RequestRangeNotSatisfiable)):
            return True
        if isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
            return True
        if isinstance(e, gae.TransportError):
            return True
        # google-resumable-media: a checksum mismatch after a cut-off download is worth one more try
        if type(e).__name__ in ("DataCorruption", "ProtocolError"):
            return True
    return False


register_transient(is_transient_gcs)


def _crc32c_of(path: Path) -> str:
    c = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            c.update(block)
    return base64.b64encode(c.digest()).decode()


class GCSStorage(Storage):
    scheme = "gs"

    def __init__(self, settings=None):
        # callers without a Settings object (e.g. a manifest read by URI) still get S2V_* env configuration
        super().__init__(settings if settings is not None else env_settings())
        self._client_obj: gcs.Client | None = None

    def _opt(self, name: str, default=None):
        return getattr(self.settings, name, default) if self.settings is not None else default

    @property
    def _emulator(self) -> str | None:
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        if host and "://" not in host:
            host = "http://" + host
        return host.rstrip("/") if host else None

    @property
    def _client(self) -> gcs.Client:
        if self._client_obj is None:
            self._client_obj = self._make_client()
        return self._client_obj

    def _make_client(self) -> gcs.Client:
        project = self._opt("gcs_project")
        keyfile = self._opt("gcs_credentials_file")
        try:
            if keyfile:
                from google.oauth2 import service_account

                creds = service_account.Credentials.from_service_account_file(
                    keyfile, scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                )
                project = project or creds.project_id
            elif self._emulator:
                # the emulator accepts any caller; anonymous credentials avoid a token fetch from Google
                creds, project = AnonymousCredentials(), project or "s2v-emulator"
            else:
                creds, adc_project = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
                project = project or adc_project
        except (gae.DefaultCredentialsError, ValueError, OSError) as e:
            where = f"the service-account file {keyfile}" if keyfile else "application default credentials"
            # the exception text is a fixed phrase or a path, never key material; keep only its type to be safe
            raise StorageError(
                f"GCS: cannot load {where} ({type(e).__name__}); run `gcloud auth application-default login`, "
                f"set GOOGLE_APPLICATION_CREDENTIALS, or fix settings.gcs_credentials_file"
            ) from None
        return gcs.Client(project=project, credentials=creds)

    def _chunk(self) -> int:
        mb = self._opt("gcs_chunk_mb", 16)
        return max(1, (mb * 1024 * 1024) // _CHUNK_UNIT) * _CHUNK_UNIT

    def _timeout(self) -> tuple[float, float]:
        return (self._opt("storage_connect_timeout_s", 10.0), self._opt("storage_read_timeout_s", 120.0))

    def _blob(self, u: Uri, **kw) -> gcs.Blob:
        return self._client.bucket(u.bucket).blob(u.key, **kw)

    def _call(self, what: str, u: Uri, fn):
        """One operation under the storage retry policy (the library's own retry is off: retry=None)."""
        try:
            return retrying("storage")(fn)
        except Exception as e:  # noqa: BLE001 — classified below
            raise self._explain(what, u, e) from None

    def _bucket_exists(self, u: Uri) -> bool:
        return retrying("storage")(lambda: self._client.bucket(u.bucket).exists(retry=None, timeout=self._timeout()))

    def _explain(self, what: str, u: Uri, exc: BaseException) -> Exception:
        if isinstance(exc, (StorageError, InputError)):
            return exc
        where = self._emulator or "GCS"
        for e in _chain(exc):
            if isinstance(e, (gae.RefreshError, gae.DefaultCredentialsError, gex.Unauthorized)):
                return StorageError(
                    f"{u}: cannot {what}: the GCS credentials were rejected ({type(e).__name__}); check "
                    f"GOOGLE_APPLICATION_CREDENTIALS / `gcloud auth application-default login` / settings.gcs_credentials_file"
                )
            if isinstance(e, gex.Forbidden):
                return StorageError(
                    f"{u}: cannot {what}: access denied; the account needs the roles listed in docs/storage.md on bucket '{u.bucket}'"
                )
            if isinstance(e, gex.NotFound):
                try:
                    bucket_ok = self._bucket_exists(u)
                except Exception:  # noqa: BLE001 — fall back to the generic message
                    bucket_ok = True
                if not bucket_ok:
                    return StorageError(f"{u}: bucket '{u.bucket}' does not exist at {where}; check the bucket name and project")
                return InputError(f"{u}: no such object; check the key and that the upload finished")
            if is_transient_gcs(e):
                return StorageError(f"{u}: cannot {what}: {where} kept failing ({type(e).__name__}) after retries; check the network")
        code = getattr(exc, "code", None)
        return StorageError(f"{u}: cannot {what}: {type(exc).__name__}{f' ({code})' if code else ''} from {where}")

    # -- reads ----------------------------------------------------------------------------------------------

    def read_bytes(self, uri: Uri | str) -> bytes:
        u = as_uri(uri)
        return self._call("read", u, lambda: self._blob(u).download_as_bytes(retry=None, timeout=self._timeout()))

    def download(self, uri: Uri | str, dest: Path) -> Path:
        u, dest = as_uri(uri), Path(dest)

        def once() -> None:  # a fresh temp file per attempt; crc32c checked against the object's own checksum
            fill_atomically(dest, lambda tmp: self._blob(u).download_to_filename(
                tmp, retry=None, timeout=self._timeout(), checksum="crc32c"))

        self._call("download", u, once)
        return dest

    def exists(self, uri: Uri | str) -> bool:
        u = as_uri(uri)

        def check() -> bool:
            if self._blob(u).exists(retry=None, timeout=self._timeout()):
                return True
            if not self._bucket_exists(u):
                raise StorageError(f"{u}: bucket '{u.bucket}' does not exist at {self._emulator or 'GCS'}; check the bucket name")
            return False

        return self._call("check", u, check)

    def version_tag(self, uri: Uri | str) -> str:
        """A tag that changes when the object's content does (size + crc32c), for the input cache."""
        u = as_uri(uri)

        def stat() -> str:
            blob = self._client.bucket(u.bucket).get_blob(u.key, retry=None, timeout=self._timeout())
            if blob is None:
                if not self._bucket_exists(u):
                    raise StorageError(f"{u}: bucket '{u.bucket}' does not exist at {self._emulator or 'GCS'}; check the bucket name")
                raise InputError(f"{u}: no such object; check the key and that the upload finished")
            return f"{blob.size}-{blob.crc32c or blob.md5_hash or blob.generation}"

        return self._call("check", u, stat)

    def list(self, prefix: Uri | str) -> Iterator[Uri]:
        p = as_uri(prefix)
        names = self._call(
            "list", p, lambda: [b.name for b in self._client.list_blobs(p.bucket, prefix=p.key or None, retry=None, timeout=self._timeout())]
        )
        for name in names:
            if not posixpath.basename(name).startswith(TEMP_PREFIX):
                yield Uri("gs", p.bucket, name)

    def list_info(self, prefix: Uri | str) -> Iterator[ObjectInfo]:
        p = as_uri(prefix)
        blobs = self._call("list", p, lambda: [(b.name, b.size, b.updated) for b in self._client.list_blobs(
            p.bucket, prefix=p.key or None, retry=None, timeout=self._timeout())])
        for name, size, updated in blobs:
            # no timestamp reads as brand new: gc must never take an unknown age for an old one
            yield ObjectInfo(Uri("gs", p.bucket, name), int(size or 0), updated.timestamp() if updated else time.time())

    # -- writes ---------------------------------------------------------------------------------------------

    def _generation(self, u: Uri) -> int:
        blob = self._client.bucket(u.bucket).get_blob(u.key, retry=None, timeout=self._timeout())
        return int(blob.generation) if blob is not None else 0

    def _put(self, u: Uri, send, size: int, crc: str) -> None:
        """One upload attempt under `if_generation_match` = the generation we saw (0 = must not exist).

        GCS finalises an object only when its last byte arrives, so the final key is whole or absent. The
        precondition makes a retry safe: a 412 means the object changed since we looked, and it is ours
        (an earlier attempt whose reply was lost) exactly when size and crc32c match what we sent.
        """
        gen = self._generation(u)
        try:
            send(gen)
        except gex.PreconditionFailed:
            now = self._client.bucket(u.bucket).get_blob(u.key, retry=None, timeout=self._timeout())
            if now is not None and now.size == size and now.crc32c == crc:
                return
            raise StorageError(f"{u}: another writer replaced the object during the upload; not overwritten") from None

    def write_bytes(self, uri: Uri | str, data: bytes) -> None:
        u = as_uri(uri)
        crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()

        def send(gen: int) -> None:
            self._blob(u).upload_from_string(
                data, content_type=content_type_for(u.name), if_generation_match=gen, retry=None,
                timeout=self._timeout(), checksum="crc32c"
            )

        self._call("write", u, lambda: self._put(u, send, len(data), crc))

    def upload(self, src: Path, uri: Uri | str) -> None:
        u, src = as_uri(uri), Path(src)
        if not src.is_file():
            raise StorageError(f"{src}: no such file to upload to {u}")
        size, crc = src.stat().st_size, _crc32c_of(src)
        chunk = self._chunk()

        def send(gen: int) -> None:
            # an explicit chunk size makes the upload resumable (chunked) for anything bigger than one chunk
            blob = self._blob(u, chunk_size=chunk if size > chunk else None)
            blob.upload_from_filename(
                str(src), content_type=content_type_for(u.name), if_generation_match=gen, retry=None,
                timeout=self._timeout(), checksum="crc32c"
            )

        self._call("upload", u, lambda: self._put(u, send, size, crc))

    def delete(self, uri: Uri | str) -> None:
        u = as_uri(uri)

        def rm() -> None:
            try:
                self._blob(u).delete(retry=None, timeout=self._timeout())
            except gex.NotFound:
                if not self._bucket_exists(u):
                    raise StorageError(f"{u}: bucket '{u.bucket}' does not exist; check the bucket name") from None

        self._call("delete", u, rm)

    # -- conditional writes (leases): the generation is the version token ---------------------------------------

    def _put_if(self, what: str, u: Uri, data: bytes, generation: int) -> str | None:
        def put() -> str | None:
            blob = self._blob(u)
            try:
                blob.upload_from_string(data, content_type=content_type_for(u.name), if_generation_match=generation,
                                        retry=None, timeout=self._timeout(), checksum="crc32c")
            except gex.PreconditionFailed:
                return None
            return str(blob.generation)

        return self._call(what, u, put)

    def create_exclusive(self, uri: Uri | str, data: bytes) -> str | None:
        return self._put_if("create", as_uri(uri), data, 0)  # generation 0: only if no live object exists

    def read_versioned(self, uri: Uri | str) -> tuple[bytes, str] | None:
        u = as_uri(uri)

        def get() -> tuple[bytes, str] | None:
            for _ in range(5):  # replaced between the metadata read and the download: read the new one
                blob = self._client.bucket(u.bucket).get_blob(u.key, retry=None, timeout=self._timeout())
                if blob is None:
                    return None
                try:
                    data = blob.download_as_bytes(if_generation_match=blob.generation, retry=None,
                                                  timeout=self._timeout())
                except (gex.PreconditionFailed, gex.NotFound):
                    continue
                return data, str(blob.generation)
            raise StorageError(f"{u}: the object kept changing while being read; try again")

        return self._call("read", u, get)

    def replace_if(self, uri: Uri | str, data: bytes, version: str) -> str | None:
        return self._put_if("replace", as_uri(uri), data, int(version))

    # -- sharing / checks -----------------------------------------------------------------------------------

    def share_url(self, uri: Uri | str, expires_s: int = 7 * 24 * 3600) -> str:
        """A V4 signed URL when the credentials can sign (a key, or IAM signBlob); otherwise a plain link."""
        u = as_uri(uri)
        ttl = dt.timedelta(seconds=max(1, min(int(expires_s), 7 * 24 * 3600)))
        blob = self._blob(u)
        kw = {"api_access_endpoint": self._emulator} if self._emulator else {}
        creds = self._client._credentials
        if not isinstance(creds, AnonymousCredentials):
            try:
                return blob.generate_signed_url(version="v4", expiration=ttl, method="GET", **kw)
            except (AttributeError, gae.TransportError, gae.RefreshError):
                pass  # no private key (ADC user / VM metadata credentials): try signing through IAM
            email = getattr(creds, "service_account_email", None)
            if email and email != "default":
                try:
                    import google.auth.transport.requests as gatr

                    creds.refresh(gatr.Request())
                    return blob.generate_signed_url(
                        version="v4", expiration=ttl, method="GET", service_account_email=email, access_token=creds.token, **kw
                    )
                except Exception as e:  # noqa: BLE001 — fall back below, and say why
                    log.warning("cannot sign a URL for %s through IAM (%s); needs roles/iam.serviceAccountTokenCreator", u, type(e).__name__)
        log.warning("%s: credentials cannot sign URLs; sharing a plain link that needs the viewer's own access", u)
        if self._emulator:
            return f"{self._emulator}/download/storage/v1/b/{u.bucket}/o/{quote(u.key, safe='')}?alt=media"
        return f"https://storage.cloud.google.com/{u.bucket}/{quote(u.key)}"

    def check_writable(self, prefix: Uri | str) -> None:
        p = as_uri(prefix)

        def need_bucket() -> None:
            if not self._client.bucket(p.bucket).exists(retry=None, timeout=self._timeout()):
                raise StorageError(f"{p}: bucket '{p.bucket}' does not exist at {self._emulator or 'GCS'}; create it or fix the location")

        self._call("write under", p, need_bucket)
        probe = p.join(temp_name("write-probe"))
        self.write_bytes(probe, b"ok")
        self.delete(probe)
