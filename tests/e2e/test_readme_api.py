"""README's API block, run line by line in bash against a live server, as a reader would run
it: its tokens come from `drf_create_token` as it says, every curl answers the status its
comment gives (2xx otherwise), and the uploader's token is refused where it says so."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command

from diagnosis import roles, services
from tests.conftest import jpeg_bytes, make_checkpoint
from tests.e2e.conftest import child_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8000"


def api_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "curl" in b]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def expected_status(line: str) -> int | None:
    found = re.search(r"#\s*(?:admins:\s*)?(\d{3})\b", line)
    return int(found[1]) if found else None


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_the_readme_api_block_runs_as_written(live_server, checkpoint_path, tmp_path):
    call_command("create_demo_users", stdout=io.StringIO())
    services.model_version_register(
        path=checkpoint_path, name="v0", activate=True, user=roles.SYSTEM
    )
    other = make_checkpoint(tmp_path / "other.pt", seed=1)  # the version README promotes
    services.model_version_register(path=other, name="effl0-v1", user=roles.SYSTEM)
    image = ROOT.parent / "shared/data/full_resolution/PNEUMONIA/person1946_bacteria_4874.jpeg"
    if not image.is_file():  # a clean clone without the data beside it: an X-ray of our own
        image = tmp_path / "xray.jpeg"
        image.write_bytes(jpeg_bytes("PNEUMONIA", seed=5, size=512))

    lines = api_block()
    tokens = [line for line in lines if not line.startswith("curl")]
    curls = [line for line in lines if line.startswith("curl")]
    assert len(tokens) == 3 and len(curls) >= 14
    # The token lines as written, once; each curl line then runs with their three values.
    shown = subprocess.run(
        ["bash", "-c", "set -eu\n" + "\n".join(tokens) + '\nprintf "%s\\n" "$U" "$R" "$A"'],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    values = shown.stdout.splitlines()
    assert all(re.fullmatch(r"Authorization: Token [0-9a-f]{40}", v) for v in values), values
    env = {**child_env(), **dict(zip("URA", values, strict=True))}
    results = []
    for line in curls:
        command = line.split(" #")[0].replace(LOCAL, live_server.url)
        command = command.replace(
            "../shared/data/full_resolution/PNEUMONIA/person1946_bacteria_4874.jpeg", str(image)
        )
        command = command.replace("curl ", "curl -s -o /dev/null -w '%{http_code}' ", 1)
        done = subprocess.run(
            ["bash", "-c", f"set -eu\n{command}"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        status, wanted = int(done.stdout), expected_status(line)
        ok = status == wanted if wanted else 200 <= status < 300
        results.append((ok, status, line))
    assert all(ok for ok, _, _ in results), "\n".join(f"{s} {c}" for ok, s, c in results if not ok)

    # "an uploader's token gets 403 here"
    review = next(c for c in curls if "/reviews/" in c).split(" #")[0]
    as_uploader = review.replace('"$R"', '"$U"', 1).replace(LOCAL, live_server.url)
    as_uploader = as_uploader.replace("curl ", "curl -s -o /dev/null -w '%{http_code}' ", 1)
    done = subprocess.run(
        ["bash", "-c", as_uploader], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout == "403"
