"""Object storage for raw (and later curated) data: a local folder or S3, behind one interface.

Objects are written once and never overwritten: the local store links a fully written, fsynced
temporary file into place (which fails if the name exists); the S3 store uses a conditional
put (`If-None-Match: *`).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError


class ObjectExists(FileExistsError):
    """An object of that key already exists; raw objects are never overwritten."""


class StorageError(RuntimeError):
    """Storage cannot be used at all; the message says where and why (never a secret)."""


class ObjectStore(Protocol):
    def check(self) -> None:
        """Raise StorageError unless objects can be written here (called before long work)."""
        ...

    def put_new(self, key: str, data: bytes) -> None:
        """Store `data` under `key` durably; raise ObjectExists if the key is taken."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there (curated outputs only)."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store a (possibly large) local file under `key`, replacing what was there."""
        ...

    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        """Keys under `prefix`, in lexical order; only those after `start_after`, if given
        (S3's StartAfter: a listing that starts there costs what lies after it)."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Remove these objects (bookkeeping only: raw objects are never deleted); a key that
        is already gone is not an error."""
        ...

    def url(self, key: str = "") -> str:
        """Where the key lives, for people and for DuckDB (a path or an s3:// URL)."""
        ...


@functools.cache
def _object_mode() -> int:
    """The mode a new file gets under the process's umask: objects are written through private
    temporary files (mkstemp), then given this. Read from /proc where it can be, since the
    only portable way, os.umask, changes the umask for a moment in every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} leaves the storage root")
        return path

    def check(self) -> None:
        root = self.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=root, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except FileExistsError:
            raise StorageError(f"storage {root} is a file, not a folder") from None
        except OSError as exc:
            raise StorageError(f"cannot write to storage folder {root}: {exc.strerror}") from None

    def _write_temp(self, key: str, data: bytes, durable: bool) -> tuple[Path, str]:
        """The final path for `key`, and a temporary file beside it that holds `data`."""
        path = self._path(key)
        for attempt in range(3):  # `delete` may remove an empty folder between the two calls
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            os.fchmod(fd, _object_mode())  # mkstemp makes it owner-only; others may read it
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return path, tmp

    def put_new(self, key: str, data: bytes) -> None:
        path, tmp = self._write_temp(key, data, durable=True)
        try:
            os.link(tmp, path)  # atomic, and refuses to replace an existing object
        except FileExistsError:
            raise ObjectExists(key) from None
        finally:
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new name itself survives a crash
        finally:
            os.close(dir_fd)

    def put(self, key: str, data: bytes) -> None:
        path, tmp = self._write_temp(key, data, durable=False)
        os.replace(tmp, path)  # readers see the old or the new file, never half of one

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        os.fchmod(fd, _object_mode())
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        folder = self.root / prefix.rpartition("/")[0]  # the folder the prefix's keys are in
        if not folder.is_dir():
            return
        relative = folder.relative_to(self.root).as_posix()
        yield from self._walk(
            folder, "" if relative == "." else f"{relative}/", prefix, start_after
        )

    def _walk(self, folder: Path, at: str, prefix: str, start_after: str) -> Iterator[str]:
        """Keys in lexical order, never entering a folder whose keys all miss `prefix` or all
        come before `start_after` (a folder's keys sort as its name plus '/')."""
        entries = []
        with os.scandir(folder) as scan:
            for entry in scan:
                if not entry.name.startswith("."):
                    is_dir = entry.is_dir(follow_symlinks=False)
                    entries.append((f"{at}{entry.name}{'/' if is_dir else ''}", is_dir))
        for key, is_dir in sorted(entries):
            if not is_dir:
                if key.startswith(prefix) and key > start_after:
                    yield key
            elif (key.startswith(prefix) or prefix.startswith(key)) and (
                key >= start_after or start_after.startswith(key)
            ):
                yield from self._walk(folder / key[len(at) : -1], key, prefix, start_after)

    def delete(self, keys: list[str]) -> None:
        root = self.root.resolve()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            for folder in path.parents:  # empty folders would be listed for ever
                if folder == root:
                    break
                try:
                    folder.rmdir()
                except OSError:  # not empty (or just refilled by a writer): keep it
                    break

    def url(self, key: str = "") -> str:
        return str(self.root / key)


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            why = {"404": "does not exist", "403": "access denied"}.get(code, f"error {code}")
            raise StorageError(f"S3 bucket {self.bucket!r}: {why}") from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 bucket {self.bucket!r}: {exc}") from None

    def put_new(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise ObjectExists(key) from None
            raise

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.url(key)) from None
            raise
        return answer["Body"].read()

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))  # multipart when large

    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        strip = len(self._key(""))
        after = {"StartAfter": self._key(start_after)} if start_after else {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix), **after
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            objects = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise StorageError(
                    f"S3 refused to delete {len(answer['Errors'])} objects, e.g. "
                    f"{error.get('Key')}: {error.get('Code')}"
                )

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def parse_s3_url(storage: str) -> tuple[str, str] | None:
    """(bucket, prefix) for `s3://bucket/prefix`, None for a local folder."""
    if not storage.startswith("s3://"):
        return None
    bucket, _, prefix = storage[5:].partition("/")
    if not bucket:
        raise ValueError(f"DATA_ACQ_STORAGE {storage!r} names no bucket")
    return bucket, prefix.strip("/")


def open_store(storage: str, s3_client: Callable[[], Any] | None = None) -> ObjectStore:
    """The store for DATA_ACQ_STORAGE: a local folder, or S3 through the standard AWS_* settings
    (AWS_ENDPOINT_URL points boto3 at an S3-compatible server)."""
    s3 = parse_s3_url(storage)
    if s3 is None:
        return LocalStore(Path(storage))
    if s3_client is None:
        import boto3

        s3_client = lambda: boto3.client("s3")  # noqa: E731
    return S3Store(s3_client(), *s3)
