"""pytest-xdist scheduling: every test of one (model, precision) goes to the same worker, so each model loads once.

The group is read from the test id (`[<model>-<precision>-<decoding>...]`), which works whatever pytest does to
node ids (xdist's own `loadgroup` rewrites them, which pytest 9.2 no longer allows).
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


class ModelPrecisionScheduling(LoadScopeScheduling):
    def __init__(self, config, log=None, groups: list[str] = ()):
        super().__init__(config, log)
        # Longest first, so "m-nf4-fp16" (nf4@fp16) wins over "m-nf4" for an id starting "m-nf4-fp16-".
        self.groups = sorted(groups, key=len, reverse=True)

    def _split_scope(self, nodeid: str) -> str:
        params = nodeid[nodeid.find("[") + 1 :] if "[" in nodeid else ""
        for group in self.groups:
            if params.startswith(f"{group}-"):
                return group
        return nodeid  # not a quantbench test: schedule it alone, as plain `load` would
