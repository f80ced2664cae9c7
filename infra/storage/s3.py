"""S3 and S3-compatible storage (boto3): transfer-manager up/downloads, temp-key + copy publish with the right
Content-Type, conditional puts (If-None-Match / If-Match) for leases, presigned URLs."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Iterator

import boto3
import botocore.exceptions as bce
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from infra.storage.base import (
    TEMP_PREFIX, ObjectInfo, Storage, as_uri, content_type_for, env_settings, fill_atomically, temp_name,
)
from infra.storage.uri import Uri
from core.errors import InputError, StorageError
from core.retry import register_transient, retrying

log = logging.getLogger("s2v.storage.s3")

MB = 1024 * 1024
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestTimeoutException", "RequestLimitExceeded", "OperationAborted",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# a conditional put that lost: 412 the condition failed; 409 a concurrent write to the key won (AWS)
_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: boto3 re-raises transfer failures as new exception types."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "last_exception", None)]


def _code(e: BaseException) -> tuple[str, int]:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")), int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient_s3(exc: BaseException) -> bool:
    for e in _chain(exc):
        # HTTPClientError covers connection refused/reset/closed, read and connect timeouts
        if isinstance(e, (bce.HTTPClientError, bce.ConnectionError, bce.IncompleteReadError)):
            return True
        if isinstance(e, bce.ClientError):
            code, status = _code(e)
            if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
                return True
    return False


register_transient(is_transient_s3)


class S3Storage(Storage):
    scheme = "s3"

    def __init__(self, settings=None):
        # callers without a Settings object (e.g. a manifest read by URI) still get S2V_* env configuration
        super().__init__(settings if settings is not None else env_settings())
        self._client_obj = None

    # -- client ---------------------------------------------------------------------------------------------

    def _opt(self, name: str, default=None):
        return getattr(self.settings, name, default) if self.settings is not None else default

    @property
    def _client(self):
        if self._client_obj is None:
            # boto3's own retries kept short: the storage policy in core.retry is the one that retries
            cfg = Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=self._opt("storage_connect_timeout_s", 10.0),
                read_timeout=self._opt("storage_read_timeout_s", 120.0),
                s3={"addressing_style": self._opt("s3_addressing_style", "auto")},
                signature_version="s3v4",
            )
            try:
                session = boto3.session.Session(profile_name=self._opt("s3_profile"))
                self._client_obj = session.client(
                    "s3", endpoint_url=self._opt("s3_endpoint_url"), region_name=self._opt("s3_region"), config=cfg
                )
            except bce.ProfileNotFound as e:
                raise StorageError(f"S3: AWS profile not found ({e}); check settings.s3_profile / AWS_PROFILE") from None
        return self._client_obj

    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self._opt("s3_multipart_threshold_mb", 64) * MB,
            multipart_chunksize=self._opt("s3_multipart_chunk_mb", 16) * MB,
            max_concurrency=self._opt("s3_max_concurrency", 8),
        )

    def _call(self, what: str, uri: Uri, fn, *a, **kw):
        """Run one S3 operation under the storage retry policy; turn the rest into a clear StorageError."""
        try:
            return retrying("storage")(fn, *a, **kw)
        except Exception as e:  # noqa: BLE001 — classified below, never swallowed
            raise self._explain(what, uri, e) from None

    def _explain(self, what: str, uri: Uri, exc: BaseException) -> Exception:
        """A message that names the URI and what to check, built from codes only (never the credentials)."""
        if isinstance(exc, (StorageError, InputError)):
            return exc
        endpoint = self._opt("s3_endpoint_url") or "AWS S3"
        for e in _chain(exc):
            if isinstance(e, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
                return StorageError(
                    f"{uri}: cannot {what}: no usable AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    f"AWS_PROFILE, or run on an instance with a role"
                )
            if isinstance(e, bce.NoRegionError):
                return StorageError(f"{uri}: cannot {what}: no AWS region; set settings.s3_region or AWS_REGION")
            if isinstance(e, bce.ClientError):
                code, status = _code(e)
                if code == "NoSuchBucket":
                    return StorageError(f"{uri}: bucket '{uri.bucket}' does not exist at {endpoint}; check the bucket name and region/endpoint")
                if code in _NOT_FOUND_CODES:
                    return InputError(f"{uri}: no such object; check the key and that the upload finished")
                if code in _CREDENTIAL_CODES:
                    return StorageError(
                        f"{uri}: cannot {what}: the credentials were rejected ({code}); check AWS_ACCESS_KEY_ID/"
                        f"AWS_SECRET_ACCESS_KEY or the profile, and the endpoint ({endpoint})"
                    )
                if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
                    return StorageError(
                        f"{uri}: cannot {what}: access denied ({code or status}); the credentials need the s3 permissions "
                        f"listed in docs/storage.md on bucket '{uri.bucket}' (or they are wrong)"
                    )
                if is_transient_s3(e):
                    return StorageError(f"{uri}: cannot {what}: {endpoint} kept failing ({code or status}) after retries")
                return StorageError(f"{uri}: cannot {what}: {code or status} from {endpoint}")
            if isinstance(e, (bce.HTTPClientError, bce.ConnectionError)):
                return StorageError(f"{uri}: cannot {what}: {endpoint} unreachable after retries ({type(e).__name__}); check the endpoint and network")
        return StorageError(f"{uri}: cannot {what}: {type(exc).__name__}")

    # -- reads ----------------------------------------------------------------------------------------------

    def read_bytes(self, uri: Uri | str) -> bytes:
        u = as_uri(uri)
        return self._call("read", u, lambda: self._client.get_object(Bucket=u.bucket, Key=u.key)["Body"].read())

    def download(self, uri: Uri | str, dest: Path) -> Path:
        u, dest = as_uri(uri), Path(dest)

        def once() -> None:  # a fresh temp name per attempt: dest is complete or absent, never half-written
            fill_atomically(dest, lambda tmp: self._client.download_file(
                u.bucket, u.key, tmp, Config=self._transfer_config()))

        self._call("download", u, once)
        return dest

    def exists(self, uri: Uri | str) -> bool:
        u = as_uri(uri)

        def head() -> bool:
            try:
                self._client.head_object(Bucket=u.bucket, Key=u.key)
                return True
            except bce.ClientError as e:
                code, status = _code(e)
                if code in _NOT_FOUND_CODES or status == 404:
                    # HEAD has no body, so a missing bucket also reads as 404: tell them apart
                    self._require_bucket(u)
                    return False
                if status == 403:
                    self._surface_403(u)
                raise

        return self._call("check", u, head)

    def _require_bucket(self, u: Uri) -> None:
        try:
            self._client.head_bucket(Bucket=u.bucket)
        except bce.ClientError as e:
            code, status = _code(e)
            if code in _NOT_FOUND_CODES or code == "NoSuchBucket" or status == 404:
                raise StorageError(
                    f"{u}: bucket '{u.bucket}' does not exist at {self._opt('s3_endpoint_url') or 'AWS S3'}; "
                    f"create it or fix the location"
                ) from None
            if status == 403:
                self._surface_403(u)
            raise

    def _surface_403(self, u: Uri) -> None:
        """HEAD replies carry no error code; a 1-key listing tells bad credentials from missing permissions."""
        self._client.list_objects_v2(Bucket=u.bucket, Prefix=u.key, MaxKeys=1)

    def version_tag(self, uri: Uri | str) -> str:
        """A tag that changes when the object's content does (size + ETag), for the input cache."""
        u = as_uri(uri)

        def head() -> str:
            try:
                h = self._client.head_object(Bucket=u.bucket, Key=u.key)
            except bce.ClientError as e:
                code, status = _code(e)
                if code in _NOT_FOUND_CODES or status == 404:
                    self._require_bucket(u)
                    raise InputError(f"{u}: no such object; check the key and that the upload finished") from None
                if status == 403:
                    self._surface_403(u)
                raise
            return f"{h['ContentLength']}-{h.get('ETag', '').strip(chr(34))}"

        return self._call("check", u, head)

    def list(self, prefix: Uri | str) -> Iterator[Uri]:
        p = as_uri(prefix)
        pages = self._call("list", p, lambda: list(self._client.get_paginator("list_objects_v2").paginate(Bucket=p.bucket, Prefix=p.key)))
        for page in pages:
            for obj in page.get("Contents", []):
                if not posixpath.basename(obj["Key"]).startswith(TEMP_PREFIX):
                    yield Uri("s3", p.bucket, obj["Key"])

    def list_info(self, prefix: Uri | str) -> Iterator[ObjectInfo]:
        p = as_uri(prefix)
        pages = self._call("list", p, lambda: list(self._client.get_paginator("list_objects_v2").paginate(Bucket=p.bucket, Prefix=p.key)))
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(Uri("s3", p.bucket, obj["Key"]), int(obj["Size"]), obj["LastModified"].timestamp())

    # -- writes ---------------------------------------------------------------------------------------------

    def write_bytes(self, uri: Uri | str, data: bytes) -> None:
        # a single PUT is all-or-nothing on S3; no temp key needed for small objects
        u = as_uri(uri)
        self._call("write", u, lambda: self._client.put_object(Bucket=u.bucket, Key=u.key, Body=data,
                                                               ContentType=content_type_for(u.name)))

    def upload(self, src: Path, uri: Uri | str) -> None:
        """Upload to a temp key next to the final one, check its size, then copy server-side and drop the temp.

        Multipart uploads are atomic on AWS, but not every S3-compatible store guarantees it after a crash;
        the copy is the one step that makes the final key appear, and it only runs from a complete temp object.
        """
        u, src = as_uri(uri), Path(src)
        if not src.is_file():
            raise StorageError(f"{src}: no such file to upload to {u}")
        size = src.stat().st_size
        # the temp key ends in .partial: notifications filtered on the final suffix never see it
        tmp = Uri("s3", u.bucket, posixpath.join(posixpath.dirname(u.key), temp_name(u.name)))
        cfg = self._transfer_config()
        ctype = {"ContentType": content_type_for(u.name)}
        try:
            self._call("upload", u, lambda: self._client.upload_file(str(src), tmp.bucket, tmp.key, Config=cfg,
                                                                     ExtraArgs=ctype))
            got = self._call("upload", u, lambda: self._client.head_object(Bucket=tmp.bucket, Key=tmp.key))["ContentLength"]
            if got != size:
                raise StorageError(f"{u}: uploaded {got} of {size} bytes; not published")
            source = {"Bucket": tmp.bucket, "Key": tmp.key}
            # managed copy: single CopyObject below the threshold, UploadPartCopy above 5 GB-class sizes. The type
            # is set again, explicitly: a multipart copy does not carry the source's metadata over
            self._call("publish", u, lambda: self._client.copy(source, u.bucket, u.key, Config=cfg,
                                                               ExtraArgs={**ctype, "MetadataDirective": "REPLACE"}))
        finally:
            try:
                self._client.delete_object(Bucket=tmp.bucket, Key=tmp.key)
            except Exception as e:  # noqa: BLE001 — a leftover temp is hidden by list(); say so, don't fail
                log.warning("could not remove temp object %s: %s", tmp, type(e).__name__)

    def delete(self, uri: Uri | str) -> None:
        u = as_uri(uri)
        self._call("delete", u, lambda: self._client.delete_object(Bucket=u.bucket, Key=u.key))

    # -- conditional writes (leases): AWS S3 since 2024, SeaweedFS, MinIO, R2 --------------------------------

    def _conditional_put(self, what: str, u: Uri, data: bytes, **cond) -> str | None:
        def put() -> str | None:
            try:
                r = self._client.put_object(Bucket=u.bucket, Key=u.key, Body=data,
                                            ContentType=content_type_for(u.name), **cond)
            except bce.ClientError as e:
                code, status = _code(e)
                if code in _CONDITION_CODES or status in (409, 412) or (cond.get("IfMatch") and (
                        code in _NOT_FOUND_CODES or status == 404)):
                    return None
                raise
            return str(r.get("ETag", ""))

        return self._call(what, u, put)

    def create_exclusive(self, uri: Uri | str, data: bytes) -> str | None:
        return self._conditional_put("create", as_uri(uri), data, IfNoneMatch="*")

    def read_versioned(self, uri: Uri | str) -> tuple[bytes, str] | None:
        u = as_uri(uri)

        def get() -> tuple[bytes, str] | None:
            try:
                r = self._client.get_object(Bucket=u.bucket, Key=u.key)
            except bce.ClientError as e:
                code, status = _code(e)
                if code in _NOT_FOUND_CODES or status == 404:
                    return None
                raise
            return r["Body"].read(), str(r.get("ETag", ""))

        return self._call("read", u, get)

    def replace_if(self, uri: Uri | str, data: bytes, version: str) -> str | None:
        return self._conditional_put("replace", as_uri(uri), data, IfMatch=version)

    # -- sharing / checks -----------------------------------------------------------------------------------

    def share_url(self, uri: Uri | str, expires_s: int = 7 * 24 * 3600) -> str:
        u = as_uri(uri)
        # SigV4 presigned URLs are valid for at most 7 days
        expires_s = max(1, min(int(expires_s), 7 * 24 * 3600))
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": u.bucket, "Key": u.key}, ExpiresIn=expires_s
            )
        except Exception as e:  # noqa: BLE001
            raise self._explain("presign a URL for", u, e) from None

    def check_writable(self, prefix: Uri | str) -> None:
        p = as_uri(prefix)
        # bucket first: a clear "no such bucket" beats a store that auto-creates buckets on PUT
        self._call("write under", p, lambda: self._require_bucket(p))
        probe = p.join(temp_name("write-probe"))
        self.write_bytes(probe, b"ok")
        self.delete(probe)
