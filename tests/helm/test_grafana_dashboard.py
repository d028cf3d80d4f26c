"""The chart's Grafana dashboard against Grafana's own dashboard schema.

Grafana publishes its dashboard schema (generated from its CUE kinds) as TypeScript types in the npm
package @grafana/schema; hack/build-tools.sh installs it with the TypeScript compiler, and tsc checks
dashboard.json as an object literal of type `Dashboard`: every field's type, and no field the schema
does not know. A real Grafana is not run here: it is not packaged for Debian, no container registry
is reachable, and the Go module proxy refuses github.com/grafana/grafana (403; docs/operations.md).
That its queries name metrics the operator really exports is tests/unit/test_config_metrics.py's check.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devcluster.controlplane import CACHE_DIR

DASHBOARD = Path(__file__).parents[2] / "helm/finetune-operator/files/dashboard.json"
SCHEMA = CACHE_DIR / "grafana-schema"
TYPES = "@grafana/schema/dist/types/raw/dashboard/x/types.gen"


def _check(dashboard: dict, workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    source = workdir / "dashboard.ts"
    source.write_text(
        f'import type {{ Dashboard }} from "{TYPES}";\n\nexport const dashboard: Dashboard = '
        f"{json.dumps(dashboard, indent=1)};\n"
    )
    (workdir / "node_modules").symlink_to(SCHEMA / "node_modules")
    tsc = SCHEMA / "node_modules/.bin/tsc"
    command = [str(tsc), "--noEmit", "--strict", "--skipLibCheck", "--moduleResolution", "node", source.name]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120)


def test_the_dashboard_is_a_grafana_dashboard_by_grafanas_schema(tmp_path: Path) -> None:
    if not (SCHEMA / "node_modules/.bin/tsc").exists():
        pytest.fail(f"Grafana's schema is not installed in {SCHEMA}: run `make tools` (hack/build-tools.sh)")
    dashboard = json.loads(DASHBOARD.read_text())
    checked = _check(dashboard, tmp_path / "good")
    assert checked.returncode == 0, checked.stdout
    # The check can fail: a misspelt panel field and a string schemaVersion are both caught.
    broken = {**dashboard, "schemaVersion": str(dashboard["schemaVersion"])}
    broken["panels"] = [{**dashboard["panels"][0], "titel": "typo"}, *dashboard["panels"][1:]]
    refused = _check(broken, tmp_path / "bad")
    assert refused.returncode != 0
    assert "'\"titel\"' does not exist in type 'Panel'" in refused.stdout
    assert "Type 'string' is not assignable to type 'number'" in refused.stdout
