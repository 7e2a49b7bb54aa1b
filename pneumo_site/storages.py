"""The STORAGES entry of an S3 bucket, shared by the settings and the tests."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured


def s3_storage(
    url: str, *, endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1",
    timeout: float = 5, attempts: int = 2,
) -> dict:  # fmt: skip
    """django-storages' S3Storage for `url` (s3://BUCKET[/PREFIX]) at `endpoint_url` (empty:
    Amazon's). Objects are private (no ACL, signed URLs only); a server that does not answer
    fails the call within `timeout` seconds per attempt."""
    from botocore.config import Config

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ImproperlyConfigured(
            f"STORAGE_URL must be empty or s3://BUCKET[/PREFIX], got {url!r}"
        )
    if endpoint_url and urlsplit(endpoint_url).scheme not in ("http", "https"):
        raise ImproperlyConfigured(
            f"AWS_S3_ENDPOINT_URL must be an http(s) URL, got {endpoint_url!r}"
        )
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": parts.netloc,
            "location": parts.path.strip("/"),
            "endpoint_url": endpoint_url or None,
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            "region_name": region,
            "signature_version": "s3v4",
            "addressing_style": "path",
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": 60,
            "file_overwrite": False,
            "client_config": Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        },
    }
