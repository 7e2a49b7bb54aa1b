"""A small client of Orthanc's REST API: what the platform needs of its PACS, nothing more.

    from diagnosis.orthanc import Orthanc
    pacs = Orthanc.from_settings()
    page = pacs.changes(since=0)          # {"Changes": [...], "Done": bool, "Last": int}
    pacs.study_instances(orthanc_id)      # [{"ID", "MainDicomTags"...}, ...]
    pacs.instance_file(orthanc_id)        # the DICOM bytes as stored
    pacs.store(dicom_bytes)               # {"ID", "Status": "Success" | "AlreadyStored"...}

Every call has a timeout, and every failure (refused connection, timeout, an HTTP error
status) is raised as OrthancError with what was asked: callers retry later, never lose what
they were doing. Credentials travel as HTTP basic authentication; they are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests
from django.conf import settings


class OrthancError(RuntimeError):
    """Orthanc could not be reached, or refused a request; the message says which."""


class OrthancNotFound(OrthancError):
    """Orthanc does not have what was asked for (deleted since it was announced, say)."""


class OrthancMisconfigured(OrthancError):
    """Orthanc answers, but not to these settings (wrong credentials, not an Orthanc)."""


@dataclass
class Orthanc:
    url: str
    username: str = ""
    password: str = ""
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        if self.username:
            self.session.auth = (self.username, self.password)

    @classmethod
    def from_settings(cls) -> Orthanc:
        if not settings.ORTHANC_URL:
            raise OrthancMisconfigured("ORTHANC_URL is not set: the platform has no PACS.")
        return cls(settings.ORTHANC_URL, settings.ORTHANC_USERNAME, settings.ORTHANC_PASSWORD)

    def __repr__(self) -> str:  # never the password
        return f"Orthanc({self.url!r}, user={self.username!r})"

    # ------------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        where = f"{method} {urlsplit(self.url).netloc}{path.split('?')[0]}"
        try:
            response = self.session.request(
                method, f"{self.url}{path}", timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise OrthancError(f"Orthanc unreachable ({where}): {type(exc).__name__}") from None
        if response.status_code == 401:
            raise OrthancMisconfigured(
                f"Orthanc refused the credentials ({where}): check ORTHANC_USERNAME and "
                "ORTHANC_PASSWORD."
            )
        if response.status_code == 404:
            raise OrthancNotFound(f"Orthanc has no {path.split('?')[0]} (404)")
        if response.status_code >= 400:
            raise OrthancError(f"Orthanc answered {response.status_code} to {where}")
        return response

    def _json(self, method: str, path: str, **kwargs):
        try:
            return self._request(method, path, **kwargs).json()
        except ValueError:
            raise OrthancError(f"Orthanc's answer to {method} {path} is not JSON") from None

    # ------------------------------------------------------------------------ API

    def system(self) -> dict:
        """Orthanc's name and version; OrthancMisconfigured when the URL is not an Orthanc."""
        info = self._json("GET", "/system")
        if not isinstance(info, dict) or "Version" not in info:
            raise OrthancMisconfigured(f"{self.url} does not answer like an Orthanc server")
        return info

    def changes(self, *, since: int, limit: int = 100) -> dict:
        return self._json("GET", f"/changes?since={int(since)}&limit={int(limit)}")

    def study_instances(self, study_id: str) -> list[dict]:
        return self._json("GET", f"/studies/{quote(study_id, safe='')}/instances")

    def instance_file(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{quote(instance_id, safe='')}/file").content

    def tags(self, instance_id: str) -> dict:
        """An instance's DICOM tags by keyword (Orthanc's simplified-tags)."""
        return self._json("GET", f"/instances/{quote(instance_id, safe='')}/simplified-tags")

    def patients(self) -> list[str]:
        return self._json("GET", "/patients")

    def delete(self, level: str, orthanc_id: str) -> None:
        """Delete a patient, study, series or instance (level: patients, studies...)."""
        self._request("DELETE", f"/{level}/{quote(orthanc_id, safe='')}")

    def lookup(self, uid: str) -> list[dict]:
        """The resources with this DICOM UID (an SOPInstanceUID: at most one instance)."""
        return self._json("POST", "/tools/lookup", data=uid)

    def store(self, dicom: bytes) -> dict:
        """Store one DICOM instance. An instance with an SOPInstanceUID already stored is not
        stored again (Orthanc's OverwriteInstances is false): Status AlreadyStored."""
        return self._json(
            "POST", "/instances", data=dicom, headers={"Content-Type": "application/dicom"}
        )

    def forward(self, modality: str, instance_id: str) -> None:
        """C-STORE one stored instance to a DICOM modality that Orthanc knows by name."""
        self._json(
            "POST", f"/modalities/{quote(modality, safe='')}/store",
            json={"Resources": [instance_id], "Synchronous": True},
        )  # fmt: skip
