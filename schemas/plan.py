"""The plan a driver fixes when it creates a store (layout and provenance).

It lives in the root group's ``zarr.json`` attributes, so workers and resumed runs read exactly
what the driver decided, and a commit copies it into the manifest.
"""

from __future__ import annotations

import json

from schemas.errors import StoreError
from schemas.layout import GROUP_METADATA, PLAN_ATTRIBUTE, SCHEMA_VERSIONS, Layout
from schemas.manifest import Provenance
from schemas.urls import Location


def make_plan(layout: Layout, provenance: Provenance) -> dict:
    # Round-tripped through JSON so it compares equal to what the group attributes return.
    plan = {"schema_version": layout.schema_version, "layout": layout.to_dict(),
            **provenance.to_dict()}  # fmt: skip
    return json.loads(json.dumps(plan))


def read_plan(location: Location) -> dict:
    try:
        plan = json.loads(location.read(GROUP_METADATA))["attributes"][PLAN_ATTRIBUTE]
    except FileNotFoundError:
        raise StoreError(f"{location.display} is not a latent store (no zarr.json)") from None
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"{location.display} is a zarr group but not a latent store") from None
    if not isinstance(plan, dict) or plan.get("schema_version") not in SCHEMA_VERSIONS:
        version = plan.get("schema_version") if isinstance(plan, dict) else None
        raise StoreError(
            f"{location.display}: unknown store schema version {version!r} "
            f"(this code knows {', '.join(map(str, SCHEMA_VERSIONS))})"
        )
    return plan


def plan_parts(plan: dict) -> tuple[Layout, Provenance]:
    try:
        return Layout.from_dict(plan["layout"]), Provenance.from_dict(plan)
    except (KeyError, TypeError) as exc:
        raise StoreError(f"store plan is malformed ({type(exc).__name__}: {exc})") from None
