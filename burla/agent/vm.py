"""An orphaned agent deletes the GCE VM it runs on, so an abandoned cluster stops billing.

google-cloud-compute is synchronous, so the call runs in a thread (`delete_own`), never on the
agent's event loop, and systemd's watchdog is fed meanwhile. It only asks for the deletion; the
VM's shutdown then ends the agent. It never deletes any VM but its own.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from burla import systemd
from burla.agent.metadata import VmIdentity

log = structlog.get_logger("burla.agent")

# One delete call, and how long transient errors (a 503, a dropped connection) are retried.
CALL_TIMEOUT_SECONDS = 30.0
RETRY_FOR_SECONDS = 60.0


async def delete_own(vm: VmIdentity, reason: str) -> bool:
    """`delete_own_vm` in a thread, keeping systemd's watchdog fed while it runs."""
    call = asyncio.ensure_future(asyncio.to_thread(delete_own_vm, vm, reason))
    tick = systemd.watchdog_interval()
    try:
        while not (await asyncio.wait({call}, timeout=tick))[0]:
            systemd.notify(watchdog="1")
        return call.result()
    finally:
        call.cancel()  # only when we are cancelled: the thread itself then runs on, bounded


def delete_own_vm(vm: VmIdentity, reason: str) -> bool:
    """Ask the Compute API to delete `vm`; whether it accepted (or the VM is gone already).
    Failures are logged, never raised: the agent stops either way."""
    # Imported here: a second of imports no agent pays unless it is orphaned.
    from google.api_core import exceptions
    from google.api_core.retry import Retry, if_transient_error
    from google.cloud import compute_v1

    log.warning("deleting_own_vm", vm=vm.name, zone=vm.zone, project=vm.project, reason=reason,
                api=vm.compute_endpoint or "compute.googleapis.com")
    request = compute_v1.DeleteInstanceRequest(project=vm.project, zone=vm.zone,
                                               instance=vm.name, request_id=str(uuid.uuid4()))
    retry = Retry(predicate=if_transient_error, initial=0.5, maximum=10.0,
                  timeout=RETRY_FOR_SECONDS)
    try:
        operation = _client(vm).delete_unary(request=request, retry=retry,
                                             timeout=CALL_TIMEOUT_SECONDS)
    except exceptions.NotFound:
        log.info("own_vm_gone_already", vm=vm.name, zone=vm.zone)
        return True
    except Exception as e:  # whatever it is, it is logged, and the agent stops regardless
        log.error("own_vm_delete_failed", vm=vm.name, zone=vm.zone, error=str(e)[:500],
                  doing="stopping; the VM stays until deleted: by this agent after its next "
                        "orphan timeout (systemd restarts it), or by the coordinator's reaper")
        return False
    log.info("own_vm_delete_requested", vm=vm.name, zone=vm.zone, operation=operation.name)
    return True


def _client(vm: VmIdentity) -> Any:
    from google.cloud import compute_v1

    if not vm.compute_endpoint:  # the VM's service account, from the metadata server
        return compute_v1.InstancesClient(transport="rest")
    from google.auth.credentials import AnonymousCredentials

    return compute_v1.InstancesClient(transport="rest", credentials=AnonymousCredentials(),
                                      client_options={"api_endpoint": vm.compute_endpoint})
