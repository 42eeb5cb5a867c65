"""Stage kinds for `[[stages]]`. Each kind lives in its own module, which defines a
`Config` dataclass (with a `kind` field) and a `Stage` subclass named `STAGE`.

Modules are imported lazily, so a stage's heavy dependency (torch, fastText) is only paid
by runs that use it."""
from __future__ import annotations

import importlib

STAGE_MODULES = {
    "normalize": "curate.stages.normalize",
    "filter": "curate.stages.filter.stage",
    "language": "curate.stages.language.stage",
    "pii": "curate.stages.pii.stage",
    "decontaminate": "curate.stages.decontaminate.stage",
    "dedup": "curate.stages.dedup.stage",
    "quality": "curate.stages.quality.stage",
    "select": "curate.stages.select",
    "mix": "curate.stages.mix",
    "consensus": "curate.stages.consensus.stage",
}


def stage_class(kind: str):
    """The Stage class for a kind; raises KeyError for an unknown kind, ImportError when
    the module for a known kind is missing from this build."""
    module = importlib.import_module(STAGE_MODULES[kind])
    return module.STAGE
