"""Release placement groups orphaned by Ray Train controllers that Tune killed.

When Tune stops a trial early (ASHA, a stopper), it kills the trial's driver actor and with it
the Ray Train controller that trial started. The controller's worker-group placement group is
scoped to the *job*, not to the controller, so it stays reserved until `ganray tune` exits: after
a few stopped trials every CPU is reserved by dead trials and the next trial waits forever.
Here, a placement group whose creating actor is dead (and which is not detached) is garbage.

Uses Ray's GCS table through private accessors (pinned Ray 2.60); on any API change it logs and
does nothing rather than fail the search.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def remove_orphaned_placement_groups() -> int:
    import ray
    import ray._private.state as ray_state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    try:
        accessor = ray_state.state._global_state_accessor
        for pg_hex, info in ray.util.placement_group_table().items():
            if info["state"] == "REMOVED":
                continue
            pg_id = ray.PlacementGroupID(bytes.fromhex(pg_hex))
            data = gcs_pb2.PlacementGroupTableData.FromString(accessor.get_placement_group_info(pg_id))
            created_by_actor = not data.creator_actor_id.hex().strip("f") == ""
            if created_by_actor and data.creator_actor_dead and not data.is_detached:
                remove_placement_group(PlacementGroup(pg_id))
                removed += 1
    except Exception as e:  # private API: never let clean-up break the search
        log.warning("could not clean up orphaned placement groups: %s", e)
    return removed


def tune_cleanup_callback(every_s: float = 2.0):
    """A Tune callback that runs the clean-up as trials end and every few seconds."""
    import time

    from ray.tune import Callback

    class _Cleanup(Callback):
        def __init__(self):
            self.last = 0.0

        def _run(self):
            self.last = time.monotonic()
            remove_orphaned_placement_groups()

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last >= every_s:
                self._run()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._run()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._run()

    return _Cleanup()
