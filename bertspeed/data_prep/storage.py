"""Local paths and s3:// URIs: list, read (streaming, .gz/.bz2 transparently), upload.

S3 goes through boto3 with its usual credential chain (environment, profile, role);
AWS_ENDPOINT_URL or --s3_endpoint_url selects an S3-compatible server. Credentials
are never printed: errors name the bucket/key and the S3 error code only.
"""
from __future__ import annotations

import bz2
import gzip
import io
import os
from pathlib import Path

from bertspeed.training.pathcheck import check_input_file


class StorageError(RuntimeError):
    pass


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = str(uri)[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return bucket, key


_clients: dict = {}


def s3_client():
    """One boto3 client per (endpoint, credential source) seen in the environment."""
    key = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"))
    if key not in _clients:
        try:
            import boto3
        except ImportError:
            raise StorageError("s3:// paths need boto3: pip install 'bertspeed[s3]'") from None
        _clients[key] = boto3.session.Session().client("s3", endpoint_url=key[0] or None)
    return _clients[key]


def _s3_error(uri: str, err: Exception) -> StorageError:
    from botocore.exceptions import ClientError, NoCredentialsError
    if isinstance(err, NoCredentialsError):
        return StorageError(f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "or a profile)")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "?")
        hints = {"NoSuchBucket": "bucket does not exist", "NoSuchKey": "object does not exist",
                 "404": "not found", "InvalidAccessKeyId": "bad credentials (unknown access key)",
                 "SignatureDoesNotMatch": "bad credentials (wrong secret key)",
                 "AccessDenied": "access denied", "403": "access denied or bad credentials"}
        return StorageError(f"{uri}: S3 error {code}: {hints.get(code, 'request failed')}")
    return StorageError(f"{uri}: S3 request failed: {type(err).__name__}")


def _s3_call(uri, fn, **kwargs):
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(uri, err) from None
    except S3UploadFailedError as err:
        raise StorageError(f"{uri}: upload failed ({err})") from None


def list_files(inputs: list[str], suffixes: tuple[str, ...] = (), flag: str = "--input") -> list[str]:
    """Expand directories and s3 prefixes (sorted, recursive); plain files pass through. Local files
    not compressed (.gz, .bz2) must be UTF-8 text: a binary one is an error naming `flag` and the file."""
    out = []
    for item in inputs:
        item = str(item)
        if is_s3(item):
            out += _list_s3(item, suffixes)
            continue
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.name.endswith(suffixes or "")
                           and not p.name.startswith("."))
            if not found:
                raise StorageError(f"{flag} {item}: directory holds no input files {suffixes or ''}")
        elif os.path.isfile(item):
            found = [item]
        else:
            raise StorageError(f"{flag} {item}: input not found")
        for path in found:
            check_input_file(flag, path, text=not path.endswith(COMPRESSED))
        out += found
    return out


def _list_s3(uri: str, suffixes) -> list[str]:
    bucket, prefix = split_s3(uri)
    client = s3_client()
    keys, token = [], None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix} | ({"ContinuationToken": token} if token else {})
        page = _s3_call(uri, client.list_objects_v2, **kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            break
    keys = sorted(k for k in keys if k.endswith(suffixes or "") and not k.endswith("/"))
    if not keys:
        raise StorageError(f"{uri}: no objects under this prefix")
    return [f"s3://{bucket}/{k}" for k in keys]


COMPRESSED = (".gz", ".bz2")


def open_binary(uri: str):
    """A readable binary stream, decompressed by suffix (.gz, .bz2)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        raw = _s3_call(uri, s3_client().get_object, Bucket=bucket, Key=key)["Body"]
        raw = io.BufferedReader(_ReadableBody(raw), 1 << 20)
    else:
        try:
            raw = open(uri, "rb")
        except FileNotFoundError:
            raise StorageError(f"{uri}: input not found") from None
    if uri.endswith(".bz2"):
        return bz2.open(raw, "rb")
    if uri.endswith(".gz"):
        return gzip.open(raw, "rb")
    return raw


def open_text(uri: str):
    return io.TextIOWrapper(open_binary(uri), encoding="utf-8", errors="strict", newline=None)


class _ReadableBody(io.RawIOBase):
    """botocore StreamingBody as a RawIOBase, so it can be buffered and decompressed."""

    def __init__(self, body):
        self.body = body

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def upload_file(local: str | os.PathLike, uri: str) -> None:
    bucket, key = split_s3(uri)
    _s3_call(uri, s3_client().upload_file, Filename=str(local), Bucket=bucket, Key=key)


def s3_exists(uri: str) -> bool:
    from botocore.exceptions import ClientError
    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(uri, err) from None


def check_bucket(uri: str) -> None:
    """Fail early with a clear message when the bucket is missing or credentials are bad."""
    from botocore.exceptions import ClientError
    bucket, _ = split_s3(uri)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            raise StorageError(f"s3://{bucket}: bucket does not exist") from None
        raise _s3_error(f"s3://{bucket}", err) from None
    except Exception as err:  # noqa: BLE001 - endpoint down, no credentials, ...
        raise _s3_error(f"s3://{bucket}", err) from None
