"""Storage: the only module that talks to file:// and s3:// (SPEC §3).

`open_lake(url, s3)` gives a `Lake` over `file:///path` or `s3://bucket/prefix`. Keys are
'/'-separated paths relative to the lake root. `create` is the conditional create used for
manifests: on S3 a put with `If-None-Match: *`, on a file system a hard link of a fully
written temporary file, so a reader never sees a partial object and two writers never both win.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from pipeline import config
from pipeline.config import S3Settings
from pipeline.errors import AlreadyExists, BadInput, CheckFailed, NotFound, ServiceUnavailable, redact_url

PUTS_IN_FLIGHT = 8  # parallel PUTs of write_all on S3


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    regular: bool = True  # False for a link or a special file in a file:// lake: never read
    target: str = ""  # where such a link points
    version: str = ""  # changes when the object is rewritten: S3 ETag and time, a file's mtime


class Lake(ABC):
    url: str

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write (or replace) an object atomically: readers see the old or the new bytes."""

    @abstractmethod
    def write_all(self, objects: Iterable[tuple[str, bytes]]) -> int:
        """Write many objects (each atomically), faster than one `write` each: on disk one sync
        for all, on S3 several PUTs in flight. Durable when it returns; the number written."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> None:
        """Create an object only if none exists; raise AlreadyExists otherwise."""

    @abstractmethod
    def create_file(self, key: str, path: Path) -> None:
        """`create` of a local file's bytes, streamed (one PUT: up to 5 GiB on S3)."""

    def create_moved(self, key: str, path: Path) -> None:
        """`create_file`, then the local file is gone (whether or not the key existed): on a file
        system it is renamed into place when it can be (nothing copied)."""
        try:
            self.create_file(key, path)
        finally:
            path.unlink(missing_ok=True)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A buffered binary stream over the object; memory stays bounded whatever its size."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (a ranged GET on S3)."""

    @abstractmethod
    def write_file(self, key: str, path: Path) -> None:
        """Upload a local file (streamed; large files go up in parts), atomically replacing."""

    def move_file(self, key: str, path: Path) -> None:
        """`write_file`, then the local file is gone: on a file system it is renamed into place
        when it can be (nothing copied)."""
        self.write_file(key, path)
        path.unlink()

    def uri(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key


def hash_file(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a local file, read in blocks so memory stays bounded."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BadInput(f"invalid lake key {key!r}")
    return key


class FileLake(Lake):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def _temp(self, path: Path, data: bytes, sync: bool = True) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path, data), path)

    def write_all(self, objects: Iterable[tuple[str, bytes]]) -> int:
        count = 0
        for key, data in objects:
            path = self._path(key)
            os.replace(self._temp(path, data, sync=False), path)
            count += 1
        os.sync()
        return count

    def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._link(self._temp(path, data), path, key)

    def create_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            _send(path, f)
            os.fsync(f.fileno())
        self._link(tmp, target, key)

    def create_moved(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{secrets.token_hex(8)}"
        if not _renamed(path, tmp):
            super().create_moved(key, path)
            return
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o600)  # as the lake's other files
            os.fsync(fd)
        finally:
            os.close(fd)
        self._link(str(tmp), target, key)

    def _link(self, tmp: str, path: Path, key: str) -> None:
        """Give the fully written temporary file its name unless the name exists (the conditional create)."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{self.uri(key)} exists already") from None
        finally:
            os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return iter(())
        found = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    info = full.lstat()
                    target = os.readlink(full) if stat.S_ISLNK(info.st_mode) else ""
                    found.append(ObjectInfo(key, info.st_size, stat.S_ISREG(info.st_mode), target,
                                            f"{info.st_mtime_ns}.{info.st_ino}"))
        return iter(sorted(found, key=lambda o: o.key))

    def open(self, key: str) -> BinaryIO:
        """Open a regular file for reading; a symbolic link or a special file (a FIFO, a device,
        /proc) is refused, so nothing outside the lake is read through it."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BadInput(f"{self.uri(key)} is a symbolic link; only regular files are read") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadInput(f"{self.uri(key)} is not a regular file; only regular files are read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self.open(key) as f:
            f.seek(offset)
            return f.read(length)

    def write_file(self, key: str, path: Path) -> None:
        target = self._replaceable(key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

    def move_file(self, key: str, path: Path) -> None:
        if not _renamed(path, self._replaceable(key)):
            super().move_file(key, path)

    def _replaceable(self, key: str) -> Path:
        """Where `key` is written, its folder made; CheckFailed if something other than a file or
        a link (a folder, planted where a file goes) holds the name, rather than an OS error."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            raise CheckFailed(f"{self.uri(key)} is a folder, where a file of the lake goes: the lake was altered")
        return target


def _renamed(path: Path, target: Path) -> bool:
    """Rename a local file to `target` (replacing it); False, with nothing done, if they are on
    different file systems (then it is copied instead)."""
    try:
        os.replace(path, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        return False
    return True


def _send(path: Path, out: BinaryIO) -> None:
    """Append a local file's bytes to `out`, in the kernel (no copy through this process)."""
    out.flush()
    with open(path, "rb") as f:
        size, sent = os.fstat(f.fileno()).st_size, 0
        while sent < size:
            step = os.sendfile(out.fileno(), f.fileno(), sent, size - sent)
            if step == 0:
                raise OSError(f"{path} ended at {sent} of {size} bytes while it was copied")
            sent += step


class S3Lake(Lake):
    def __init__(self, bucket: str, prefix: str, s3: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._settings = s3
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5, read_timeout=60)
        try:
            self._client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key_id,
                                        aws_secret_access_key=s3.secret_access_key, region_name=s3.region,
                                        config=config)
        except ValueError as e:  # e.g. an endpoint URL that is not a URL
            raise BadInput(f"S3 settings: {e}") from None

    def __reduce__(self) -> tuple[Any, ...]:
        """A worker of the engine opens its own client to the same lake. A forked worker gets this
        process's credentials; a Ray task none (they would sit in the object store): a Ray node
        holds its own, in its environment."""
        settings = self._settings
        if config.engine() != "local":
            settings = replace(settings, access_key_id=None, secret_access_key=None)
        return S3Lake, (self.bucket, self.prefix, settings)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, **kwargs):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except EndpointConnectionError as e:
            raise ServiceUnavailable(f"S3 at {redact_url(str(e.kwargs.get('endpoint_url', '?')))} cannot be reached") from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{self.uri(key)} does not exist") from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise AlreadyExists(f"{self.uri(key)} exists already") from None
            if code == "NoSuchBucket":
                raise NotFound(f"bucket {self.bucket} does not exist") from None
            if status is not None and status >= 500:
                raise ServiceUnavailable(f"S3 {what} {self.uri(key)} failed: {code} ({status})") from None
            raise BadInput(f"S3 {what} {self.uri(key)} refused: {code}") from None
        except BotoCoreError as e:
            raise ServiceUnavailable(f"S3 {what} {self.uri(key)} failed: {e}") from None

    def read(self, key: str) -> bytes:
        body = self._call("read", key, self._client.get_object, Key=self._key(key))["Body"]
        return bytes(body.read())

    def write(self, key: str, data: bytes) -> None:
        self._call("write", key, self._client.put_object, Key=self._key(key), Body=data)

    def write_all(self, objects: Iterable[tuple[str, bytes]]) -> int:
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        count = 0
        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(max_workers=PUTS_IN_FLIGHT) as pool:
            for key, data in objects:
                if len(pending) >= 2 * PUTS_IN_FLIGHT:  # bounded: objects may be a long generator
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                pending.add(pool.submit(self.write, key, data))
                count += 1
            for future in pending:
                future.result()
        return count

    def create(self, key: str, data: bytes) -> None:
        self._call("create", key, self._client.put_object, Key=self._key(key), Body=data, IfNoneMatch="*")

    def create_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as body:
            self._call("create", key, self._client.put_object, Key=self._key(key), Body=body, IfNoneMatch="*")

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, self._client.head_object, Key=self._key(key))
            return True
        except NotFound:
            return False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, str] = {"Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix or "", self._client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]),
                                 version=f"{str(obj.get('ETag', '')).strip(chr(34))}.{modified.isoformat() if modified else ''}")
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def open(self, key: str) -> BinaryIO:
        body = self._call("read", key, self._client.get_object, Key=self._key(key))["Body"]
        return io.BufferedReader(_StreamingRaw(body), buffer_size=1 << 20)  # type: ignore[return-value,type-var]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        body = self._call("read", key, self._client.get_object, Key=self._key(key),
                          Range=f"bytes={offset}-{offset + length - 1}")["Body"]
        return bytes(body.read())

    def write_file(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        self._call("upload", key, lambda Bucket: self._client.upload_file(str(path), Bucket, self._key(key),
                                                                          Config=config))


class _StreamingRaw(io.RawIOBase):
    """A raw stream over botocore's StreamingBody, so io.BufferedReader can wrap it."""

    def __init__(self, body: object) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self._body.read(len(buffer))  # type: ignore[attr-defined]
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()  # type: ignore[attr-defined]
        super().close()


def open_lake(url: str, s3: S3Settings | None = None) -> Lake:
    """Open `file:///path` or `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise BadInput(f"lake URL {url!r} must be file:///absolute/path (three slashes)")
        return FileLake(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadInput(f"lake URL {url!r} names no bucket")
        return S3Lake(parsed.netloc, parsed.path, s3 or S3Settings())
    if parsed.scheme == "" and url:
        return FileLake(Path(url).resolve())
    raise BadInput(f"lake URL {url!r} must be s3://bucket/prefix or file:///path")
