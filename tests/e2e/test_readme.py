"""The README's curl walk-through, run as written against a fresh `aimarket up`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.test_journey import BIN, running

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough", 1)[1]
    return re.search(r"```bash\n(.*?)```", block, re.S).group(1)  # type: ignore[union-attr]


def test_readme_has_exactly_two_commands_at_the_top():
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", head, re.S)
    assert len(commands) == 2 and all(c.count("\n") == 1 for c in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci  # CI runs the README's test command


def test_every_setting_is_documented():
    from storefront.config import Settings

    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"AIMARKET_{name.upper()}" in readme, name


def test_the_curl_walkthrough_works_as_written(tmp_path):
    with running(tmp_path / "data", admin_password="admin-pass") as (url, env):
        script = walkthrough().replace("B=http://127.0.0.1:8000", f"B={url}")
        script = script.replace(".venv/bin/aimarket", str(BIN))
        script = script.replace("/tmp/mymodel", str(tmp_path / "mymodel"))
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                             text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    log = out.stdout.lower()
    assert '"status":"pending_review"' in log and '"status":"live"' in log
    assert [m for m in re.findall(r"x-trial-remaining: (\d)", log)][:3] == ["2", "1", "0"]
    assert '"code":"insufficient_credits"' in log
    assert "x-cost: 0.002" in log and "x-credits-remaining: 4.998" in log
    assert '"label":"setosa"' in log
    assert '"total":{"calls":5,"trial_calls":4,"paid_calls":1,"spend":"0.002"}' in log
    assert '"seller_share":"0.0016"' in log and '"platform_fee":"0.0004"' in log
